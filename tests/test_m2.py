"""bench.families.m2: the semi-supervised VAE M2 of Kingma et al. 2014 (digits, tiny models)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import config_from_dict
from bench.errors import BenchError
from bench.families import FamilyResult, train_model
from bench.families.m2 import (
    M2,
    N_CLASSES,
    balanced_labelled_subset,
    build_m2,
    mean_unlabelled_bound,
    semi_supervised_loss,
)
from bench.loop import load_data
from bench.metrics.catalog import MACHINE_METRICS

METRICS = {"test_error", "test_unlabelled_bound", "train_labelled_error", "eval_seconds"}


def tiny_model(n_data: int = 12, latent: int = 3, analytic_kl: bool = True) -> M2:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return M2(n_data, (7, 5), latent, analytic_kl=analytic_kl).double()


def binary_batch(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, d), 0.4, dtype=torch.float64), generator=g)


def digits_cfg(**overrides):
    values = dict(model="m2", dataset="digits", labelled=100, hidden=[[64]], latent=[8],
                  epochs=40, lr=3e-3, batch_size=100, k_eval=10, seed=0)
    return config_from_dict({**values, **overrides})


# --------------------------------------------------------------------------- the bounds
def test_unlabelled_bound_is_the_explicit_sum_over_classes_for_the_same_noise():
    model = tiny_model()
    x = binary_batch(6, 12)
    k = 3
    eps = torch.randn(k, N_CLASSES, 6, 3, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)
    batched = model.unlabelled_bound(x, eps=eps)
    q = torch.softmax(model.classify(x), dim=-1)  # (B, classes)
    explicit = torch.zeros(6, dtype=torch.float64)
    for y in range(N_CLASSES):
        labels = torch.full((6,), y, dtype=torch.int64)
        explicit += q[:, y] * model.labelled_bound(x, labels, eps=eps[:, y])
    explicit += -(q * q.log()).sum(-1)  # the entropy H(q(y|x))
    torch.testing.assert_close(batched, explicit, rtol=0, atol=1e-10)


def test_unlabelled_bound_is_at_most_log_sum_exp_with_equality_at_the_softmax_posterior():
    """Gibbs: sum_y q(y)(-L_y) + H(q) <= log sum_y exp(-L_y), tight iff q = softmax(-L)."""
    model = tiny_model()
    x = binary_batch(5, 12)
    eps = torch.randn(1, N_CLASSES, 5, 3, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64)
    per_class = torch.stack([
        model.labelled_bound(x, torch.full((5,), y), eps=eps[:, y]) for y in range(N_CLASSES)
    ], dim=-1)  # (B, classes)
    best = torch.logsumexp(per_class, dim=-1)
    assert (model.unlabelled_bound(x, eps=eps) < best - 1e-6).all()
    torch.testing.assert_close(model.unlabelled_bound(x, eps=eps, logits=per_class), best,
                               rtol=0, atol=1e-10)


def test_labelled_bound_with_analytic_kl_matches_the_monte_carlo_definition():
    """-L = E_q[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]: the closed-form KL and the
    Monte Carlo form with the same many samples agree (same terms, incl. log p(y) = -log 10)."""
    analytic, mc = tiny_model(), tiny_model(analytic_kl=False)
    x = binary_batch(4, 12)
    y = torch.tensor([0, 3, 7, 9])
    eps = torch.randn(40_000, 4, 3, generator=torch.Generator().manual_seed(4),
                      dtype=torch.float64)
    a, m = analytic.labelled_bound(x, y, eps=eps), mc.labelled_bound(x, y, eps=eps)
    torch.testing.assert_close(a, m, rtol=0, atol=0.03)
    # and log p(y) is in it: with a decoder that ignores everything the bound is known exactly
    for module in (analytic.decoder_out, analytic.decoder_in, analytic.encoder_out):
        for p in module.parameters():
            torch.nn.init.zeros_(p)
    # q(z|x,y) = N(0, I) -> KL = 0; logits 0 -> log p(x|y,z) = D log 1/2
    expected = 12 * math.log(0.5) - math.log(N_CLASSES)
    torch.testing.assert_close(analytic.labelled_bound(x, y, eps=eps[:5]),
                               torch.full((4,), expected, dtype=torch.float64))


# --------------------------------------------------------------------------- the objective
def test_classification_term_has_weight_alpha_times_n_on_the_labelled_mean():
    """n_total * loss = J^alpha estimate; alpha only adds alpha * N * mean_l[-log q(y|x)]."""
    model = tiny_model()
    x_u, x_l = binary_batch(8, 12, seed=5), binary_batch(4, 12, seed=6)
    y_l = torch.tensor([1, 2, 2, 8])
    n_total, n_lab, alpha = 500, 40, 0.1

    def loss(a: float):
        model.zero_grad()
        out = semi_supervised_loss(model, x_u, x_l, y_l, n_total=n_total, n_labelled=n_lab,
                                   alpha=a, generator=torch.Generator().manual_seed(7))
        (n_total * out.loss).backward()
        return out, [p.grad.clone() for p in model.classifier.parameters()]

    with_ce, grads_a = loss(alpha)
    without, grads_0 = loss(0.0)
    log_q = torch.log_softmax(model.classify(x_l), -1)[torch.arange(4), y_l]
    ce_mean = -log_q.mean()
    torch.testing.assert_close(n_total * (with_ce.loss - without.loss), alpha * n_total * ce_mean)
    model.zero_grad()
    (alpha * n_total * ce_mean).backward()
    for ga, g0, p in zip(grads_a, grads_0, model.classifier.parameters(), strict=True):
        torch.testing.assert_close(ga - g0, p.grad)


def test_loss_is_the_full_objective_over_n_when_the_batches_are_the_whole_sets():
    """With batch = data set: N * loss = sum_u U + sum_l L + alpha N / N_l sum_l -log q(y|x)."""
    model = tiny_model()
    x_u, x_l = binary_batch(30, 12, seed=8), binary_batch(10, 12, seed=9)
    y_l = torch.arange(10)
    alpha = 0.1
    out = semi_supervised_loss(model, x_u, x_l, y_l, n_total=30, n_labelled=10, alpha=alpha,
                               generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)  # the same noise: unlabelled batch first
    sum_u = -model.unlabelled_bound(x_u, generator=g).sum()
    sum_l = -model.labelled_bound(x_l, y_l, generator=g).sum()
    ce = -torch.log_softmax(model.classify(x_l), -1)[torch.arange(10), y_l]
    j_alpha = sum_u + sum_l + alpha * 30 / 10 * ce.sum()
    torch.testing.assert_close(30 * out.loss, j_alpha)


def test_mean_unlabelled_bound_combines_chunks_exactly():
    """Chunks over examples and over samples combine to the one-pass estimate."""
    model = tiny_model()
    x = binary_batch(9, 12, seed=12)
    one_pass = mean_unlabelled_bound(model, x, 6, generator=torch.Generator().manual_seed(1),
                                     rows_per_chunk=10**6)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)  # the same noise stream
        direct = float(model.unlabelled_bound(x, k=6, generator=g).mean())
        assert one_pass == pytest.approx(direct, abs=1e-10)
        # a decoder blind to z makes the bound noise-free: any chunking must then agree exactly
        model.decoder_in.linear.weight[:, : model.latent] = 0.0
    exact = mean_unlabelled_bound(model, x, 6, generator=torch.Generator().manual_seed(1),
                                  rows_per_chunk=10**6)
    for rows in (N_CLASSES * 2, N_CLASSES * 5, N_CLASSES * 6 * 4):  # 1 to 4 examples a pass
        chunked = mean_unlabelled_bound(model, x, 6, generator=torch.Generator().manual_seed(2),
                                        rows_per_chunk=rows)
        assert chunked == pytest.approx(exact, abs=1e-10)


# --------------------------------------------------------------------------- labelled subset
def test_labelled_subset_is_class_balanced_distinct_and_deterministic_per_seed():
    labels = load_data(digits_cfg()).train_labels
    pick = lambda seed, n=100: balanced_labelled_subset(  # noqa: E731
        labels, n, torch.Generator().manual_seed(seed))
    idx = pick(0)
    assert idx.dtype == torch.int64 and idx.numel() == 100
    assert idx.unique().numel() == 100
    assert torch.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert torch.equal(idx, pick(0))
    assert not torch.equal(idx, pick(1))
    assert torch.bincount(labels[pick(0, 1000)], minlength=10).tolist() == [100] * 10


def test_labelled_larger_than_a_class_is_a_bench_error_naming_labelled():
    labels = torch.tensor([c for c in range(10) for _ in range(5)] + [0] * 20)
    with pytest.raises(BenchError, match="'labelled' = 60 needs 6 examples of each class"):
        balanced_labelled_subset(labels, 60, torch.Generator().manual_seed(0))
    assert balanced_labelled_subset(labels, 50, torch.Generator().manual_seed(0)).numel() == 50
    cfg = digits_cfg(labelled=1500, epochs=1)  # 150 per class; digits has 135 of class 2
    with pytest.raises(BenchError, match="labelled"):
        train_model(cfg, load_data(cfg))


def test_two_stochastic_layers_are_refused():
    cfg = digits_cfg(hidden=[[8], [8]], latent=[4, 2], epochs=1)
    with pytest.raises(BenchError, match="one stochastic layer"):
        build_m2(cfg, 64)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(one_thread) -> FamilyResult:
    cfg = digits_cfg()
    return train_model(cfg, load_data(cfg))


def test_train_model_learns_a_classifier_from_100_labels(trained):
    metrics = trained.metrics()
    assert trained.status == "finished" and metrics["epochs_done"] == 40
    assert METRICS <= set(metrics)
    # chance is 90 %; 40 epochs of a 64-unit M2 on 100 labels of 1500 digits: 23-30 % (seeds 0-2)
    assert metrics["test_error"] < 45
    assert metrics["train_labelled_error"] < 30
    assert -60 < metrics["test_unlabelled_bound"] < -15  # nats per 8x8 digit
    bounds = [r.train_bound for r in trained.curves]
    assert bounds[-1] > bounds[0] + 5  # the objective improves


def test_samples_are_the_analogies(trained):
    kinds = list(dict.fromkeys(row["kind"] for row in trained.samples))
    assert kinds == ["test image"] + [f"y = {c}" for c in range(10)]
    assert len(trained.samples) == 11 * 10
    row = trained.samples[0]
    assert (row["height"], row["width"]) == (8, 8) and len(row["pixels"]) == 64
    assert all(0.0 <= v <= 1.0 for r in trained.samples for v in r["pixels"])
    # one z per column decoded under 10 classes gives 10 different images
    column = [r["pixels"] for r in trained.samples if r["index"] == 0 and r["kind"] != "test image"]
    assert len({tuple(p) for p in column}) == 10


def test_same_config_and_seed_give_identical_metrics():
    cfg = digits_cfg(epochs=2, train_size=400, test_size=50, labelled=50)
    before = torch.random.get_rng_state()
    runs = [train_model(cfg, load_data(cfg)) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    strip = lambda m: {k: v for k, v in m.items() if k not in MACHINE_METRICS}  # noqa: E731
    assert strip(runs[0].metrics()) == strip(runs[1].metrics())
    assert runs[0].samples == runs[1].samples
    other = train_model(cfg.replace(seed=1), load_data(cfg))
    assert strip(other.metrics()) != strip(runs[0].metrics())


def test_a_non_finite_loss_ends_the_run_as_diverged():
    cfg = digits_cfg(epochs=3, train_size=200, test_size=20, labelled=50, lr=1e30)
    result = train_model(cfg, load_data(cfg))
    assert result.status == "diverged" and result.diverged_epoch is not None
    assert len(result.curves) == result.diverged_epoch
    assert "test_error" not in result.metrics()


# --------------------------------------------------------------------------- alpha rule
def test_default_alpha_is_the_papers_0_1_in_every_budget_of_the_suite():
    from bench.suite import load_suite, resolve_suite_path

    assert digits_cfg().alpha == 0.1
    for budget in ("smoke", "cpu", "paper"):
        suite = load_suite(resolve_suite_path("semisupervised"), budget=budget)
        m2_runs = [v.config for v in suite.variants if v.config.model == "m2"]
        assert m2_runs and all(cfg.alpha == 0.1 for cfg in m2_runs), budget


def test_run_weights_the_classification_term_by_alpha_times_the_training_set_size(
    monkeypatch
):
    """The loss the trainer minimises is J^alpha / N_train: mean U of the unlabelled batch
    (weight 1), mean L of the labelled batch (weight N_l / N_train) and mean -log q(y|x) of the
    labelled batch (weight alpha = 0.1), so J^alpha's classification term is
    alpha * N_train * mean_l[-log q(y|x)] with N = the TRAINING SET size (450 here; not the
    50 labels, not a batch). Checked on every step of a real run."""
    import bench.families.m2 as m2

    real = m2.semi_supervised_loss
    n_train, n_lab = 450, 50
    steps = []

    def spy(model, x_u, x_l, y_l, **kwargs):
        out = real(model, x_u, x_l, y_l, **kwargs)
        assert kwargs["alpha"] == 0.1  # the default: the paper's alpha
        assert kwargs["n_total"] == n_train and kwargs["n_labelled"] == n_lab
        assert x_u.shape[0] in (100, 50) and x_l.shape[0] == n_lab  # B_l = min(100, N_l)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(model.classify(x_l), y_l)
        torch.testing.assert_close(out.classification, ce)
        torch.testing.assert_close(
            out.loss, out.unlabelled + n_lab / n_train * out.labelled + 0.1 * ce)
        steps.append(x_u.shape[0])
        return out

    monkeypatch.setattr(m2, "semi_supervised_loss", spy)
    cfg = digits_cfg(epochs=1, train_size=n_train, test_size=20, labelled=n_lab, k_eval=1)
    assert train_model(cfg, load_data(cfg)).status == "finished"
    assert steps == [100, 100, 100, 100, 50]  # ceil(450 / 100) steps, the last one short


# --------------------------------------------------------------------------- supervised only
def _spy_on_training(monkeypatch) -> dict:
    """Record, for the next run: the labelled subset drawn, the initial weights of q(y|x)
    handed to the optimiser, and the optimiser steps taken."""
    import bench.families.m2 as m2

    seen: dict = {"steps": 0}
    real_subset, real_make = m2.balanced_labelled_subset, m2.make_optimizer

    def subset(labels, n, generator):
        seen["subset"] = real_subset(labels, n, generator)
        return seen["subset"]

    def make(module, cfg, **kwargs):
        classifier = module.classifier if isinstance(module, M2) else module
        seen["initial"] = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
        seen["trained"] = set(map(id, module.parameters()))
        optimizer = real_make(module, cfg, **kwargs)
        step = optimizer.step

        def counted(*args, **kwargs):
            seen["steps"] += 1
            return step(*args, **kwargs)

        optimizer.step = counted
        return optimizer

    monkeypatch.setattr(m2, "balanced_labelled_subset", subset)
    monkeypatch.setattr(m2, "make_optimizer", make)
    return seen


def test_supervised_only_matches_m2_in_steps_labelled_subset_and_initial_weights(monkeypatch):
    cfg = digits_cfg(epochs=3, train_size=450, test_size=50, labelled=50)
    data = load_data(cfg)
    seen_m2 = _spy_on_training(monkeypatch)
    m2_result = train_model(cfg, data)
    monkeypatch.undo()  # the next spy wraps the real functions, not the first spy
    seen_sup = _spy_on_training(monkeypatch)
    sup = train_model(cfg.replace(model="classifier"), data)
    assert m2_result.status == sup.status == "finished"
    # one step per unlabelled minibatch of M2: 3 epochs x ceil(450 / 100) = 15, both
    assert seen_m2["steps"] == seen_sup["steps"] == 15
    assert m2_result.metrics()["train_steps"] == sup.metrics()["train_steps"] == 15
    assert len(sup.curves) == len(m2_result.curves) == 3
    # the same labelled images
    assert torch.equal(seen_m2["subset"], seen_sup["subset"])
    # q(y|x) starts from M2's initial weights, and only q(y|x) is trained
    assert seen_m2["initial"].keys() == seen_sup["initial"].keys()
    for key, value in seen_m2["initial"].items():
        assert torch.equal(value, seen_sup["initial"][key]), key
    model = build_m2(cfg, data.dim, data.pixel_mean)
    assert len(seen_sup["trained"]) == len(list(model.classifier.parameters()))
    # its metrics: M2's classifier scores, no generative ones, no analogies
    metrics = sup.metrics()
    assert {"test_error", "train_labelled_error", "train_steps"} <= set(metrics)
    assert "test_unlabelled_bound" not in metrics and sup.samples == []
    assert metrics["test_error"] != m2_result.metrics()["test_error"]


def test_supervised_only_learns_from_the_labels_and_is_deterministic():
    cfg = digits_cfg(model="classifier", epochs=20)
    data = load_data(cfg)
    a, b = train_model(cfg, data), train_model(cfg, data)
    strip = lambda m: {k: v for k, v in m.items() if k not in MACHINE_METRICS}  # noqa: E731
    assert strip(a.metrics()) == strip(b.metrics())
    assert a.metrics()["train_labelled_error"] < 10  # 100 labels, 300 steps: fits them
    assert a.metrics()["test_error"] < 45  # chance is 90 %
    assert a.curves[-1].train_bound > a.curves[0].train_bound  # -CE rises


def test_classifier_model_refuses_alpha():
    with pytest.raises(BenchError, match="alpha"):
        digits_cfg(model="classifier", alpha=0.5)
