"""Estimators checked against exact answers.

A linear-Gaussian latent model p(z) = N(0, I), p(x|z) = N(Wz + b, I) has
log p(x) = log N(x; b, W W^T + I) in closed form. With W = U diag(sigma) (orthonormal U) the
exact posterior is diagonal, N(diag(1/(1+sigma^2)) W^T (x - b), diag(1/(1+sigma^2))), and
linear in x, so the library's own model (no hidden layers, Gaussian decoder) represents it
exactly. Everything runs in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import RunConfig
from bench.metrics.likelihood import evaluate
from bench.models import build_model
from bench.models.lvm import Views
from bench.objectives import iwae_bound, kl_term, log_mean_exp, vae_bound

D, Z, N_TEST = 12, 4, 256


def exact_linear_gaussian(perturb: float = 0.0, seed: int = 0, d: int = D):
    """(model, x, exact log p(x)) with q set to the exact posterior, optionally perturbed;
    `d` observed dimensions."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, Z, generator=gen, dtype=torch.float64))
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    w = u * sigma  # (D, Z), W^T W = diag(sigma^2)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    post_var = 1.0 / (1.0 + sigma**2)

    cfg = RunConfig(dataset="digits", hidden=((),), latent=(Z,), likelihood="gaussian")
    model = build_model(cfg, d).double()
    head = model.encoders[0].net.head  # rows [:Z] give the mean, rows [Z:] the log-variance
    with torch.no_grad():
        model.decoder.net[0].weight.copy_(w)
        model.decoder.net[0].bias.copy_(b)
        head.weight[:Z].copy_(post_var[:, None] * w.T * (1 + perturb))
        head.bias[:Z].copy_(-(post_var[:, None] * w.T) @ b + perturb)
        head.weight[Z:].zero_()
        head.bias[Z:].copy_(torch.log(post_var) + perturb)

    x = torch.randn(N_TEST, Z, generator=gen, dtype=torch.float64) @ w.T + b
    x = x + torch.randn(N_TEST, d, generator=gen, dtype=torch.float64)
    cov = w @ w.T + torch.eye(d, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)
    return model, x, exact


@pytest.mark.parametrize("k", [1, 5, 100])
def test_iwae_with_exact_posterior_equals_log_px_for_every_k(k):
    model, x, exact = exact_linear_gaussian()
    sample = model(x, k, generator=torch.Generator().manual_seed(1))
    # every importance weight equals p(x) exactly when q is the true posterior
    torch.testing.assert_close(iwae_bound(sample), exact, atol=1e-9, rtol=0)
    metrics = evaluate(model, x, k_eval=k, generator=torch.Generator().manual_seed(2),
                       rows_per_chunk=7)
    assert metrics.test_ll == pytest.approx(float(exact.mean()), abs=1e-9)
    assert metrics.ess == pytest.approx(1.0, abs=1e-9)


def test_the_evaluator_is_exact_where_every_weight_underflows_exp():
    # Guards against: a log-sum-exp without the max shift. With 1000 dimensions every log
    # weight is about -1400, exp() of it is 0.0 even in float64, and the estimate is -inf.
    model, x, exact = exact_linear_gaussian(d=1000)
    assert float(exact.max()) < -800
    metrics = evaluate(model, x, k_eval=5, generator=torch.Generator().manual_seed(2),
                       rows_per_chunk=7)
    assert metrics.test_ll == pytest.approx(float(exact.mean()), abs=1e-8)


def test_elbo_rate_and_distortion_with_exact_posterior():
    # ELBO = log p(x) - KL(q || p(z|x)) = log p(x); its distortion part is a Monte Carlo mean
    model, x, exact = exact_linear_gaussian()
    metrics = evaluate(model, x, k_eval=5000, generator=torch.Generator().manual_seed(2))
    assert metrics.test_elbo == pytest.approx(float(exact.mean()), abs=0.02)
    assert metrics.test_elbo == pytest.approx(-(metrics.rate + metrics.distortion), abs=1e-9)
    assert metrics.active_units == Z  # every unit's posterior mean varies with x


def test_perturbed_posterior_bound_grows_with_k_and_converges():
    model, x, exact = exact_linear_gaussian(perturb=0.3)
    exact_mean = float(exact.mean())
    estimates = [
        evaluate(model, x, k_eval=k, generator=torch.Generator().manual_seed(k)).test_ll
        for k in (1, 10, 100, 5000)
    ]
    # E[IWAE_k] rises with k; beyond k=100 the steps are below the Monte Carlo noise
    assert estimates[0] < estimates[1] < estimates[2], estimates
    gap_k1 = exact_mean - estimates[0]
    assert gap_k1 > 0.1  # the perturbation is large enough to matter
    assert abs(estimates[-1] - exact_mean) < 0.05
    assert estimates[-1] <= exact_mean + 1e-3  # a lower bound in expectation


def test_chunked_evaluation_agrees_with_one_chunk():
    # a mistake in combining chunks (a lost log k, a dropped chunk) would cost nats, not 0.05
    model, x, exact = exact_linear_gaussian(perturb=0.3)
    one = evaluate(model, x, k_eval=2000, generator=torch.Generator().manual_seed(0))
    many = evaluate(model, x, k_eval=2000, generator=torch.Generator().manual_seed(0),
                    rows_per_chunk=333)  # chunks of 1 example x 333 samples: 2000 = 6*333 + 2
    for metrics in (one, many):
        assert abs(metrics.test_ll - float(exact.mean())) < 0.05
    assert abs(one.rate - many.rate) < 1e-9  # analytic KL: independent of the samples
    assert abs(one.distortion - many.distortion) < 0.05


@pytest.mark.parametrize("two_layers", [False, True], ids=["1-layer", "2-layer"])
def test_slicing_chunks_into_passes_leaves_the_estimate_unchanged(two_layers):
    # Guards against: a pass drawing its own noise instead of its slice of the chunk's (the
    # estimate would move by Monte Carlo noise, ~0.01 nats here), a slice lost or counted
    # twice, a last short slice mishandled, and posterior means weighted by the wrong count
    # (active units, per layer).
    if two_layers:
        cfg = RunConfig(dataset="digits", hidden=((16,), (8,)), latent=(4, 3))
        model = build_model(cfg, 64).double()
        x = torch.bernoulli(torch.full((70, 64), 0.3, dtype=torch.float64),
                            generator=torch.Generator().manual_seed(3))
    else:
        model, x, _ = exact_linear_gaussian(perturb=0.3)
    # 1000 samples: chunks of 32 examples; passes of 31 samples (1000 = 32 * 31 + 8)
    whole = evaluate(model, x, 1000, generator=torch.Generator().manual_seed(0),
                     rows_per_pass=10**9)
    sliced = evaluate(model, x, 1000, generator=torch.Generator().manual_seed(0),
                      rows_per_pass=999)
    for key in ("test_ll", "test_elbo", "rate", "distortion", "ess"):
        assert getattr(sliced, key) == pytest.approx(getattr(whole, key), rel=1e-12), key
    assert sliced.active_units_by_layer == whole.active_units_by_layer
    # every unit of these models is active: a mean weighted by the wrong count (the first
    # layer's one mean per example taken as k) scales their spread under the threshold
    assert whole.active_units_by_layer == ([4, 3] if two_layers else [4])


def test_analytic_kl_matches_monte_carlo():
    model, x, _ = exact_linear_gaussian(perturb=0.3)
    with torch.no_grad():
        sample = model(x, 20000, generator=torch.Generator().manual_seed(3))
    mc_terms = sample.log_qz - sample.log_pz  # (k, B)
    mc = mc_terms.mean(0)
    stderr = mc_terms.std(0) / math.sqrt(mc_terms.shape[0])
    assert torch.all((mc - sample.kl_analytic).abs() < 5 * stderr + 1e-6)
    assert torch.equal(kl_term(sample, analytic=True), sample.kl_analytic)
    assert torch.equal(kl_term(sample, analytic=False), mc)


def test_log_mean_exp_is_stable_and_exact():
    log_w = torch.tensor([[-1e4, -1e4 + math.log(3)]], dtype=torch.float64).T  # (k=2, B=1)
    expected = -1e4 + math.log(2.0)  # log((e^a + 3 e^a) / 2)
    assert float(log_mean_exp(log_w)) == pytest.approx(expected, abs=1e-9)
    big = torch.full((5, 3), 800.0)
    assert torch.allclose(log_mean_exp(big), torch.full((3,), 800.0))


# ---- contract checks over every model shape the library builds -------------------------
MODEL_SHAPES = {
    "1-layer bernoulli": dict(hidden=((16, 16),), latent=(4,), likelihood="bernoulli"),
    "1-layer gaussian": dict(hidden=((16,),), latent=(3,), likelihood="gaussian"),
    "2-layer bernoulli": dict(hidden=((16, 16), (8, 8)), latent=(6, 3), likelihood="bernoulli"),
}


@pytest.fixture(params=sorted(MODEL_SHAPES))
def model_and_data(request):
    cfg = RunConfig(**MODEL_SHAPES[request.param])
    model = build_model(cfg, 10, seed=0).double()
    x = torch.bernoulli(torch.full((256, 10), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(0))
    return model, x


def test_iwae_k1_equals_elbo_on_the_same_samples(model_and_data):
    model, x = model_and_data
    sample = model(x, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(iwae_bound(sample), vae_bound(sample, analytic_kl=False))


def test_iwae_is_at_least_the_mean_elbo_on_the_same_samples(model_and_data):
    model, x = model_and_data
    sample = model(x, 50, generator=torch.Generator().manual_seed(0))
    assert torch.all(iwae_bound(sample) >= vae_bound(sample, analytic_kl=False) - 1e-12)
    assert sample.log_weights.shape == (50, 256)


def test_bound_does_not_fall_as_k_grows(model_and_data):
    model, x = model_and_data
    values = [evaluate(model, x, k_eval=k, generator=torch.Generator().manual_seed(k)).test_ll
              for k in (1, 30, 1000)]
    assert values[0] < values[1] < values[2], values


def test_beta_weights_only_the_kl(model_and_data):
    model, x = model_and_data
    sample = model(x, 3, generator=torch.Generator().manual_seed(0))
    recon = sample.log_px_given_z.mean(0)
    torch.testing.assert_close(vae_bound(sample, beta=0.0), recon)
    kl = kl_term(sample)
    torch.testing.assert_close(vae_bound(sample, beta=4.0), recon - 4.0 * kl)


def test_forward_kl_gradients_are_the_wake_phi_update_and_the_decoder_iwae_gradient():
    """With detached samples, q's gradient is sum_i w_i grad log q(z_i|x) (weights held
    fixed) and the decoder's is the IWAE gradient at the same samples."""
    from bench.objectives import forward_kl_iwae_bound

    cfg = RunConfig(hidden=((8,),), latent=(3,), objective="iwae", k=7, kl_direction="forward")
    model = build_model(cfg, 10, seed=0).double()
    x = torch.bernoulli(torch.full((5, 10), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(0))
    sample = model(x, 7, generator=torch.Generator().manual_seed(1), views=Views(detach=True))
    assert not sample.z[0].requires_grad
    bound = forward_kl_iwae_bound(sample)
    torch.testing.assert_close(bound, iwae_bound(sample))  # the value is the IWAE bound
    bound.sum().backward()
    got = [p.grad.clone() for p in model.encoders[0].parameters()]
    decoder_grad = [p.grad.clone() for p in model.decoder.parameters()]

    model.zero_grad()
    z = sample.z[0]
    mean, logvar, _ = model.encoders[0].net.params(x)
    from bench.models.posteriors import gaussian_log_prob
    log_q = gaussian_log_prob(z, mean, logvar)  # (k, B) at the fixed samples
    weights = torch.softmax(sample.log_weights.detach(), 0)
    (weights * log_q).sum().backward()
    for a, b in zip(got, [p.grad for p in model.encoders[0].parameters()], strict=True):
        torch.testing.assert_close(a, b)

    model.zero_grad()
    log_px = model.decoder.log_prob(x, z)
    log_mean_exp(log_px + sample.log_pz.detach() - sample.log_qz.detach()).sum().backward()
    for a, b in zip(decoder_grad, [p.grad for p in model.decoder.parameters()], strict=True):
        torch.testing.assert_close(a, b)
