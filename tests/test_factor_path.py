"""The trained-model path of the disentanglement metrics, and the 2-layer prior sampler.

`bench.metrics.disentanglement` is unit-tested on synthetic codes (test_disentanglement.py);
here the metrics go through `bench.metrics.factors.factor_metrics`, called as bench.families.lvm
calls it (`factor_metrics(model, dataset, seed=cfg.seed, config=cfg)`): every image of the
`shapes_small` grid is encoded with the model's `posterior_moments`, codes are paired with
the grid's factors for MIG and DCI, and the beta-VAE metric looks images up by factor
values. The model is a stand-in that reads each image's factors off a table keyed by its
pixels, so the codes are known exactly:

* the oracle encoder: the posterior mean of an image is the factor values of the image;
* the shuffled encoder: the factor values of another image (a fixed random permutation of
  the grid), so codes carry no information about the image's factors.

Identical images: the square is invariant under a quarter turn and the ellipse under a half
turn (bench.data.shapes), so on the 8 orientations of `shapes_small` a square's orientations k
and k + 2 (and k + 4, k + 6), an ellipse's k and k + 4, draw the same pixels: 3,584 distinct
images for 6,144 grid rows. No encoder can tell them apart; the stand-ins give an image the
code of the FIRST grid row that draws it, whose orientation index is the true one mod 2
(square), mod 4 (ellipse), unchanged (heart). The pinned values below follow from that.

Second part: `LatentVariableModel.sample_prior` of a 2-layer model draws z2 ~ N(0, I) and
then z1 ~ p(z1 | z2); its decoder means are the prior samples of the blur metrics and of the
report's image grids.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import bench.metrics.factors
from bench.config import RunConfig
from bench.data import load_dataset
from bench.data.shapes import load_shapes
from bench.metrics.blur import blur_metrics, blurriness, sample_records
from bench.metrics.disentanglement import beta_vae_score, dci, mig
from bench.metrics.factors import factor_metrics
from bench.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # the tests share a small CPU

# the config a shapes run would have (only seed and the DCI keys reach factor_metrics)
SHAPES_CFG = RunConfig(dataset="shapes_small", architecture="conv", latent=(5,))
SHUFFLE_SEED = 1  # the permutation of the shuffled encoder


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _ZeroDecoder:
    """decoder.mean for the traversal rows: black images (their values are not tested here)."""

    def __init__(self, dim: int):
        self.dim = dim

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], self.dim)


class LookupEncoder(nn.Module):
    """A stand-in model whose q(z | x) is N(factor_values[target[r]], I) for the image x drawn
    by grid row r (the first row drawing those pixels, see the module doc): an exact table
    lookup by the image's pixels, the interface factor_metrics uses (`posterior_moments`,
    `latent`, `decoder.mean`, `parameters()` for the device). Unit variance (logvar 0), so
    codes read from z samples instead of the means would be off by N(0, 1) noise, several
    times the spacing of the factor values."""

    def __init__(self, grid, target: np.ndarray):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # factor_metrics reads the device off it
        self.latent = (grid.factor_values.shape[1],)
        self.rows = {bytes(row): r for r, row in reversed(list(enumerate(grid.packed)))}
        self.values = torch.as_tensor(grid.factor_values[target], dtype=torch.float32)
        self.decoder = _ZeroDecoder(grid.spec.size ** 2)

    @torch.no_grad()
    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed = np.packbits(x.cpu().numpy().astype(np.uint8), axis=1)
        rows = torch.as_tensor([self.rows[bytes(p)] for p in packed])
        mean = self.values[rows]
        return mean, torch.zeros_like(mean)


@pytest.fixture(scope="module")
def grid():
    return load_shapes("small")


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes_small", train_size=16, test_size=16)


def folded(indices: np.ndarray) -> np.ndarray:
    """Factor indices (N, 5) of the first grid row drawing the same image as each row."""
    out = indices.copy()
    period = np.array([2, 4, 8])[indices[:, 0]]  # square, ellipse, heart orientation periods
    out[:, 2] = indices[:, 2] % period
    return out


def oracle_codes(grid, indices: np.ndarray) -> np.ndarray:
    """The oracle encoder's codes of the images with these factor indices (float32 values)."""
    return grid.factor_values[grid.index_of(folded(indices))].astype(np.float32).astype(
        np.float64)


@pytest.fixture(scope="module")
def oracle(grid):
    return LookupEncoder(grid, np.arange(len(grid)))


@pytest.fixture(scope="module")
def oracle_metrics(oracle, shapes):
    metrics, _rows = factor_metrics(oracle, shapes, seed=SHAPES_CFG.seed, config=SHAPES_CFG)
    return metrics


@pytest.fixture(scope="module")
def shuffled_metrics(grid, shapes):
    target = np.random.default_rng(SHUFFLE_SEED).permutation(len(grid))
    model = LookupEncoder(grid, target)
    metrics, _rows = factor_metrics(model, shapes, seed=SHAPES_CFG.seed, config=SHAPES_CFG)
    return metrics


def oracle_mig() -> float:
    """MIG of the oracle codes on the whole grid (FACTOR_POINTS = 10,000 > 6,144: every image).

    Factors are independent and uniform on the grid; each factor's values are evenly spaced,
    so the 20 equal-width bins put every value in its own bin and a unit equal to a factor
    has I = H(factor). Units shape, scale, x, y are exact: scale, x, y score 1, and shape 1 -
    I(o'; shape) / log 3, the runner-up being the folded orientation o' (o mod 2 / mod 4 /
    unchanged for square / ellipse / heart), which depends on the shape. Orientation's best
    unit is o', gap I(o'; o) / log 8 (every other unit is independent of o).
      p(o') = 7/24, 7/24, 1/8, 1/8, 1/24 x 4 (o' = 0..7);  H(o' | shape) = (log 2 + log 4 +
      log 8) / 3;  H(o' | o) = (4 h(1/3) + 2 log 3) / 8 (o' is one of o mod 2, o mod 4, o,
      each with probability 1/3: o = 0, 1 give one value, o = 2..5 two (1/3, 2/3), o = 6, 7
      three).
    """
    p = np.array([7, 7, 3, 3, 1, 1, 1, 1]) / 24
    h_o = -float(np.sum(p * np.log(p)))
    h_third = math.log(3) - 2 / 3 * math.log(2)  # entropy of (1/3, 2/3)
    info_shape = h_o - (math.log(2) + math.log(4) + math.log(8)) / 3
    info_orientation = h_o - (4 * h_third + 2 * math.log(3)) / 8
    gaps = [1 - info_shape / math.log(3), 1.0, info_orientation / math.log(8), 1.0, 1.0]
    return sum(gaps) / 5


# ---- the oracle encoder ------------------------------------------------------------------
def test_identical_images_share_the_first_rows_factors(grid, oracle):
    """Precondition of the pinned values: the stand-in's table holds one row per distinct
    image, and that row is the folded orientation of every grid row drawing it (a change of
    bench.data.shapes' pixels or symmetries would move the expected MIG, not a metric bug)."""
    assert len(set(oracle.rows.values())) == 3584
    every = np.arange(len(grid))
    codes, _ = oracle.posterior_moments(torch.as_tensor(grid.pixels(every)))
    np.testing.assert_array_equal(codes.double().numpy(), oracle_codes(grid, grid.factor_indices))


def test_an_oracle_encoder_scores_the_exact_mig_of_the_grid(oracle_metrics):
    """MIG of codes equal to the image's factors is the closed form of `oracle_mig`, 0.8435
    (1 for every identifiable factor; below 1 only for the symmetric shapes' orientation).
    Guards codes misaligned with the factors (factors of the drawn points in another order
    than their codes, an off-by-one index, chunks encoded from the wrong offset: MIG falls to
    ~0) and codes read from z samples of q instead of its means (noise of unit scale)."""
    assert oracle_mig() == pytest.approx(0.8435064619411898, abs=1e-12)
    assert oracle_metrics["mig"] == pytest.approx(oracle_mig(), abs=1e-12)


def test_an_oracle_encoder_has_dci_near_its_ceiling(oracle_metrics):
    """DCI of the oracle codes (random forest, 2:1 split of the 6,144 points, seed 0).
    Informativeness is bounded by the Bayes accuracy (4 + 7/12) / 5 = 0.9167: every factor is
    read off its unit except the orientation of squares / ellipses, guessed right 1/4 / 1/2
    of the time (7/12 over the three shapes). D and C are below 1 for the same reason: the
    orientation predictor also uses the shape unit. Pinned to this scikit-learn's forest
    (deterministic at a fixed seed, one thread): D 0.9120, C 0.9188, I 0.9061; the bounds
    are the meaning (misaligned codes give D, C ~ 0 and I at chance, ~0.2)."""
    assert oracle_metrics["dci_informativeness"] <= (4 + 7 / 12) / 5
    assert oracle_metrics["dci_informativeness"] > 0.9
    assert min(oracle_metrics["dci_disentanglement"], oracle_metrics["dci_completeness"]) > 0.9
    assert oracle_metrics["dci_disentanglement"] == pytest.approx(0.9119678407001723, abs=1e-6)
    assert oracle_metrics["dci_completeness"] == pytest.approx(0.9187828195904679, abs=1e-6)
    assert oracle_metrics["dci_informativeness"] == pytest.approx(0.9060546875, abs=1e-9)


def test_an_oracle_encoder_scores_100_percent_on_the_beta_vae_metric(oracle_metrics):
    """Pairs sharing factor k have identical unit k (mean |z1 - z2| = 0 there) except for
    the orientation of symmetric shapes (folded differently when the pair's shapes differ,
    still far smaller than a free factor's spread): a linear classifier tells k on all 5,000
    test points, exactly 100 %. Guards the lookup from factor values to images (the mixed-
    radix order reversed, x fastest instead of y), pairs that do not share the fixed factor,
    the other pair member's image looked up, and labels recorded for the wrong point (each
    drops the score towards chance, 20 %)."""
    assert oracle_metrics["beta_vae_accuracy"] == 100.0


def test_the_per_unit_kl_is_over_the_test_images(oracle_metrics, grid, shapes):
    """q(z_j | x) = N(v_j, 1) gives KL_j = v_j^2 / 2 exactly, averaged over the data set's
    test images (16 here): kl_unit_0 = 0.5625 is 0.5 * mean(shape code^2) of those 16.
    Guards the KL (and the active units it decides) computed on other images (the training
    set) or on misaligned codes."""
    codes = oracle_codes(grid, shapes.test_factors.numpy())
    expected = 0.5 * (codes**2).mean(axis=0)
    got = np.array([oracle_metrics[f"kl_unit_{j}"] for j in range(5)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert oracle_metrics["kl_unit_0"] == pytest.approx(0.5625, abs=1e-12)
    assert oracle_metrics["active_kl_units"] == 5.0


def test_every_code_a_metric_sees_is_the_oracle_code_of_its_factor_row(
        oracle, shapes, grid, monkeypatch):
    """Row by row: the codes handed to MIG and DCI are the oracle codes of the factor rows
    they are paired with, and the beta-VAE metric's `encode` returns, for each factor row it
    asks for, the code of that row's image. Guards misalignment anywhere on the path (a
    different order, subset or offset of codes and factors; a lookup of another image)."""
    seen = {}

    def spy_mig(codes, factors, *args, **kwargs):
        seen["mig"] = (np.array(codes), np.array(factors))
        return mig(codes, factors, *args, **kwargs)

    def spy_dci(codes, factors, **kwargs):
        seen["dci"] = (np.array(codes), np.array(factors))
        return dci(codes, factors, **kwargs)

    def spy_beta_vae(encode, sizes, **kwargs):
        asked = []

        def recorded(f):
            z = encode(f)
            asked.append((np.array(f), np.array(z)))
            return z

        score = beta_vae_score(recorded, sizes, **kwargs)
        seen["beta_vae"] = asked
        return score

    monkeypatch.setattr(bench.metrics.factors, "mig", spy_mig)
    monkeypatch.setattr(bench.metrics.factors, "dci", spy_dci)
    monkeypatch.setattr(bench.metrics.factors, "beta_vae_score", spy_beta_vae)
    factor_metrics(oracle, shapes, seed=SHAPES_CFG.seed, config=SHAPES_CFG)
    for name in ("mig", "dci"):
        codes, factors = seen[name]
        assert codes.shape == (len(grid), 5), name  # every image once
        assert len(np.unique(grid.index_of(factors))) == len(grid), name
        np.testing.assert_array_equal(codes, oracle_codes(grid, factors), err_msg=name)
    assert len(seen["beta_vae"]) > 0
    for f, z in seen["beta_vae"]:
        np.testing.assert_array_equal(z, oracle_codes(grid, f))


# ---- the shuffled encoder ----------------------------------------------------------------
def test_a_shuffled_encoder_scores_no_disentanglement(shuffled_metrics):
    """Codes of another image (a random permutation of the grid): unrelated to the image's
    factors. MIG: the plug-in MI of independent variables is biased up by about
    (a - 1)(b - 1) / 2N nats (< 0.005 for 8 x 8 values, N = 6,144) and MIG is a gap of two
    such biases: pinned 0.000488 (numpy only, exact for this permutation and seed). DCI:
    importances spread over all units, D, C < 0.05 (pinned 0.0016, 0.0225). beta-VAE metric:
    chance is 1 / 5 factors = 20 %, standard error sqrt(0.2 * 0.8 / 5000) = 0.57 points;
    pinned 20.2 (1,010 of 5,000). Guards metrics that bypass the model's codes (e.g. the
    beta-VAE lookup returning the grid's factor values for the looked-up rows instead of the
    codes of those images), which would rate this encoder as well as the oracle."""
    assert shuffled_metrics["mig"] < 0.005
    assert shuffled_metrics["mig"] == pytest.approx(0.00048763304764114543, abs=1e-12)
    assert max(shuffled_metrics["dci_disentanglement"],
               shuffled_metrics["dci_completeness"]) < 0.05
    assert shuffled_metrics["dci_disentanglement"] == pytest.approx(0.0016411016209177238,
                                                                    abs=1e-6)
    assert shuffled_metrics["dci_completeness"] == pytest.approx(0.0225400890289841, abs=1e-6)
    assert abs(shuffled_metrics["beta_vae_accuracy"] - 20.0) < 3 * 0.57
    assert shuffled_metrics["beta_vae_accuracy"] == pytest.approx(20.2, abs=1e-9)


# ---- the 2-layer prior sampler -----------------------------------------------------------
TWO_LAYER = RunConfig(dataset="digits", hidden=((8,), (8,)), latent=(4, 2))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=64, test_size=32)


def two_layer_model(digits, *, z1_mean=None, z1_logvar=None):
    """The 2-layer model of TWO_LAYER; with z1_mean / z1_logvar, p(z1 | z2) is replaced by
    N(z1_mean, exp(z1_logvar)) for every z2 (its head's weights zero, bias the constants)."""
    model = build_model(TWO_LAYER, digits.dim, image_shape=digits.image_shape)
    if z1_mean is not None:
        head = model.priors[0].head  # outputs [mean (4) | logvar (4)]
        with torch.no_grad():
            head.weight.zero_()
            head.bias[:4] = z1_mean
            head.bias[4:] = z1_logvar
    return model


def decoded_z(model) -> list[torch.Tensor]:
    """Inputs of the decoder network, recorded on every call (the z1 it decodes)."""
    record = []
    model.decoder.net.register_forward_pre_hook(lambda _m, args: record.append(args[0].clone()))
    return record


def test_two_layer_prior_samples_draw_z1_from_p_z1_given_the_z2_drawn(digits):
    """Replays the draws with the same generator state: z2 ~ N(0, I) (n x 2), then z1 =
    mean(z2) + exp(logvar(z2) / 2) * eps with p(z1 | z2)'s network and the next n x 4 normals,
    and sample_prior returns the decoder means at exactly that z1. Guards prior samples that
    skip p(z1 | z2) (z1 ~ N(0, I)), take its mean without noise, use exp(logvar) as the
    standard deviation, or draw eps from the global RNG instead of the run's generator."""
    model = two_layer_model(digits)
    record = decoded_z(model)
    images = model.sample_prior(7, generator=gen(3))
    replay = gen(3)
    z2 = torch.randn((7, 2), generator=replay)
    with torch.no_grad():
        mean, logvar, _ = model.priors[0].params(z2)
        eps = torch.randn(mean.shape, generator=replay)
        z1 = mean + torch.exp(0.5 * logvar) * eps
        assert not torch.allclose(logvar, torch.zeros_like(logvar))  # std is not 1 here
        (got,) = record
        assert torch.equal(got, z1)
        assert torch.equal(images, model.decoder.mean(z1))
    assert images.shape == (7, digits.dim)


def test_two_layer_prior_samples_are_centred_at_p_z1_given_z2(digits):
    """With p(z1 | z2) = N(5, 2^2) for every z2 (head weights 0, bias mean 5, logvar log 4),
    4,000 prior draws of z1 have mean 5 and standard deviation 2 per unit (standard errors
    2 / sqrt(4000) = 0.032 and 2 / sqrt(8000) = 0.022: 0.15 is > 4.5 of them), where z1 ~
    N(0, I) would give 0 and 1, and exp(logvar) as the std would give 4. Guards prior samples
    that skip p(z1 | z2)."""
    model = two_layer_model(digits, z1_mean=5.0, z1_logvar=math.log(4.0))
    record = decoded_z(model)
    model.sample_prior(4000, generator=gen(0))
    (z1,) = record
    assert z1.shape == (4000, 4)
    torch.testing.assert_close(z1.mean(0), torch.full((4,), 5.0), rtol=0, atol=0.15)
    torch.testing.assert_close(z1.std(0), torch.full((4,), 2.0), rtol=0, atol=0.1)


def test_the_reports_prior_images_decode_z1_from_p_z1_given_z2(digits):
    """The report's prior samples (sample_records) and the blur metrics' ones (blur_metrics)
    go through p(z1 | z2): with p(z1 | z2) = N(5, e^-40) (std 2e-9, below float32's spacing
    at 5) every z1 is exactly 5, so every prior image is the decoder mean at z1 = (5, 5, 5,
    5), and their blurriness is that image's. Guards the images path drawing z1 from N(0, I)
    (each image would differ)."""
    model = two_layer_model(digits, z1_mean=5.0, z1_logvar=-40.0)
    with torch.no_grad():
        image = model.decoder.mean(torch.full((1, 4), 5.0))
    rows = [r for r in sample_records(model, digits, generator=gen(0)) if r["kind"] == "prior"]
    assert len(rows) == 64
    got = torch.tensor([row["pixels"] for row in rows])
    # up to float32 rounding of a 64-row vs a 1-row matmul; an N(0, 1) z1 moves pixels by ~0.1
    torch.testing.assert_close(got, image.clamp(0, 1).expand(64, -1), rtol=0, atol=1e-6)
    blur = blur_metrics(model, digits, generator=gen(0))
    expected = float(blurriness(image.clamp(0, 1).reshape(1, 8, 8)))
    assert blur["blur_prior_mean"] == pytest.approx(expected, rel=1e-6)
    assert blur["blur_prior_min"] == pytest.approx(expected, rel=1e-6)
