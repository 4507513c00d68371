"""The conditional VAE family: quadrant geometry, no leakage of hidden pixels, the CLL
estimators against exact answers, class-conditional samples, end-to-end digits runs, grey-level
targets (binarize = false), and early stopping on a held-out validation split."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.config import RunConfig
from bench.errors import BenchError
from bench.families import FamilyResult, train_model
from bench.families import cvae as cvae_module
from bench.families.cvae import (
    ConditionalNN,
    EarlyStopping,
    LabelCVAE,
    QuadrantCVAE,
    conditional_estimates,
    evaluate,
    fit,
    nn_cross_entropy,
    pixel_marginal_cll,
    quadrant_masks,
    run,
    split_validation,
)
from bench.loop import load_data
from bench.metrics.catalog import MACHINE_METRICS

QUADRANT_METRICS = {"cvae": {"test_cll", "test_cll_is", "rate", "nn_test_cll",
                             "test_cll_marginal", "eval_seconds", "nn_epochs_run",
                             "cvae_epochs_run"},
                    "conditional_nn": {"test_cll", "test_cll_marginal", "eval_seconds",
                                       "nn_epochs_run"}}
LABEL_METRICS = {"test_ll", "test_elbo", "rate", "eval_seconds", "cvae_epochs_run"}
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


@pytest.mark.parametrize("binarize", [True, False])
def test_conditional_nn_test_cll_is_the_hand_computed_cross_entropy(binarize):
    cfg = small(model="conditional_nn", condition="quadrants", given_quadrants=2,
                binarize=binarize)
    data = load_data(cfg)
    result = run(cfg, data)
    model = fit(cfg, data).model  # deterministic: the very network `run` scored
    _, missing = quadrant_masks((8, 8), 2)
    probs = torch.sigmoid(model.logits(data.test)).double()
    # grey levels: the test targets are the intensities themselves, scored by the
    # cross-entropy t log p + (1 - t) log(1 - p) (Pyro's MaskedBCELoss), never binarized
    truth = data.test_intensities if not binarize else data.test
    if not binarize:  # the stored test set is the intensities, not a binarized copy
        assert torch.equal(data.test, data.test_intensities)
    assert bool(((truth > 0) & (truth < 1)).any()) != binarize
    total = 0.0
    for i in range(data.test.shape[0]):
        for j, pixel in enumerate(torch.nonzero(missing).flatten().tolist()):
            y, p = float(truth[i, pixel]), float(probs[i, j])
            total -= y * math.log(p) + (1.0 - y) * math.log(1.0 - p)
    assert result.family_metrics["test_cll"] == pytest.approx(total / data.test.shape[0],
                                                              rel=1e-6)
    assert float(nn_cross_entropy(model, data.test).mean()) == pytest.approx(
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


# --------------------------------------------------------------------------- grey levels
def record_targets(monkeypatch) -> list[torch.Tensor]:
    """Every target tensor the cvae module's Bernoulli log-likelihood scores, in call order."""
    seen: list[torch.Tensor] = []
    real = cvae_module.bernoulli_log_prob

    def spy(logits, target):
        seen.append(target.detach().clone())
        return real(logits, target)

    monkeypatch.setattr(cvae_module, "bernoulli_log_prob", spy)
    return seen


def same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same rows in some order."""
    key = torch.randn(a.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sort = lambda t: t[torch.argsort(t.double() @ key)]
    return a.shape == b.shape and torch.equal(sort(a), sort(b))


@pytest.mark.parametrize("model", ["conditional_nn", "cvae"])
def test_grey_targets_reach_the_training_loss_unbinarized(model, monkeypatch):
    cfg = small(model=model, condition="quadrants", given_quadrants=2, binarize=False,
                train_size=300, batch_size=100)
    data = load_data(cfg)
    assert not data.binarized
    targets = record_targets(monkeypatch)
    fit(cfg, data)
    _, missing = quadrant_masks((8, 8), 2)
    want = data.train[:, missing]  # the grey intensities of the hidden pixels
    assert bool(((want > 0) & (want < 1)).any())  # digits are grey: the check can fail
    # one epoch = 3 minibatches; a cvae's CVAE stage starts after its baseline's 2 epochs
    first_epochs = [targets[0:3]] + ([targets[6:9]] if model == "cvae" else [])
    assert len(targets) == 3 * cfg.epochs * len(first_epochs)
    for epoch in first_epochs:
        assert same_rows(torch.cat(epoch), want)  # every image once, exactly its intensities


def test_grey_level_metrics_are_finite_and_ordered(digits):
    cfg = small(model="cvae", condition="quadrants", given_quadrants=2, binarize=False)
    data = load_data(cfg)
    result = run(cfg, data)
    m = result.family_metrics
    assert all(math.isfinite(v) for v in m.values())
    # cross-entropies of soft targets: positive, the IS estimate still below the ELBO one
    assert 0 < m["test_cll_is"] <= m["test_cll"] and m["rate"] >= 0
    assert m["nn_test_cll"] > 0 and m["test_cll_marginal"] > 0
    truth = [torch.tensor(r["pixels"]) for r in result.samples if r["kind"] == "truth"]
    assert any(bool(((t > 0) & (t < 1)).any()) for t in truth)  # grey truths are shown
    # the same config on binarized digits scores other targets: other numbers
    assert run(cfg.replace(binarize=True), digits).family_metrics["test_cll"] != m["test_cll"]


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_follows_pyros_rule():
    # Pyro (examples/cvae baseline.py, cvae.py): improvement = strictly below the best; the
    # count of epochs without one resets on an improvement; stop when it reaches patience
    stopper = EarlyStopping(3)
    curve = [5.0, 4.0, 4.5, 3.9, 3.9, 4.0, 4.1, 3.0]
    improved = []
    for loss in curve:
        improved.append(stopper.update(loss))
        if stopper.stop:
            break
    assert improved == [True, True, False, True, False, False, False]  # an equal loss is no gain
    assert (stopper.epochs, stopper.best_epoch, stopper.best_loss) == (7, 4, 3.9)
    never = EarlyStopping(0)
    for loss in [1.0, 2.0, 3.0, 4.0, 5.0]:
        never.update(loss)
        assert not never.stop
    assert never.best_epoch == 1
    nan = EarlyStopping(2)
    for loss in [math.nan, math.nan]:
        assert not nan.update(loss)
    assert nan.stop and nan.best_epoch is None


def constructed_validation(monkeypatch, curve: list[float]) -> list[float]:
    """Make every validation evaluation return the next value of `curve` (the weights still
    train as usual); returns the list of values handed out."""
    values = iter(curve)
    given: list[float] = []

    def fake(loss, noise, x, y, *, binarized, seed, chunk=1000):
        given.append(next(values))
        return given[-1]

    monkeypatch.setattr(cvae_module, "validation_loss", fake)
    return given


CURVE = [5.0, 4.0, 4.5, 3.9, 3.9, 4.0, 4.1] + [3.0] * 20  # best epoch 4, stop after 7


def test_early_stopping_stops_at_the_pinned_epoch_and_keeps_the_best_weights(
        digits, monkeypatch):
    cfg = small(model="conditional_nn", condition="quadrants", given_quadrants=1, epochs=20,
                validation_size=60, patience=3)
    constructed_validation(monkeypatch, CURVE)
    stopped = run(cfg, digits)
    m = stopped.family_metrics
    assert (m["nn_epochs_run"], m["nn_best_epoch"], m["nn_valid_loss"]) == (7, 4, 3.9)
    assert len(stopped.curves) == 7 and stopped.metrics()["epochs_done"] == 7
    assert [r.valid_bound for r in stopped.curves] == [-v for v in CURVE[:7]]
    # the best epoch's weights: exactly the network trained for 4 epochs and kept
    four = run(cfg.replace(epochs=4, patience=0), digits)
    assert four.family_metrics["test_cll"] == m["test_cll"]
    assert four.samples == stopped.samples
    # ... not the last (7th) epoch's
    seven = run(cfg.replace(epochs=7, patience=0), digits)
    assert seven.family_metrics["test_cll"] != m["test_cll"]


def test_a_cvae_restores_each_stages_best_weights(digits, monkeypatch):
    cfg = small(model="cvae", condition="quadrants", given_quadrants=2, epochs=20,
                validation_size=60, patience=2)
    # baseline: best at 3, stops after 5; CVAE: best at 1, stops after 3
    constructed_validation(monkeypatch, [3.0, 2.0, 1.0, 1.5, 1.2] + [9.0, 9.5, 9.5] + [0.0] * 30)
    built, snapshots = [], []
    real_build = cvae_module.build
    monkeypatch.setattr(cvae_module, "build",
                        lambda *a: built.append(real_build(*a)) or built[-1])

    def snapshot(record, total):
        snapshots.append({k: v.clone() for k, v in built[0].state_dict().items()})

    result = run(cfg, digits, on_epoch=snapshot)
    m = result.family_metrics
    assert (m["nn_epochs_run"], m["nn_best_epoch"], m["cvae_epochs_run"],
            m["cvae_best_epoch"]) == (5, 3, 3, 1)
    assert len(snapshots) == len(result.curves) == 8
    final = built[0].state_dict()
    for name, value in final.items():  # baseline from epoch 3, the rest from epoch 5 + 1
        want = snapshots[3 - 1 if name.startswith("baseline.") else 5 + 1 - 1][name]
        assert torch.equal(value, want), name
    # the stored metrics are those of these weights, not of the last epoch's
    last = real_build(cfg, split_validation(cfg, digits).fit)
    last.load_state_dict(snapshots[-1])
    gen = lambda: cvae_module.make_generator(cfg.seed + cvae_module.EVAL_STREAM, "cpu")
    assert evaluate(last.eval(), cfg, digits, generator=gen())[0]["test_cll"] != m["test_cll"]
    best = real_build(cfg, split_validation(cfg, digits).fit)
    best.load_state_dict(final)
    again, _ = evaluate(best.eval(), cfg, digits, generator=gen())
    assert again["test_cll"] == m["test_cll"] and again["test_cll_is"] == m["test_cll_is"]


def test_real_validation_curve_obeys_the_stopping_rule(digits):
    cfg = small(model="conditional_nn", condition="quadrants", given_quadrants=3, epochs=60,
                lr=1e-2, hidden=((128, 128),), train_size=200, validation_size=100, patience=2,
                binarize=False)  # grey: no binarization noise, so the check below is exact
    data = load_data(cfg)
    result = run(cfg, data)
    m = result.family_metrics
    losses = [-r.valid_bound for r in result.curves]
    best = m["nn_best_epoch"]
    assert m["nn_epochs_run"] == len(losses) < 60  # 100 images overfit: it stops
    assert m["nn_epochs_run"] == best + 2 and losses[best - 1] == m["nn_valid_loss"]
    assert min(losses) == losses[best - 1] and all(v >= losses[best - 1] for v in losses[best:])
    # the validation loss is the exact cross-entropy of the kept network on the LAST 100
    model = fit(cfg, data).model
    assert float(nn_cross_entropy(model, data.train[-100:]).mean()) == pytest.approx(
        m["nn_valid_loss"], rel=1e-6)


@pytest.mark.parametrize("model", ["conditional_nn", "cvae", "label"])
def test_validation_images_are_never_trained_on(model, digits):
    kind = dict(model="cvae", condition="label") if model == "label" else dict(
        model=model, condition="quadrants", given_quadrants=1)
    cfg = small(**kind, train_size=None, validation_size=100, epochs=2)
    data = load_data(cfg)
    # the same training images, other held-out ones: training must not notice
    other = dataclasses.replace(data, train=torch.cat([data.train[:-100],
                                                        1.0 - data.train[-100:]]))
    a, b = run(cfg, data), run(cfg, other)
    assert [r.train_bound for r in a.curves] == [r.train_bound for r in b.curves]
    assert [r.valid_bound for r in a.curves] != [r.valid_bound for r in b.curves]
    strip = lambda m: {k: v for k, v in m.items()
                       if k not in MACHINE_METRICS and not k.endswith(("_valid_loss",
                                                                       "_best_epoch"))}
    assert strip(a.family_metrics) == strip(b.family_metrics) and a.samples == b.samples
    # ... and it does notice a change among the images it trains on
    moved = dataclasses.replace(data, train=torch.cat([1.0 - data.train[:1],
                                                        data.train[1:]]))
    assert [r.train_bound for r in run(cfg, moved).curves] != [r.train_bound for r in a.curves]


def test_validation_size_must_leave_training_images(digits):
    with pytest.raises(BenchError, match="validation_size"):
        split_validation(small(model="conditional_nn", condition="quadrants",
                               given_quadrants=1, validation_size=300), digits)


@pytest.mark.parametrize("binarize", [True, False])
def test_early_stopped_runs_repeat_bit_for_bit(binarize):
    cfg = small(model="cvae", condition="quadrants", given_quadrants=1, binarize=binarize,
                epochs=8, lr=1e-2, validation_size=80, patience=2)
    data = load_data(cfg)
    a, b = run(cfg, data), run(cfg, data)
    strip = lambda m: {k: v for k, v in m.items() if k not in MACHINE_METRICS}
    assert strip(a.metrics()) == strip(b.metrics())
    assert a.samples == b.samples
    assert [(r.train_bound, r.valid_bound) for r in a.curves] == [
        (r.train_bound, r.valid_bound) for r in b.curves]
    assert all(r.valid_bound is not None and math.isfinite(r.valid_bound) for r in a.curves)


def test_the_validation_estimate_uses_the_same_noise_every_epoch(digits, monkeypatch):
    # frozen weights (an optimiser that never steps): a validation loss drawing fresh noise
    # each epoch would move; one re-seeded for every evaluation cannot
    class Frozen(torch.optim.SGD):
        def step(self, closure=None):
            return None

    monkeypatch.setattr(cvae_module, "make_optimizer",
                        lambda params, cfg, fused=False: Frozen(list(params), lr=cfg.lr))
    cfg = small(model="cvae", condition="quadrants", given_quadrants=2, epochs=3,
                validation_size=100)
    result = run(cfg, digits)
    nn_curve = [r.valid_bound for r in result.curves[:3]]
    cvae_curve = [r.valid_bound for r in result.curves[3:]]
    assert len(set(nn_curve)) == 1 and len(set(cvae_curve)) == 1
    # it is a noisy estimator: another seed of the noise gives another value
    model = fit(cfg, digits).model
    x = split_validation(cfg, digits).valid
    loss = lambda xb, yb, eps: -model(xb, 1, eps=eps).log_weights.mean()
    noise = lambda batch, gen: cvae_module.draw_noise(model, batch, 1, gen)
    values = {cvae_module.validation_loss(loss, noise, x, None, binarized=True, seed=s)
              for s in (0, 0, 1)}
    assert len(values) == 2
