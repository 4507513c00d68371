"""The conditional VAE family: quadrant geometry, no leakage of hidden pixels, the CLL
estimators against exact answers, class-conditional samples, and end-to-end digits runs."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import RunConfig
from bench.errors import BenchError
from bench.families import FamilyResult, train_model
from bench.families.cvae import (
    ConditionalNN,
    LabelCVAE,
    QuadrantCVAE,
    conditional_estimates,
    evaluate,
    fit,
    nn_cross_entropy,
    pixel_marginal_cll,
    quadrant_masks,
    run,
)
from bench.train import MACHINE_METRICS, load_data

QUADRANT_METRICS = {"cvae": {"test_cll", "test_cll_is", "rate", "nn_test_cll",
                             "test_cll_marginal", "eval_seconds"},
                    "conditional_nn": {"test_cll", "test_cll_marginal", "eval_seconds"}}
LABEL_METRICS = {"test_ll", "test_elbo", "rate", "eval_seconds"}
SMALL = dict(dataset="digits", hidden=((32,),), latent=(4,), train_size=300, test_size=60,
             epochs=2, k_eval=20)


pytestmark = pytest.mark.usefixtures("one_thread")  # the tests share a small CPU


@pytest.fixture(scope="module")
def digits():
    return load_data(RunConfig(**SMALL))


def small(**overrides) -> RunConfig:
    return RunConfig(**{**SMALL, **overrides})


def random_quadrant_cvae(given_quadrants: int = 2, shape=(8, 8), latent: int = 3,
                         seed: int = 0) -> QuadrantCVAE:
    given, _ = quadrant_masks(shape, given_quadrants)
    torch.manual_seed(seed)
    return QuadrantCVAE(ConditionalNN(given, (16,)), (16,), latent)


def random_images(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, d), 0.4), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape", [(8, 8), (28, 28), (4, 6), (2, 10)])
def test_quadrant_masks_partition_the_image_as_pyro_does(shape):
    h, w = shape
    top, left = torch.zeros(h, w, dtype=torch.bool), torch.zeros(h, w, dtype=torch.bool)
    top[: h // 2], left[:, : w // 2] = True, True
    # Pyro's MaskImages: 1 -> bottom-left; 2 -> the left half; 3 -> all but bottom-right
    expected = {1: ~top & left, 2: left, 3: ~(~top & ~left)}
    for q, want in expected.items():
        given, missing = quadrant_masks(shape, q)
        assert given.shape == missing.shape == (h * w,)
        assert torch.equal(given, want.flatten())
        assert torch.equal(missing, ~given)  # a partition: disjoint, covering
        assert int(given.sum()) == q * (h // 2) * (w // 2)


@pytest.mark.parametrize("shape,q", [((7, 8), 2), ((8, 5), 1), (None, 2), ((8, 8), 0),
                                     ((8, 8), 4)])
def test_quadrant_masks_reject_odd_shapes_and_bad_counts(shape, q):
    with pytest.raises(BenchError, match="given_quadrants"):
        quadrant_masks(shape, q)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_hidden_pixels_never_reach_the_prior_or_generation_networks(q):
    model = random_quadrant_cvae(q)
    given, missing = quadrant_masks((8, 8), q)
    x = random_images(5, 64, seed=1)
    x_other = x.clone()
    x_other[:, missing] = random_images(5, int(missing.sum()), seed=2) * 7 - 3  # anything
    assert not torch.equal(x, x_other)
    z = torch.randn(4, 5, 3)
    for a, b in zip(model.prior(x), model.prior(x_other), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(model.generation_logits(x, z), model.generation_logits(x_other, z))
    assert torch.equal(model.baseline.logits(x), model.baseline.logits(x_other))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.predict(x, g1), model.predict(x_other, g2))
    # the recognition network does read the hidden pixels: the check above can fail
    assert not torch.equal(model.recognition(x)[0], model.recognition(x_other)[0])


# --------------------------------------------------------------------------- estimators
def z_free_model(q: int = 2) -> QuadrantCVAE:
    """Prior = recognition = N(0, I) and a generation network that ignores z: every
    importance weight equals p(y|x) exactly."""
    model = random_quadrant_cvae(q)
    with torch.no_grad():
        for net in (model.prior_net, model.recognition_net):
            net.head.weight.zero_()
            net.head.bias.zero_()
        model.generation_net.from_b.weight.zero_()
    return model


@pytest.mark.parametrize("k", [1, 7, 100])
def test_cll_estimates_equal_the_exact_cross_entropy_when_z_is_ignored(k):
    model = z_free_model()
    x = random_images(23, 64)
    exact = -torch.nn.functional.binary_cross_entropy_with_logits(
        model.generation_logits(x, torch.zeros(1, 23, 3))[0], model.missing(x),
        reduction="none").double().sum(-1)
    gen = torch.Generator().manual_seed(0)
    est = conditional_estimates(lambda rows, kk: model(x[rows], kk, gen), 23, k,
                                rows_per_chunk=30)  # several chunks of examples and samples
    torch.testing.assert_close(est.log_likelihood, exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(est.elbo_mc, exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(est.kl, torch.zeros_like(exact), atol=1e-6, rtol=0)


def test_importance_estimate_converges_to_the_quadrature_value():
    # one latent dimension: log p(y|x) = log int p(y|x,z) p(z|x) dz by quadrature, exactly
    model = random_quadrant_cvae(2, shape=(4, 4), latent=1, seed=5).double()
    with torch.no_grad():
        model.generation_net.from_b.weight.mul_(2.0)  # make y depend strongly on z
        model.recognition_net.head.bias[1:].add_(1.0)  # a proposal wider than the posterior
    x = random_images(6, 16, seed=7).double()
    p_mean, p_logvar = model.prior(x)
    std = torch.exp(0.5 * p_logvar)
    grid = torch.linspace(-12, 12, 6001, dtype=torch.float64)
    z = p_mean.T + std.T * grid[:, None]  # (G, B)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        model.generation_logits(x, z[..., None]), model.missing(x).expand(len(grid), -1, -1),
        reduction="none").sum(-1)
    log_prior = -0.5 * (grid[:, None] ** 2 + math.log(2 * math.pi)) - torch.log(std.T)
    dz = (grid[1] - grid[0]) * std.T
    exact = torch.logsumexp(log_lik + log_prior + torch.log(dz), 0)
    gen = torch.Generator().manual_seed(0)
    est = conditional_estimates(lambda rows, k: model(x[rows], k, gen), 6, 100_000)
    torch.testing.assert_close(est.log_likelihood, exact, atol=0.01, rtol=0)
    # z matters here: the ELBO is a lower bound, and a loose one
    assert bool((est.elbo_mc < exact - 0.05).all())


def test_importance_estimate_is_at_least_the_elbo_and_equals_it_at_k1():
    model = random_quadrant_cvae(1)
    x = random_images(40, 64)
    for k in (1, 10):
        gen = torch.Generator().manual_seed(0)
        est = conditional_estimates(lambda rows, kk, g=gen: model(x[rows], kk, g), 40, k,
                                    rows_per_chunk=64)
        if k == 1:
            torch.testing.assert_close(est.log_likelihood, est.elbo_mc, atol=1e-9, rtol=0)
        else:  # Jensen, sample by sample: log mean w >= mean log w
            assert bool((est.log_likelihood >= est.elbo_mc - 1e-9).all())
            assert float((est.log_likelihood - est.elbo_mc).mean()) > 0.1
    # the closed-form-KL ELBO estimates the same quantity as the Monte Carlo one
    assert float(est.elbo.mean()) == pytest.approx(float(est.elbo_mc.mean()), abs=0.5)


def test_conditional_nn_test_cll_is_the_hand_computed_cross_entropy(digits):
    cfg = small(model="conditional_nn", condition="quadrants", given_quadrants=2)
    result = run(cfg, digits)
    model = fit(cfg, digits).model  # deterministic: the very network `run` scored
    _, missing = quadrant_masks((8, 8), 2)
    probs = torch.sigmoid(model.logits(digits.test)).double()
    total = 0.0
    for i in range(digits.test.shape[0]):
        for j, pixel in enumerate(torch.nonzero(missing).flatten().tolist()):
            y, p = float(digits.test[i, pixel]), float(probs[i, j])
            total -= math.log(p) if y == 1.0 else math.log(1.0 - p)
    assert result.family_metrics["test_cll"] == pytest.approx(total / digits.test.shape[0],
                                                              rel=1e-6)
    assert float(nn_cross_entropy(model, digits.test).mean()) == pytest.approx(
        result.family_metrics["test_cll"], rel=1e-9)


def test_pixel_marginal_cll_is_exact():
    train = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
    test = torch.tensor([[1.0, 1.0, 0.0]])
    missing = torch.tensor([False, True, True])
    # p = (sum + 1) / (n + 2): pixel 1 -> 1/4, pixel 2 -> 2/4
    expected = -(math.log(1 / 4) + math.log(1 - 2 / 4))
    assert float(pixel_marginal_cll(train, test, missing)[0]) == pytest.approx(expected)


# --------------------------------------------------------------------------- label samples
def test_label_class_grid_decodes_the_same_z_in_every_row():
    torch.manual_seed(0)
    model = LabelCVAE(16, 10, (12,), 3)
    grid = model.class_grid(6, generator=torch.Generator().manual_seed(4))
    assert grid.shape == (10, 6, 16)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))  # the draws it made
    for c in range(10):
        onehot = torch.nn.functional.one_hot(torch.full((6,), c), 10).float()
        torch.testing.assert_close(grid[c], model.decode_mean(z, onehot))
    # with a decoder blind to the class, each column is one image repeated down the classes
    with torch.no_grad():
        model.decoder.from_a.weight.zero_()
    blind = model.class_grid(6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(blind, blind[:1].expand_as(blind))
    assert not torch.allclose(blind[0, 0], blind[0, 1])  # columns do differ


# --------------------------------------------------------------------------- end to end
CONFIGS = {
    "cvae-label": dict(model="cvae", condition="label"),
    "cvae-q2": dict(model="cvae", condition="quadrants", given_quadrants=2),
    "nn-q2": dict(model="conditional_nn", condition="quadrants", given_quadrants=2),
    "cvae-q3-iwae": dict(model="cvae", condition="quadrants", given_quadrants=3,
                         objective="iwae", k=3),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_model_on_digits_finishes_with_the_family_metrics(name, digits):
    cfg = small(**CONFIGS[name])
    calls = []
    result = train_model(cfg, digits, on_epoch=lambda record, total: calls.append(total))
    assert isinstance(result, FamilyResult) and result.status == "finished"
    metrics = result.metrics()
    stages = 2 if cfg.model == "cvae" and cfg.condition == "quadrants" else 1
    assert metrics["epochs_done"] == len(calls) == stages * cfg.epochs
    assert set(calls) == {stages * cfg.epochs}
    want = LABEL_METRICS if cfg.condition == "label" else QUADRANT_METRICS[cfg.model]
    assert set(result.family_metrics) == want
    assert all(math.isfinite(v) for v in result.family_metrics.values())
    kinds = [row["kind"] for row in result.samples]
    if cfg.condition == "label":
        assert list(dict.fromkeys(kinds)) == [f"class {c}" for c in range(10)]
        assert metrics["test_ll"] >= metrics["test_elbo"] and metrics["rate"] >= 0
    else:
        assert list(dict.fromkeys(kinds)) == ["input (given quadrants)", "prediction", "truth"]
        rows = {(r["kind"], r["index"]): torch.tensor(r["pixels"]) for r in result.samples}
        given, missing = quadrant_masks((8, 8), cfg.given_quadrants)
        for i in range(10):
            truth, shown = rows["truth", i], rows["input (given quadrants)", i]
            assert torch.equal(shown[given], truth[given])
            assert bool((shown[missing] == 0.5).all())
            assert torch.equal(rows["prediction", i][given], truth[given])
        if cfg.model == "cvae":
            assert metrics["test_cll_is"] <= metrics["test_cll"]
    assert all(len(kinds) and kinds.count(k) == 10 for k in set(kinds))
    assert all(0 <= p <= 1 for row in result.samples for p in row["pixels"])


def test_cvae_runs_are_deterministic_and_leave_the_global_rng_alone(digits):
    cfg = small(model="cvae", condition="quadrants", given_quadrants=1)
    before = torch.random.get_rng_state()
    a, b = run(cfg, digits), run(cfg, digits)
    assert torch.equal(before, torch.random.get_rng_state())
    strip = lambda m: {k: v for k, v in m.items() if k not in MACHINE_METRICS}
    assert strip(a.metrics()) == strip(b.metrics())
    assert a.samples == b.samples
    assert [r.train_bound for r in a.curves] == [r.train_bound for r in b.curves]
    c = run(cfg.replace(seed=1), digits)
    assert strip(c.metrics()) != strip(a.metrics())


def test_the_cvae_baseline_is_the_conditional_nn_of_the_same_seed(digits):
    cvae = run(small(model="cvae", condition="quadrants", given_quadrants=2), digits)
    nn = run(small(model="conditional_nn", condition="quadrants", given_quadrants=2), digits)
    assert cvae.family_metrics["nn_test_cll"] == nn.family_metrics["test_cll"]
    assert [r.train_bound for r in cvae.curves[:2]] == [r.train_bound for r in nn.curves]


def test_a_non_finite_loss_ends_the_run_as_diverged(digits):
    result = run(small(model="cvae", condition="label", lr=1e4), digits)
    assert result.status == "diverged" and result.diverged_epoch == 1
    assert result.family_metrics == {} and result.samples == []
    assert result.metrics()["status"] == "diverged"


def test_cvae_beats_the_pixel_marginal_baseline_after_a_few_epochs():
    cfg = RunConfig(dataset="digits", model="cvae", condition="quadrants", given_quadrants=2,
                    hidden=((64,),), latent=(8,), epochs=15, lr=3e-3, k_eval=50)
    dataset = load_data(cfg)
    fitted = fit(cfg, dataset)
    metrics, _ = evaluate(fitted.model, cfg, dataset,
                          generator=torch.Generator().manual_seed(0))
    # independent pixels at their training means: ~14.3 nats for the 32 missing pixels
    assert metrics["test_cll"] < metrics["test_cll_marginal"] - 1.0
    # and, the point of Sohn et al., its own deterministic baseline network
    assert metrics["test_cll_is"] < metrics["nn_test_cll"]
    assert metrics["test_cll_is"] <= metrics["test_cll"]


@pytest.mark.parametrize("model", ["cvae", "conditional_nn"])
def test_training_follows_the_learning_rate_schedule(digits, model):
    cfg = small(model=model, condition="quadrants", given_quadrants=2, schedule="burda",
                burda_stages=2)
    result = train_model(cfg, digits)
    stages = [lr for epochs, lr in cfg.lr_stages() for _ in range(epochs)]  # 1 + 3 epochs
    per_stage = 1 if model == "conditional_nn" else 2  # a cvae trains its baseline first
    assert [r.lr for r in result.curves] == stages * per_stage
