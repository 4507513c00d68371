"""A trained VAE scored on a data set whose generative factors are known (`bench.data.shapes`).

    factor_metrics(model, dataset, seed=..., config=cfg)  ->  (metrics, image rows)

Codes are the encoder means E_q[z | x] (q's first stochastic layer), computed once for every
image of the grid (6,144 for `shapes_small`; the 737,280 of `shapes` in chunks, cheap on a GPU
and a few minutes on a CPU), so the beta-VAE metric's 1.9 million encodings at
disentanglement_lib's sizes are table lookups. Metrics (`bench.metrics.disentanglement` has
the definitions):

    mig                    MIG on up to FACTOR_POINTS grid images drawn with the run's seed
                           (without replacement: all 6,144 of `shapes_small`)
    dci_disentanglement    DCI disentanglement: by default random-forest importances on the
                           same points split 2:1 (train:test); the config's dci_estimator
                           ("boosting": disentanglement_lib's gradient-boosted trees) and
                           dci_train / dci_test (> 0: that many training and test points
                           drawn independently, uniformly with replacement from the grid, as
                           disentanglement_lib's 10000 / 5000) change it
    dci_completeness       DCI completeness;  dci_informativeness: mean test accuracy
    beta_vae_accuracy      the beta-VAE metric: its classifier's test accuracy, in %
                           (as Higgins et al. report it; chance = 100 / 5 factors = 20 %)
    kl_unit_<j>            KL(q(z_j | x) || N(0, 1)) averaged over the test set, per unit
    active_kl_units        units whose mean KL exceeds ACTIVE_KL (they carry information)

Image rows: latent traversals. For the first test image, each unit with KL > ACTIVE_KL (most
informative first) is swept over TRAVERSAL_VALUES with the other units at the image's means;
one row of decoder means per unit, labelled with its KL.
"""

from __future__ import annotations

import numpy as np
import torch

from bench import eta
from bench.data import SHAPES_GRIDS, Dataset
from bench.metrics.blur import image_rows
from bench.metrics.disentanglement import beta_vae_score, dci, mig
from bench.metrics.factor_protocols import FACTOR_POINTS

# Entropy for the independent DCI draws (dci_train / dci_test > 0), mixed with the run's seed
# so they are not the stream that picks the MIG / default-DCI points.
DCI_DRAW_STREAM = 0xDC1
ACTIVE_KL = 0.01  # nats: a unit below this carries (almost) no information about x
TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 11)
ENCODE_CHUNK = 4096


def has_factors(dataset: Dataset) -> bool:
    """Whether `dataset` is a grid with known factors this module can score."""
    return dataset.name in SHAPES_GRIDS and bool(dataset.factor_names)


@torch.no_grad()
def encode_means(model, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, L) encoder means of flat 0/1 images, in chunks, on the model's device."""
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(pixels), ENCODE_CHUNK):
        chunk = torch.as_tensor(pixels[lo:lo + ENCODE_CHUNK], device=device)
        mean, _logvar = model.posterior_moments(chunk)
        out.append(mean.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.latent[0]))


@torch.no_grad()
def unit_kls(model, x: torch.Tensor) -> np.ndarray:
    """(L,) mean over x of each unit's KL(q(z_j|x) || N(0, 1)), nats; encoded in chunks,
    summed in float64."""
    total = torch.zeros(model.latent[0], dtype=torch.float64, device=x.device)
    for lo in range(0, len(x), ENCODE_CHUNK):
        mean, logvar = model.posterior_moments(x[lo:lo + ENCODE_CHUNK])
        mean, logvar = mean.double(), logvar.double()
        total += (0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)).sum(0)
    return (total / len(x)).cpu().numpy()


def _dci_protocol(config) -> tuple[str, int, int]:
    """(estimator, training points, test points) of a RunConfig (validated there); None is
    the default: forest, 0, 0 (the 2:1 split)."""
    if config is None:
        return "forest", 0, 0
    return config.dci_estimator, config.dci_train, config.dci_test


def dci_draws(sizes, n_train: int, n_test: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor indices of `n_train` training and `n_test` test points, (n, F) int64 each: every
    factor uniform and independent (a uniform draw from the grid, with replacement), training
    and test points from independent streams of `seed`, as disentanglement_lib's
    `generate_batch_factor_code` (`sample_factors`: `random_state.randint(size)` per factor)
    called once for the training and once for the test points."""
    sizes = np.asarray(sizes, dtype=np.int64)
    train_rng, test_rng = (np.random.default_rng(s) for s in
                           np.random.SeedSequence([seed, DCI_DRAW_STREAM]).spawn(2))
    return (train_rng.integers(0, sizes, size=(n_train, sizes.size)),
            test_rng.integers(0, sizes, size=(n_test, sizes.size)))


def factor_metrics(model, dataset: Dataset, *, seed: int, config=None,
                   progress: eta.ProgressLines | None = None) -> tuple[dict, list[dict]]:
    """Disentanglement metrics, per-unit KL and traversal images (see the module doc).

    `config` (a RunConfig, or anything with its dci_estimator / dci_train / dci_test) sets
    how DCI is computed; None, or the keys at their defaults, is the original protocol
    (random forest on the MIG points split 2:1) with the same numbers bit for bit.
    `progress`: where lines with an ETA go while the grid is encoded and DCI's predictors
    are fitted (bench.eta; boosting on the full grid takes minutes)."""
    from bench.data.shapes import load_shapes

    estimator, n_train, n_test = _dci_protocol(config)
    grid = load_shapes(SHAPES_GRIDS[dataset.name])
    pixels = _grid_pixels(grid)
    meter = eta.meter(progress, "disentanglement: encoding the grid", len(grid), "images")
    parts: list[np.ndarray] = []
    for chunk in pixels:
        parts.append(encode_means(model, chunk))
        meter.update(meter.done + len(chunk))
    meter.finish()
    codes = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    points = rng.choice(len(grid), size=min(len(grid), FACTOR_POINTS), replace=False)
    factors = grid.factor_indices[points]
    if n_train:  # disentanglement_lib: independent draws of training and test points
        train_f, test_f = dci_draws(grid.spec.factor_sizes, n_train, n_test, seed=seed)
        scores = dci(codes[grid.index_of(train_f)], train_f, estimator=estimator,
                     test=(codes[grid.index_of(test_f)], test_f), seed=seed,
                     progress=progress)
    else:
        scores = dci(codes[points], factors, estimator=estimator, seed=seed,
                     progress=progress)
    device = next(model.parameters()).device
    kls = unit_kls(model, dataset.test.to(device))
    metrics = {
        "mig": mig(codes[points], factors),
        "dci_disentanglement": scores.disentanglement,
        "dci_completeness": scores.completeness,
        "dci_informativeness": scores.informativeness_test,
        "beta_vae_accuracy": 100.0 * beta_vae_score(lambda f: codes[grid.index_of(f)],
                                                    grid.spec.factor_sizes, seed=seed),
        "active_kl_units": float((kls > ACTIVE_KL).sum()),
        **{f"kl_unit_{j}": float(v) for j, v in enumerate(kls)},
    }
    return metrics, traversal_rows(model, dataset, kls)


def _grid_pixels(grid):
    for lo in range(0, len(grid), 16 * ENCODE_CHUNK):
        yield grid.pixels(slice(lo, lo + 16 * ENCODE_CHUNK))


@torch.no_grad()
def traversal_rows(model, dataset: Dataset, kls: np.ndarray) -> list[dict]:
    """Decoder means along each active unit (most informative first) around the first test
    image's code; image rows for the report."""
    if dataset.image_shape is None:
        return []
    device = next(model.parameters()).device
    mean, _ = model.posterior_moments(dataset.test[:1].to(device))
    kinds = {"test image": dataset.test[:1]}
    for unit in [int(j) for j in np.argsort(-kls) if kls[j] > ACTIVE_KL]:
        z = mean.repeat(len(TRAVERSAL_VALUES), 1)
        z[:, unit] = torch.as_tensor(TRAVERSAL_VALUES, dtype=z.dtype, device=device)
        kinds[f"unit {unit} (KL {kls[unit]:.2f})"] = model.decoder.mean(z)
    return image_rows(kinds, dataset.image_shape)
