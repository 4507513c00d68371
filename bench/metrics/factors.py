"""A trained VAE scored on a data set whose generative factors are known (`bench.shapes`).

    factor_metrics(model, dataset)  ->  (metrics, image rows)

Codes are the encoder means E_q[z | x] (q's first stochastic layer), computed once for every
image of the grid (6,144 for `shapes_small`; the 737,280 of `shapes` in chunks, cheap on a GPU
and a few minutes on a CPU), so the beta-VAE metric's 1.9 million encodings at
disentanglement_lib's sizes are table lookups. Metrics (`bench.metrics.disentanglement` has
the definitions):

    mig                    MIG on up to FACTOR_POINTS grid images drawn with the run's seed
    dci_disentanglement    DCI disentanglement (random-forest importances) on the same points
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

from bench.data import SHAPES_GRIDS, Dataset
from bench.metrics.blur import image_rows
from bench.metrics.disentanglement import beta_vae_score, dci, mig

FACTOR_POINTS = 10000  # grid images MIG and DCI are computed on (disentanglement_lib: 10000)
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


def factor_metrics(model, dataset: Dataset, *, seed: int) -> tuple[dict, list[dict]]:
    """Disentanglement metrics, per-unit KL and traversal images (see the module doc)."""
    from bench.shapes import load_shapes

    grid = load_shapes(SHAPES_GRIDS[dataset.name])
    pixels = _grid_pixels(grid)
    codes = np.concatenate([encode_means(model, chunk) for chunk in pixels])
    rng = np.random.default_rng(seed)
    points = rng.choice(len(grid), size=min(len(grid), FACTOR_POINTS), replace=False)
    factors = grid.factor_indices[points]
    scores = dci(codes[points], factors, seed=seed)
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
