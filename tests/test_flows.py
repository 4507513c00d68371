"""Flow posteriors checked against autograd and against the posterior contract.

Every analytic log|det J| (one step, and K steps composed) is compared with the log|det| of
the autograd Jacobian; the invertibility constraints are checked on raw parameters of any
magnitude; and every family in POSTERIORS goes through the real model and estimators.
Everything runs in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from bench.components import POSTERIORS
from bench.metrics.likelihood import evaluate
from bench.models.flows import (
    IAFPosterior,
    PlanarPosterior,
    RadialPosterior,
    planar_reparam,
    planar_step,
    radial_params,
    radial_step,
)
from bench.models.lvm import LatentVariableModel
from bench.models.posteriors import gaussian_log_prob
from bench.objectives import iwae_bound, kl_term, vae_bound

F64 = torch.float64
FLOWS = {"planar": PlanarPosterior, "radial": RadialPosterior, "iaf": IAFPosterior}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def autograd_logdet(f, z: torch.Tensor) -> torch.Tensor:
    """log|det df/dz| from the autograd Jacobian; asserts the determinant is positive."""
    sign, logabs = torch.linalg.slogdet(jacobian(f, z))
    assert sign > 0, "a flow step must preserve orientation (det J > 0)"
    return logabs


def assert_logdet_close(analytic: torch.Tensor, reference: torch.Tensor) -> None:
    analytic, reference = float(analytic.detach()), float(reference.detach())
    assert abs(analytic - reference) <= 1e-8 * max(1.0, abs(reference)), (analytic, reference)


# ---- planar ------------------------------------------------------------------------------
# (scale of u, scale of w, bias of w^T u): ordinary, large, and w^T u driven far negative
PLANAR_CASES = [
    (1.0, 1.0, 0.0),
    (10.0, 0.1, 0.0),
    (0.1, 10.0, 0.0),
    (5.0, 3.0, -40.0),
    (50.0, 1.0, 0.0),
    (1.0, 1.0, 40.0),
]


def planar_raw(seed: int, d: int, u_scale: float, w_scale: float, shift: float):
    g = gen(seed)
    u = randn(d, g=g, scale=u_scale)
    w = randn(d, g=g, scale=w_scale)
    u = u + shift * w / (w @ w)  # moves w^T u by `shift`
    b = randn(1, g=g)
    return u, w, b


@pytest.mark.parametrize("case", PLANAR_CASES)
@pytest.mark.parametrize("seed", range(4))
def test_planar_logdet_matches_autograd(case, seed):
    d = 5
    u, w, b = planar_raw(seed, d, *case)
    z = randn(d, g=gen(100 + seed), scale=0.5)
    _, log_det = planar_step(z, u, w, b)
    assert_logdet_close(log_det, autograd_logdet(lambda v: planar_step(v, u, w, b)[0], z))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6, 1e8])
def test_planar_constraint_holds_for_any_raw_parameters(scale):
    g = gen(int(math.log10(scale) + 10))
    d, n = 6, 2000
    u = randn(n, d, g=g, scale=scale) * torch.rand(n, 1, generator=g, dtype=F64)
    w = randn(n, d, g=g, scale=scale) * torch.rand(n, 1, generator=g, dtype=F64)
    u_hat, w_eff, one_plus_wu = planar_reparam(u, w)
    # the determinant uses 1 + w^T u_hat = softplus(w^T u) >= 0 analytically ...
    assert torch.all(one_plus_wu >= 0) and torch.all(torch.isfinite(u_hat))
    # ... and the computed u_hat satisfies it up to the rounding of a dot product
    wu_hat = (w_eff * u_hat).sum(-1)
    rounding = 1e-12 * (1.0 + w.norm(dim=-1) * u.norm(dim=-1))
    assert torch.all(wu_hat >= -1.0 - rounding)
    assert torch.all((wu_hat - (one_plus_wu - 1.0)).abs() <= rounding)
    # hence 1 + u_hat^T psi > 0 at random z: a finite log-determinant
    z = randn(n, d, g=g)
    b = randn(n, 1, g=g, scale=scale)
    _, log_det = planar_step(z, u, w, b)
    assert torch.all(torch.isfinite(log_det))


def test_planar_zero_w_is_a_translation():
    u, w, b = (
        torch.tensor([1.0, -2.0], dtype=F64),
        torch.zeros(2, dtype=F64),
        torch.ones(1, dtype=F64),
    )
    z = torch.tensor([0.3, 0.4], dtype=F64)
    z_new, log_det = planar_step(z, u, w, b)
    torch.testing.assert_close(z_new, z + u * math.tanh(1.0))
    assert float(log_det) == 0.0


# ---- radial ------------------------------------------------------------------------------
# (scale of the raw alpha, raw beta offset): beta near -alpha, near 0, large, alpha tiny/huge
RADIAL_CASES = [(1.0, 0.0), (1.0, -30.0), (1.0, 5.0), (5.0, 0.0), (0.1, -5.0)]


@pytest.mark.parametrize("case", RADIAL_CASES)
@pytest.mark.parametrize("seed", range(4))
def test_radial_logdet_matches_autograd(case, seed):
    scale, beta_shift = case
    d = 5
    g = gen(seed)
    z_ref = randn(d, g=g)
    alpha_raw = randn(1, g=g, scale=scale)
    beta_raw = randn(1, g=g) + beta_shift
    z = z_ref + randn(d, g=g, scale=0.3 * (seed + 1))
    _, log_det = radial_step(z, z_ref, alpha_raw, beta_raw)
    f = lambda v: radial_step(v, z_ref, alpha_raw, beta_raw)[0]
    assert_logdet_close(log_det, autograd_logdet(f, z))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6])
def test_radial_constraint_holds_for_any_raw_parameters(scale):
    g = gen(int(math.log10(scale) + 20))
    n, d = 2000, 4
    alpha_raw, beta_raw = randn(n, 1, g=g, scale=scale), randn(n, 1, g=g, scale=scale)
    alpha, beta = radial_params(alpha_raw, beta_raw)
    assert torch.all(alpha >= 0) and torch.all(beta >= -alpha)
    z_ref = randn(n, d, g=g)
    z = z_ref + randn(n, d, g=g)
    _, log_det = radial_step(z, z_ref, alpha_raw.clamp(-30, 700), beta_raw.clamp(-700, 700))
    assert torch.all(torch.isfinite(log_det))


# ---- IAF ---------------------------------------------------------------------------------
def iaf_posterior(d: int = 5, steps: int = 3, seed: int = 0) -> IAFPosterior:
    torch.manual_seed(seed)
    post = IAFPosterior(6, (8,), d, steps).double()
    with torch.no_grad():  # larger weights than the init: a clearly non-trivial Jacobian
        for p in post.made_steps.parameters():
            p.mul_(3.0)
    return post


@pytest.mark.parametrize("seed", range(3))
def test_iaf_step_logdet_matches_autograd_and_is_triangular(seed):
    d = 5
    post = iaf_posterior(d, steps=3, seed=seed)
    h = randn(6, g=gen(seed))
    z = randn(d, g=gen(50 + seed))
    orders = [step.order for step in post.made_steps]
    for i, (step, order) in enumerate(zip(post.steps_for(h), orders, strict=True)):
        expected = torch.arange(d) if i % 2 == 0 else torch.arange(d).flip(0)
        assert torch.equal(order, expected)  # the order is reversed between steps
        z_new, log_det = step(z)
        jac = jacobian(lambda v, step=step: step(v)[0], z)
        assert_logdet_close(log_det, autograd_logdet(lambda v, step=step: step(v)[0], z))
        permuted = jac[order][:, order]  # rows and columns in this step's order
        assert torch.all(permuted.triu(1) == 0), f"step {i} is not autoregressive in its order"
        assert permuted.tril(-1).abs().max() > 1e-3  # and not merely diagonal
        # in the plain index order: lower triangular for even steps, upper for odd ones
        assert torch.all((jac.triu(1) if i % 2 == 0 else jac.tril(-1)) == 0)
        z = z_new


def test_iaf_first_dimension_depends_on_the_context():
    post = iaf_posterior(d=3, steps=1)
    step_a, step_b = post.steps_for(randn(6, g=gen(1)))[0], post.steps_for(randn(6, g=gen(2)))[0]
    z = randn(3, g=gen(3))
    out_a, out_b = step_a(z)[0], step_b(z)[0]
    assert torch.all((out_a - out_b).abs() > 1e-6)  # incl. the first dimension in the order


def test_iaf_one_dimensional_latent():
    post = IAFPosterior(4, (8,), 1, 2).double()
    sample = post(randn(3, 4, g=gen(0)), 5, generator=gen(1))
    assert sample.z.shape == (5, 3, 1) and torch.all(torch.isfinite(sample.log_q))


# ---- all flows: K steps composed -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FLOWS))
@pytest.mark.parametrize("seed", range(3))
def test_composed_flow_logdet_matches_autograd(name, seed):
    torch.manual_seed(seed)
    post = FLOWS[name](6, (8,), 4, 4).double()
    h = randn(6, g=gen(seed))
    steps = post.steps_for(h)

    def flow(z):
        total = z.new_zeros(())
        for step in steps:
            z, log_det = step(z)
            total = total + log_det
        return z, total

    z0 = randn(4, g=gen(10 + seed))
    _, log_det = flow(z0)
    assert_logdet_close(log_det, autograd_logdet(lambda v: flow(v)[0], z0))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_forward_log_q_is_base_density_minus_the_step_logdets(name):
    """The batched forward pass agrees with q0 and the per-example steps of `steps_for`."""
    torch.manual_seed(0)
    post = FLOWS[name](6, (8,), 3, 3).double()
    x = randn(4, 6, g=gen(0))
    k = 5
    sample = post(x, k, generator=gen(1))
    eps = torch.randn((k, 4, 3), generator=gen(1), dtype=F64)  # the same noise
    mean, logvar = post.base_params(x)
    for b in range(4):
        z = mean[b] + torch.exp(0.5 * logvar[b]) * eps[:, b]  # (k, d)
        log_q = gaussian_log_prob(z, mean[b], logvar[b])
        for step in post.steps_for(x[b]):
            z, log_det = step(z)
            log_q = log_q - log_det
        torch.testing.assert_close(sample.z[:, b], z)
        torch.testing.assert_close(sample.log_q[:, b], log_q)
    assert sample.kl_standard_normal is None
    assert torch.equal(sample.mean, sample.z)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_stacked_input_matches_k_samples_per_row(name):
    """h already (k, B, n_in) with k=None draws one sample per row, the same as k per row."""
    torch.manual_seed(0)
    post = FLOWS[name](6, (8,), 3, 2).double()
    x = randn(4, 6, g=gen(0))
    per_row = post(x, 7, generator=gen(1))
    stacked = post(x.expand(7, 4, 6), None, generator=gen(1))
    torch.testing.assert_close(stacked.z, per_row.z)
    torch.testing.assert_close(stacked.log_q, per_row.log_q)


def test_flows_survive_huge_head_weights():
    torch.manual_seed(0)
    for cls in (PlanarPosterior, RadialPosterior):
        post = cls(6, (8,), 3, 4).double()
        with torch.no_grad():
            post.flow_head.weight.mul_(1e4)
            post.flow_head.bias.mul_(1e4)
        sample = post(randn(16, 6, g=gen(0)), 8, generator=gen(1))
        assert torch.all(torch.isfinite(sample.log_q)), cls.__name__


# ---- identity cases: change of variables with a known answer -------------------------------
def test_planar_with_u_hat_zero_is_the_identity():
    torch.manual_seed(0)
    d, steps = 2, 3
    post = PlanarPosterior(5, (8,), d, steps).double()
    g = gen(0)
    raw = []
    for _ in range(steps):
        w = randn(d, g=g)
        u = math.log(math.e - 1.0) * w / (w @ w)  # w^T u = softplus^-1(1): m(w^T u) = 0
        raw.append(torch.cat([u, w, randn(1, g=g)]))
    with torch.no_grad():
        post.flow_head.weight.zero_()
        post.flow_head.bias.copy_(torch.cat(raw))
    u_hat, _, _ = planar_reparam(raw[0][:d], raw[0][d : 2 * d])
    assert u_hat.abs().max() < 1e-12
    x = randn(10, 5, g=gen(1))
    sample = post(x, 6, generator=gen(2))
    mean, logvar = post.base_params(x)
    eps = torch.randn((6, 10, d), generator=gen(2), dtype=F64)
    z0 = mean + torch.exp(0.5 * logvar) * eps
    torch.testing.assert_close(sample.z, z0, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        sample.log_q, gaussian_log_prob(z0, mean, logvar), atol=1e-12, rtol=0
    )


def test_radial_with_beta_zero_is_the_identity():
    torch.manual_seed(0)
    d = 2
    post = RadialPosterior(5, (8,), d, 1).double()
    with torch.no_grad():
        post.flow_head.weight.zero_()
        post.flow_head.bias.copy_(torch.tensor([0.3, -0.2, 0.7, 0.7], dtype=F64))  # beta = 0
    alpha, beta = radial_params(torch.tensor(0.7), torch.tensor(0.7))
    assert float(beta) == 0.0 and float(alpha) > 0
    x = randn(10, 5, g=gen(1))
    sample = post(x, 6, generator=gen(2))
    mean, logvar = post.base_params(x)
    eps = torch.randn((6, 10, d), generator=gen(2), dtype=F64)
    z0 = mean + torch.exp(0.5 * logvar) * eps
    torch.testing.assert_close(sample.z, z0, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        sample.log_q, gaussian_log_prob(z0, mean, logvar), atol=1e-12, rtol=0
    )


# ---- the posterior contract, through the real model ----------------------------------------
def make_model(name: str, decoder_gain: float = 1.0) -> LatentVariableModel:
    torch.manual_seed(0)
    model = LatentVariableModel(
        n_data=10,
        hidden=((16,),),
        latent=(4,),
        likelihood="bernoulli",
        posterior=name,
        flow_steps=0 if name == "gaussian" else 3,
    ).double()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(decoder_gain)
    return model


def binary_data(n: int = 256) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 10), 0.4, dtype=F64), generator=gen(0))


def test_registry_lists_every_flow():
    assert POSTERIORS.names() == ("gaussian", "planar", "radial", "iaf")
    assert [p.name for p in POSTERIORS if p.flow] == ["planar", "radial", "iaf"]


@pytest.mark.parametrize("name", sorted(POSTERIORS.names()))
def test_contract_shapes_and_k1_bound(name):
    model, x = make_model(name), binary_data()
    sample = model(x, 7, generator=gen(0))
    assert sample.z[0].shape == (7, 256, 4)
    assert sample.log_qz.shape == sample.log_pz.shape == sample.log_px_given_z.shape == (7, 256)
    assert torch.all(torch.isfinite(sample.log_qz))
    one = model(x, 1, generator=gen(1))
    torch.testing.assert_close(iwae_bound(one), vae_bound(one, analytic_kl=False))
    if name != "gaussian":  # no closed form: the KL is always the Monte Carlo estimate
        assert sample.kl_analytic is None
        assert torch.equal(kl_term(sample, analytic=True), kl_term(sample, analytic=False))


@pytest.mark.parametrize("name", sorted(POSTERIORS.names()))
def test_contract_bound_does_not_fall_as_k_grows(name):
    # At the default init p(x|z) barely depends on z: q is already close to the posterior and
    # the k=30 -> 1000 step (~0.005 nats) drowns in the Monte Carlo noise. A 5x decoder gain
    # makes the posterior sharp, so each step gains tenths of a nat, far above the noise.
    model, x = make_model(name, decoder_gain=5.0), binary_data()
    values = [evaluate(model, x, k_eval=k, generator=gen(k)).test_ll for k in (1, 30, 1000)]
    assert values[0] < values[1] < values[2], values


@pytest.mark.parametrize("name", sorted(POSTERIORS.names()))
def test_contract_gradients_reach_the_flow_parameters(name):
    model, x = make_model(name), binary_data(32)
    loss = -iwae_bound(model(x, 5, generator=gen(0))).mean()
    loss.backward()
    encoder = model.encoders[0]
    heads = {
        "gaussian": ["net.head"],
        "planar": ["flow_head"],
        "radial": ["flow_head"],
        "iaf": ["context_head", "made_steps"],
    }[name]
    for prefix in heads:
        grads = [p.grad for n, p in encoder.named_parameters() if n.startswith(prefix)]
        assert grads and all(gr is not None for gr in grads), prefix
        assert all(gr.abs().sum() > 0 for gr in grads), prefix
