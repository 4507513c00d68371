"""The mixture of Bernoullis by EM (bench.families.mixture), checked against exact answers:
brute-force sums over z and over all binary x, EM's monotonicity, the tight bound at the exact
posterior, and the prior-IWAE estimator against the exact log p(x)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.config import RunConfig
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families import train_model
from bench.families.mixture import (
    PRIOR_IWAE_KS,
    Mixture,
    binarize_training_set,
    elbo,
    em_step,
    init_mixture,
    log_joint,
    log_likelihood,
    log_posterior,
    log_px_given_z,
    multinomial_counts,
    prior_iwae_estimate,
    run,
    statistics,
)
from bench.metrics.catalog import MACHINE_METRICS

F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def fitted(digits):
    """(mixture, binary training x, test x): K = 10 fitted by 30 EM iterations on digits."""
    gen = torch.Generator().manual_seed(0)
    x = binarize_training_set(digits.train, gen).to(F64)
    mixture = init_mixture(x, 10, gen)
    for _ in range(30):
        mixture, _ = em_step(x, mixture)
    return mixture, x, digits.test.to(F64)


def random_mixture(k: int, d: int, seed: int) -> Mixture:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, generator=gen, dtype=F64)
    mu = torch.rand(k, d, generator=gen, dtype=F64) * 0.9 + 0.05
    return Mixture(pi=torch.softmax(logits, 0), mu=mu)


def all_binary(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=F64)


# ------------------------------------------------------------------ exact log-likelihood
def test_log_likelihood_matches_a_brute_force_sum_over_z_and_pixels():
    mixture = random_mixture(2, 3, seed=1)
    xs = all_binary(3)
    got = log_likelihood(xs, mixture)
    for n, x in enumerate(xs.tolist()):
        total = 0.0
        for c in range(2):
            p = float(mixture.pi[c])
            for d in range(3):
                mu = float(mixture.mu[c, d])
                p *= mu if x[d] == 1.0 else 1.0 - mu
            total += p
        assert float(got[n]) == pytest.approx(math.log(total), rel=1e-12)


@pytest.mark.parametrize(("k", "d"), [(2, 3), (5, 8)])
def test_probabilities_of_all_binary_images_sum_to_one(k, d):
    mixture = random_mixture(k, d, seed=k + d)
    xs = all_binary(d)
    assert float(torch.logsumexp(log_likelihood(xs, mixture), 0)) == pytest.approx(0, abs=1e-12)
    # each component's p(x | c) is a distribution over x as well
    per_component = torch.logsumexp(log_px_given_z(xs, mixture), 0)
    assert torch.allclose(per_component, torch.zeros(k, dtype=F64), atol=1e-12)


def test_bound_at_the_exact_posterior_equals_log_px_and_is_lower_elsewhere(fitted):
    mixture, _, x_test = fitted
    exact = log_likelihood(x_test, mixture)
    posterior = torch.exp(log_posterior(x_test, mixture))
    assert torch.allclose(posterior.sum(1), torch.ones(len(x_test), dtype=F64), atol=1e-12)
    # the E-step makes KL(q || p(z|x)) = 0: the bound is log p(x) to rounding
    assert torch.allclose(elbo(x_test, mixture, posterior), exact, rtol=0, atol=1e-10)
    # any other q loses exactly KL(q || p(z|x)) > 0
    uniform = torch.full_like(posterior, 1.0 / mixture.components)
    gap = exact - elbo(x_test, mixture, uniform)
    kl = (uniform * (torch.log(uniform) - torch.log(posterior.clamp_min(1e-300)))).sum(1)
    assert bool((gap > 0).all())
    assert torch.allclose(gap, kl, rtol=1e-9)


# ------------------------------------------------------------------------------------ EM
@pytest.mark.parametrize("eps", [1e-4, 0.05])  # 0.05: the clip binds on most pixels
def test_em_never_decreases_the_training_log_likelihood(digits, eps):
    gen = torch.Generator().manual_seed(3)
    x = binarize_training_set(digits.train, gen).to(F64)
    mixture = init_mixture(x, 10, gen)
    history = []
    for _ in range(31):
        mixture, before = em_step(x, mixture, eps=eps)
        history.append(before)  # log p(x) of the mixture entering this iteration
        assert float(mixture.mu.min()) >= eps and float(mixture.mu.max()) <= 1 - eps
        assert float(mixture.pi.sum()) == pytest.approx(1.0, abs=1e-12)
    for before, after in itertools.pairwise(history):
        assert after >= before - 1e-9 * abs(before)
    assert history[-1] > history[0] + 1.0  # and it does learn


def test_a_component_with_zero_responsibility_keeps_its_mean(digits):
    x = binarize_training_set(digits.train, torch.Generator().manual_seed(0)).to(F64)
    mixture = init_mixture(x, 4, torch.Generator().manual_seed(1))
    pi = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=F64)  # components 2, 3 get no responsibility
    new, _ = em_step(x, Mixture(pi, mixture.mu))
    assert torch.equal(new.mu[2:], mixture.mu[2:])
    assert torch.equal(new.pi[2:], torch.zeros(2, dtype=F64))
    assert not torch.equal(new.mu[:2], mixture.mu[:2])
    assert torch.isfinite(log_likelihood(x, new)).all()


def test_the_m_step_is_the_weighted_mean_of_the_data(digits):
    x = binarize_training_set(digits.train, torch.Generator().manual_seed(0)).to(F64)[:200]
    mixture = init_mixture(x, 3, torch.Generator().manual_seed(2))
    resp = torch.exp(log_posterior(x, mixture))
    new, _ = em_step(x, mixture, eps=1e-4)
    assert torch.allclose(new.pi, resp.mean(0), rtol=1e-12)
    expected = ((resp.T @ x) / resp.sum(0, keepdim=True).T).clamp(1e-4, 1 - 1e-4)
    assert torch.allclose(new.mu, expected, rtol=1e-12)
    stats = statistics(x, mixture)  # chunked sufficient statistics = the direct ones
    assert float(stats.log_likelihood_sum) == pytest.approx(
        float(log_likelihood(x, mixture).sum()), rel=1e-13)


# ---------------------------------------------------------------------------- prior IWAE
def test_multinomial_counts_have_the_exact_multinomial_distribution():
    pi = torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=F64)  # a zero-mass component in between
    k, n = 4, 200_000
    counts = multinomial_counts(pi, k, n, torch.Generator().manual_seed(0))
    assert torch.equal(counts.sum(1), torch.full((n,), float(k), dtype=F64))
    assert bool((counts[:, 2] == 0).all())
    for vector in itertools.product(range(k + 1), repeat=4):
        if sum(vector) != k or vector[2] != 0:
            continue
        pmf = math.factorial(k) * math.prod(
            float(p) ** c / math.factorial(c) for p, c in zip(pi, vector, strict=True))
        freq = float((counts == torch.tensor(vector, dtype=F64)).all(1).double().mean())
        assert abs(freq - pmf) < 5 * math.sqrt(pmf * (1 - pmf) / n)


def explicit_prior_iwae(log_px_z: torch.Tensor, pi: torch.Tensor, k: int,
                        gen: torch.Generator) -> torch.Tensor:
    """The IWAE estimate from k separate draws z_i ~ pi per example."""
    n = log_px_z.shape[0]
    z = torch.multinomial(pi, n * k, replacement=True, generator=gen).view(n, k)
    return torch.logsumexp(log_px_z.gather(1, z), 1) - math.log(k)


@pytest.mark.parametrize("k", [1, 3, 20])
def test_counts_estimate_has_the_distribution_of_k_explicit_draws(fitted, k):
    mixture, _, x_test = fitted
    log_px_z = log_px_given_z(x_test[:4], mixture).repeat(20_000, 1)  # 4 images x 20000
    counts = prior_iwae_estimate(x_test, mixture, k, torch.Generator().manual_seed(1),
                                 log_px_z=log_px_z).view(20_000, 4)
    draws = explicit_prior_iwae(log_px_z, mixture.pi, k,
                                torch.Generator().manual_seed(2)).view(20_000, 4)
    for image in range(4):
        a, b = counts[:, image], draws[:, image]
        se = math.sqrt(float(a.var() + b.var()) / 20_000)
        assert float(a.mean()) == pytest.approx(float(b.mean()), abs=5 * se)
        assert float(a.std()) == pytest.approx(float(b.std()), rel=0.05)


def test_prior_iwae_converges_to_the_exact_log_likelihood_from_below(fitted):
    mixture, _, x_test = fitted
    exact = float(log_likelihood(x_test, mixture).mean())
    gen = torch.Generator().manual_seed(5)
    gaps = []
    for k in PRIOR_IWAE_KS:
        reps = [prior_iwae_estimate(x_test, mixture, k, gen) for _ in range(10)]
        estimates = torch.stack(reps)  # (10, N)
        mean = float(estimates.mean())
        se = float(estimates.mean(1).std()) / math.sqrt(10)
        assert mean <= exact + 4 * se + 1e-12  # a lower bound in expectation
        gaps.append(exact - mean)
    assert gaps[0] > 5.0  # one prior sample is a poor estimate ...
    assert all(later < earlier for earlier, later in itertools.pairwise(gaps[:4]))
    assert abs(gaps[-1]) < 2e-3  # ... 100000 of them recover log p(x)


# ------------------------------------------------------------------------ the family
def digits_config(**changes) -> RunConfig:
    return RunConfig(**{"dataset": "digits", "model": "mixture", "components": 10,
                        "iterations": 15, "seed": 0, **changes})


def test_train_model_finishes_with_every_metric_and_the_report_images(digits):
    cfg = digits_config()
    epochs = []
    result = train_model(cfg, digits, on_epoch=lambda r, total: epochs.append((r.epoch, total)))
    metrics = result.metrics()
    assert metrics["status"] == "finished"
    assert epochs == [(i, 15) for i in range(1, 16)]
    expected = {"test_ll", "train_ll", "eval_seconds",
                *(f"prior_iwae_k{k}" for k in PRIOR_IWAE_KS)}
    assert expected <= set(metrics)
    assert all(math.isfinite(metrics[name]) for name in expected)
    bounds = [r.train_bound for r in result.curves]
    assert all(b >= a - 1e-9 * abs(a) for a, b in itertools.pairwise(bounds))
    assert metrics["train_ll"] == bounds[-1] == metrics["final_train_bound"]
    assert -40 < metrics["test_ll"] < -15  # 64 binary pixels: far better than uniform (-44.4)
    assert metrics["prior_iwae_k1"] < metrics["prior_iwae_k100"] <= metrics["test_ll"] + 0.05
    assert metrics["prior_iwae_k100000"] == pytest.approx(metrics["test_ll"], abs=0.01)

    kinds = [s["kind"] for s in result.samples]
    assert kinds == ["component means"] * 10 + ["samples"] * 16
    means = [s for s in result.samples if s["kind"] == "component means"]
    assert all(s["height"] == 8 and s["width"] == 8 and len(s["pixels"]) == 64
               for s in result.samples)
    samples = sum((s["pixels"] for s in result.samples if s["kind"] == "samples"), [])
    assert set(samples) <= {0.0, 1.0}  # binary draws x ~ p(x), not means
    # sorted by pi: the first image is the mean of the heaviest component, as EM refit here
    heaviest = _refit_like_run(cfg, digits)
    assert means[0]["pixels"] == pytest.approx(heaviest.tolist(), abs=1e-6)


def _refit_like_run(cfg: RunConfig, dataset) -> torch.Tensor:
    """The heaviest component's mean, refit with the public EM functions as `run` does it."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = binarize_training_set(dataset.train, gen).to(F64)
    mixture = init_mixture(x, cfg.components, gen)
    for _ in range(cfg.iterations):
        mixture, _ = em_step(x, mixture)
    return mixture.mu[int(torch.argmax(mixture.pi))]


def test_same_config_and_seed_give_identical_metrics(digits):
    cfg = digits_config(seed=4)
    first, second = (train_model(cfg, digits) for _ in range(2))
    strip = lambda m: {k: v for k, v in m.items() if k not in MACHINE_METRICS}
    assert strip(first.metrics()) == strip(second.metrics())
    assert first.samples == second.samples
    other = train_model(digits_config(seed=5), digits).metrics()
    assert other["test_ll"] != first.metrics()["test_ll"]


def test_a_mixture_without_a_bernoulli_data_set_or_with_too_many_components_is_an_error():
    few = load_dataset("digits", train_size=20, test_size=10)
    with pytest.raises(BenchError, match="'components' = 21 exceeds the 20 training"):
        run(digits_config(components=21, train_size=20, test_size=10), few,
            device=torch.device("cpu"))
    continuous = load_dataset("digits", train_size=50, test_size=10, binarize=False)
    with pytest.raises(BenchError, match="needs binary data"):
        run(digits_config(train_size=50, test_size=10), continuous, device=torch.device("cpu"))


def test_log_joint_is_minus_infinity_for_a_component_without_mass():
    mixture = Mixture(torch.tensor([1.0, 0.0], dtype=F64),
                      torch.full((2, 3), 0.5, dtype=F64))
    joint = log_joint(all_binary(3), mixture)
    assert bool(torch.isneginf(joint[:, 1]).all())
    assert torch.allclose(log_likelihood(all_binary(3), mixture),
                          torch.full((8,), 3 * math.log(0.5), dtype=F64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_fit(digits):
    cfg = digits_config()
    cpu = train_model(cfg, digits, device="cpu").metrics()
    gpu = train_model(cfg, digits, device="cuda").metrics()
    # the same training bits and start (drawn on the CPU): only rounding differs
    assert gpu["train_ll"] == pytest.approx(cpu["train_ll"], rel=1e-9)
    assert gpu["test_ll"] == pytest.approx(cpu["test_ll"], rel=1e-9)
