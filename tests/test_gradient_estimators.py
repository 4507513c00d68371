"""The estimators after IWAE (issue 25): STL, DReG, RWS-DReG, MIWAE, CIWAE, PIWAE, the gradient
SNR metric and Rainforth et al.'s Gaussian toy, tested against exact answers: a conjugate
model whose q is the exact posterior, expectations over many draws with a tolerance from
their standard error, the written-out formulas per draw, and the toy's closed forms against
autograd through bench.objectives. Everything runs in float64 on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import RunConfig
from bench.errors import BenchError
from bench.families.lvm import train
from bench.loop import SNR_STREAM, load_data
from bench.metrics.loglog import fit_slope
from bench.metrics.snr import gradient_snr, parameters_by_part
from bench.models.lvm import LatentVariableModel, ModelSample, Views
from bench.objectives import (
    ciwae_bound,
    dreg_bound,
    iwae_bound,
    miwae_bound,
    objective_for,
    piwae_bound,
    rws_dreg_bound,
    stl_bound,
    vae_bound,
    views_for,
    wake_phi_surrogate,
)
from bench.toys import snr_gaussian as toy

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT = Views(stl=True, split=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encoder_grads(model: LatentVariableModel, value: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(value, list(model.encoders.parameters()), retain_graph=True)
    return torch.cat([g.reshape(-1) for g in grads])


def decoder_grads(model: LatentVariableModel, value: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(value, list(model.decoder.parameters()), retain_graph=True)
    return torch.cat([g.reshape(-1) for g in grads])


# ------------------------------------------------------------ q = the exact posterior
def conjugate_model(scales=(0.5, 1.5, 3.0), n_data: int = 5) -> LatentVariableModel:
    """p(z) = N(0, I), p(x|z) = N(W z + c, I) with W's columns orthogonal (W_ii = scales_i),
    and q(z|x) set to the exact posterior N(S W^T (x - c), S), S = (I + W^T W)^-1 diagonal."""
    d = len(scales)
    model = LatentVariableModel(n_data, hidden=((),), latent=(d,), likelihood="gaussian").double()
    w = torch.zeros(n_data, d, dtype=torch.float64)
    w[range(d), range(d)] = torch.tensor(scales, dtype=torch.float64)
    c = torch.linspace(-1, 1, n_data, dtype=torch.float64)
    cov = torch.diag(1.0 / (1.0 + (w * w).sum(0)))
    with torch.no_grad():
        decoder = model.decoder.net[0]
        decoder.weight.copy_(w)
        decoder.bias.copy_(c)
        head = model.encoders[0].net.head
        head.weight.zero_()
        head.weight[:d].copy_(cov @ w.T)
        head.bias[:d].copy_(-(cov @ w.T @ c))
        head.bias[d:].copy_(torch.log(torch.diagonal(cov)))
    return model


def test_at_the_exact_posterior_every_draw_of_stl_and_dreg_is_zero_and_iwaes_is_not():
    # Guards against: STL/DReG keeping log q's score term (q's parameters not stopped in
    # log_qz_stl), or the split view's path term reaching the encoder through anything but
    # z: at q = p(z|x), log w = log p(x) for every z, so the path derivative is zero on
    # every draw, while IWAE's gradient (with the score term) is zero only in expectation.
    model = conjugate_model()
    x = torch.randn(4, 5, generator=gen(0), dtype=torch.float64)
    for draw in range(5):
        for bound, views in ((stl_bound, Views(stl=True)), (dreg_bound, SPLIT)):
            sample = model(x, 6, generator=gen(draw), views=views)
            spread = sample.log_weights.detach().std(0).max()  # log w: the same for every z
            assert float(spread) < 1e-12
            assert float(encoder_grads(model, bound(sample).sum()).abs().max()) < 1e-12
        plain = model(x, 6, generator=gen(draw))
        assert float(encoder_grads(model, iwae_bound(plain).sum()).abs().max()) > 0.1


# ------------------------------------------------------------- in expectation, per draw
def tiny(k: int = 5, **kw) -> tuple[LatentVariableModel, torch.Tensor, RunConfig]:
    cfg = RunConfig(hidden=((6,),), latent=(2,), objective="iwae", k=k, **kw)
    from bench.models import build_model

    model = build_model(cfg, 5, seed=3).double()
    x = torch.bernoulli(torch.full((3, 5), 0.4, dtype=torch.float64), generator=gen(1))
    return model, x, cfg


def paired_z(model, x, k, first, second, groups=40, per_group=500) -> torch.Tensor:
    """Per encoder parameter, the z-score of the mean difference of two estimators' gradients,
    `first` and `second` each (bound, views), at the same noise, over groups x per_group
    draws (each group's mean gradient from one backward pass of per_group replicas of x with
    their own noise; the groups' spread gives the standard error)."""
    diffs = []
    xs = x.repeat(per_group, 1)
    for g in range(groups):
        grads = [encoder_grads(model, bound(model(xs, k, generator=gen(100 + g), views=views))
                               .sum() / per_group) for bound, views in (first, second)]
        diffs.append(grads[0] - grads[1])
    diffs = torch.stack(diffs)
    return diffs.mean(0) / (diffs.std(0) / math.sqrt(groups))


def test_dregs_encoder_gradient_is_iwaes_in_expectation():
    # Guards against: a DReG whose gradient is not unbiased for the IWAE bound's (w instead
    # of w^2 gives STL, biased for k > 1; a sign error; the path term from the wrong view).
    model, x, _ = tiny()
    iwae = (iwae_bound, Views())
    z = paired_z(model, x, 5, iwae, (dreg_bound, SPLIT))
    assert float(z.abs().max()) < 4.5, z  # no parameter's mean differs beyond noise
    # and the test can see a bias of STL's size (Tucker et al. 2019: STL is biased)
    z_stl = paired_z(model, x, 5, iwae, (stl_bound, Views(stl=True)))
    assert float(z_stl.abs().max()) > 8.0, z_stl


def test_rws_dregs_encoder_gradient_is_the_wake_phi_update_in_expectation():
    # Guards against: RWS-DReG with w - w^2 replaced by w or w^2, or of the wrong sign: its
    # encoder gradient must be that of reweighted wake-sleep's wake-phi update, which it
    # reparameterises (Tucker et al. 2019), here computed at detached samples.
    model, x, _ = tiny()
    xs = x.repeat(500, 1)
    diffs = []
    for g in range(40):
        live = model(xs, 5, generator=gen(100 + g), views=SPLIT)
        fixed = model(xs, 5, generator=gen(100 + g), views=Views(detach=True))
        wake = wake_phi_surrogate(fixed.log_weights, fixed.log_qz)
        diffs.append(encoder_grads(model, rws_dreg_bound(live).sum() / 500)
                     - encoder_grads(model, wake.sum() / 500))
    diffs = torch.stack(diffs)
    z = diffs.mean(0) / (diffs.std(0) / math.sqrt(40))
    assert float(z.abs().max()) < 4.5, z


def test_each_draw_of_dreg_is_the_written_out_sum_of_squared_weights_times_the_path():
    # Guards against: the one-backward surrogate computing something else per draw than
    # sum_i w~_i^2 (d log w_i / d z_i) (d z_i / d phi), written out here by hand: the path
    # derivative at z as a leaf (p's and q's parameters fixed), then back through z = mu +
    # sigma * eps to q's parameters.
    model, x, _ = tiny(k=4)
    for draw in range(3):
        sample = model(x, 4, generator=gen(draw), views=SPLIT)
        got = encoder_grads(model, dreg_bound(sample).sum())
        z_live = sample.z[0]
        z = z_live.detach().requires_grad_(True)
        mean, logvar, _ = model.encoders[0].net.params(x)
        log_q_stopped = -0.5 * ((z - mean.detach()) ** 2 / logvar.detach().exp()
                                + logvar.detach() + math.log(2 * math.pi)).sum(-1)
        log_w = (model.decoder.log_prob(x, z) - 0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
                 - log_q_stopped)
        path = torch.autograd.grad(log_w.sum(), z)[0]  # (k, B, d): d log w_i / d z_i
        weights = torch.softmax(log_w.detach(), 0)
        want = torch.autograd.grad(z_live, list(model.encoders.parameters()),
                                   grad_outputs=weights.square().unsqueeze(-1) * path,
                                   retain_graph=True)
        torch.testing.assert_close(got, torch.cat([g.reshape(-1) for g in want]),
                                   rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------- the MIWAE family
def test_miwae_of_one_group_is_iwae_and_of_groups_of_one_the_vae():
    # Guards against: MIWAE's log-mean-exp over the M axis instead of K (what pythae's
    # miwae_model.py does), or its mean over the wrong axis: MIWAE(1, K) is IWAE-K and
    # MIWAE(M, 1) the VAE-k (Monte Carlo KL); MIWAE(2, 3) lies between them.
    model, x, _ = tiny(k=6)
    sample = model(x, 6, generator=gen(0))
    log_w = sample.log_weights
    torch.testing.assert_close(miwae_bound(log_w, 1), iwae_bound(sample))
    torch.testing.assert_close(miwae_bound(log_w, 6), vae_bound(sample, analytic_kl=False))
    by_hand = torch.stack([torch.logsumexp(log_w[3 * j: 3 * j + 3], 0) - math.log(3)
                           for j in range(2)]).mean(0)
    torch.testing.assert_close(miwae_bound(log_w, 2), by_hand)
    assert bool((miwae_bound(log_w, 2) < iwae_bound(sample)).all())
    assert bool((miwae_bound(log_w, 3) < miwae_bound(log_w, 2)).all())  # K = 2 < K = 3


def test_ciwae_mixes_the_elbo_and_iwae_of_the_same_samples():
    model, x, _ = tiny(k=6)
    sample = model(x, 6, generator=gen(0))
    elbo = vae_bound(sample, analytic_kl=False)
    torch.testing.assert_close(ciwae_bound(sample.log_weights, 0.0), iwae_bound(sample))
    torch.testing.assert_close(ciwae_bound(sample.log_weights, 1.0), elbo)
    torch.testing.assert_close(ciwae_bound(sample.log_weights, 0.25),
                               0.25 * elbo + 0.75 * iwae_bound(sample))


def test_piwae_gives_the_decoder_iwaes_gradient_and_the_encoder_miwaes():
    # Guards against: PIWAE's two gradients swapped or mixed (the encoder on IWAE(M x K), as
    # plain IWAE; the decoder on MIWAE; pythae's trainer adds the IWAE gradient to the
    # encoder's): from the same k = M x K samples, its decoder gradient is IWAE(M x K)'s and
    # its encoder gradient MIWAE(M, K)'s.
    model, x, _ = tiny(k=6)
    split = model(x, 6, generator=gen(4), views=Views(split=True))
    plain = model(x, 6, generator=gen(4))
    piwae = piwae_bound(split, 2).sum()
    torch.testing.assert_close(piwae, iwae_bound(plain).sum())  # its value: IWAE(M x K)
    torch.testing.assert_close(decoder_grads(model, piwae),
                               decoder_grads(model, iwae_bound(plain).sum()))
    miwae = miwae_bound(plain.log_weights, 2).sum()
    torch.testing.assert_close(encoder_grads(model, piwae), encoder_grads(model, miwae))
    assert float((encoder_grads(model, miwae) - encoder_grads(model, iwae_bound(plain).sum()))
                 .abs().max()) > 1e-3


# ------------------------------------------------------------------- config refusals
@pytest.mark.parametrize("values, message", [
    (dict(objective="stl", posterior="planar", flow_steps=2), "needs posterior 'gaussian'"),
    (dict(objective="dreg", kl_direction="forward"), "'rws_dreg'"),
    (dict(objective="rws_dreg"), "set kl_direction = 'forward'"),
    (dict(objective="miwae", k=10, params={"m": 3}), "k a multiple of m"),
    (dict(objective="ciwae", beta=1.5), "must be in [0, 1]"),
    (dict(objective="dreg", model="cvae", condition="label"), "needs model 'lvm'"),
    (dict(objective="iwae", snr_draws=1), "at least 2 gradient draws"),
    (dict(objective="iwae", snr_every=2), "needs key 'snr_draws'"),
    (dict(dataset="snr_gaussian", objective="iwae", params={"draws": 1}), ">= 2"),
])
def test_configs_an_estimator_cannot_train_are_refused_with_the_reason(values, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RunConfig(**values)


# ------------------------------------------------------------- the gradient SNR metric
def test_gradient_snr_is_mean_over_parameters_of_mean_over_std_and_the_dsnr_of_the_draws():
    # Guards against: an SNR of the absolute gradient, the variance instead of the standard
    # deviation, population vs sample std mixed, the DSNR's direction from other draws or
    # its ratio inverted: recomputed here from every draw kept, from the same seeded stream.
    model, x, cfg = tiny(k=4)
    model = model.float()
    x = x.float()
    cfg = cfg.replace(objective="dreg", seed=7)
    got = gradient_snr(model, cfg, x, 30)
    generator = torch.Generator().manual_seed(cfg.seed + SNR_STREAM)
    parts = parameters_by_part(model)
    draws = {part: [] for part in parts}
    for _ in range(30):
        sample = model(x, 4, generator=generator, views=views_for(cfg))
        value = objective_for(cfg)(sample).mean()
        for part, params in parts.items():
            grads = torch.autograd.grad(value, params, retain_graph=True)
            draws[part].append(torch.cat([g.reshape(-1) for g in grads]).double())
    for part in parts:
        g = torch.stack(draws[part])
        snr = (g.mean(0).abs() / g.std(0)).mean()
        u = g.mean(0) / g.mean(0).norm()
        along = g @ u
        dsnr = (along.abs() / (g - along[:, None] * u).norm(dim=1)).mean()
        assert got[f"snr_{part}"] == pytest.approx(float(snr), rel=1e-9)
        assert got[f"dsnr_{part}"] == pytest.approx(float(dsnr), rel=1e-9)


def test_measuring_the_snr_leaves_the_runs_training_and_evaluation_unchanged():
    # Guards against: the SNR draws taken from the training or evaluation generator, or
    # gradients left in .grad: a run's metrics would move with snr_draws, which is no part
    # of what it trains.
    base = dict(dataset="digits", train_size=100, test_size=20, hidden=((8,),), latent=(2,),
                k_eval=5, batch_size=50, epochs=2, k=4, objective="dreg")
    data = load_data(RunConfig(**base))
    plain = train(RunConfig(**base), data).metrics()
    measured = train(RunConfig(**base, snr_draws=3, snr_every=1), data)
    metrics = measured.metrics()
    for name in ("test_ll", "test_elbo", "final_train_bound", "test_iwae_k", "test_bound"):
        assert metrics[name] == plain[name], name
    assert {"snr_encoder", "snr_encoder_init", "dsnr_decoder"} <= set(metrics)
    assert measured.curves[0].snr_encoder is not None and measured.curves[1].snr_encoder is None


# ---------------------------------------------------------------- the Gaussian toy
def toy_sample(problem: toy.Problem, eps: torch.Tensor, views: Views
               ) -> tuple[ModelSample, dict[str, torch.Tensor]]:
    """The toy's log-densities at noise eps (n, P, k, D) as a ModelSample (k, n*P), built
    with autograd on the parameters b, mu (and A), for bench.objectives to differentiate."""
    params = {"b": problem.b.clone().requires_grad_(True),
              "mu": problem.mu.clone().requires_grad_(True)}
    points, k = eps.shape[1], eps.shape[2]
    x = problem.x[:points]
    mean = x @ problem.a.T + params["b"]  # (P, D)
    s = math.sqrt(toy.Q_VARIANCE)
    e = eps.double().permute(2, 0, 1, 3)  # (k, n, P, D)
    z = mean + s * e

    def log_joint(z_, mu):
        return -0.5 * ((z_ - mu) ** 2).sum(-1) - 0.5 * ((x - z_) ** 2).sum(-1)

    def log_q(z_, m):
        return -0.5 * ((z_ - m) ** 2).sum(-1) / toy.Q_VARIANCE

    zs = z.detach() if views.split else z
    flat = lambda t: t.reshape(k, -1)  # noqa: E731
    sample = ModelSample(
        log_px_given_z=flat(-0.5 * ((x - zs) ** 2).sum(-1)),
        log_pz=flat(-0.5 * ((zs - params["mu"]) ** 2).sum(-1)),
        log_qz=flat(log_q(z, mean)), kl_analytic=None, z=[flat(z)], z_means=[],
        log_qz_stl=flat(log_q(z, mean.detach())) if views.stl else None,
        log_joint_path=flat(log_joint(z, params["mu"].detach())) if views.split else None)
    return sample, params


@pytest.mark.parametrize("estimator", toy.ESTIMATORS)
def test_the_toys_closed_forms_are_the_objectives_gradients(estimator):
    # Guards against: an error in the toy's algebra (a weight, a sign, the eps / s term) and,
    # the other way, in bench.objectives' surrogates: the closed form per draw equals
    # autograd through the objective bench.objectives trains with, at the same noise.
    problem = toy.perturbed(3, 0.05)
    eps = torch.randn(7, 2, 6, toy.DIM, generator=gen(0), dtype=torch.float64)
    cfg_values = {"rws_dreg": dict(kl_direction="forward"), "miwae": dict(params={"m": 2}),
                  "piwae": dict(params={"m": 2}), "ciwae": dict(beta=0.3)}.get(estimator, {})
    cfg = RunConfig(objective=estimator, k=6, analytic_kl=False, **cfg_values)
    views = views_for(cfg)
    sample, params = toy_sample(problem, eps, views)
    bound = objective_for(cfg)(sample).reshape(7, 2).mean(1)  # each draw: mean over points
    m, beta = dict(cfg.params).get("m", 1), cfg.beta
    want_b, want_mu = toy.closed_form(problem, estimator, eps, m=m, beta=beta)
    for draw in range(7):
        g_b, g_mu = torch.autograd.grad(bound[draw], [params["b"], params["mu"]],
                                        retain_graph=True)
        torch.testing.assert_close(g_b, want_b[draw], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(g_mu, want_mu[draw], rtol=1e-9, atol=1e-11)


def test_the_toys_snr_falls_like_one_over_root_k_for_the_iwae_encoder_and_rises_otherwise():
    # The claim of Rainforth et al. 2018 the toy exists to show, with its known answers:
    # IWAE's encoder SNR ~ k^-1/2, its decoder's ~ k^+1/2, and the STL and DReG encoders'
    # rising with k. IWAE's encoder SNR at k = 1000 is about 0.004, so it takes 10^6 draws
    # to measure it 3x above the 1/sqrt(N) floor (10^5 do at k <= 100). The draws are the
    # same on any number of threads; two make this test take a minute instead of two.
    # Guards against: an estimator's weights or the SNR's statistics going wrong in a way
    # the per-draw checks above cannot see (e.g. draws that are not independent).
    ks, draws = [10, 100, 1000], [100_000, 100_000, 1_000_000]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        iwae = [toy.measure("iwae", k, draws=n, seed=0) for k, n in zip(ks, draws, strict=True)]
        others = {e: [toy.measure(e, k, draws=10_000, seed=0) for k in ks]
                  for e in ("stl", "dreg")}
    finally:
        torch.set_num_threads(threads)
    assert all(r["snr_encoder"] >= 3 * r["snr_floor"] for r in iwae)
    assert fit_slope(ks, [r["snr_encoder"] for r in iwae]) == pytest.approx(-0.5, abs=0.1)
    assert fit_slope(ks, [r["snr_decoder"] for r in iwae]) == pytest.approx(0.5, abs=0.1)
    for estimator, rows in others.items():
        slope = fit_slope(ks, [r["snr_encoder"] for r in rows], rows[0]["snr_floor"])
        assert slope > 0.3, (estimator, slope)


def test_the_reports_snr_plot_fits_each_line_above_the_floor_and_draws_shared_lines_once():
    # Guards against: a slope fitted through points at the floor (IWAE's encoder at large k
    # with too few draws flattens towards 0), or the decoder line that IWAE, STL and DReG
    # share drawn three times over itself.
    import pandas as pd

    from bench.report.figures import snr_vs_k_data

    ks = [1, 10, 100, 1000]
    iwae = [0.1 * k**-0.5 for k in ks[:-1]] + [0.004]  # k = 1000: at the floor, off the line
    rows = [{"cfg_dataset": "snr_gaussian", "status": "finished", "cfg_objective": objective,
             "cfg_k": k, "cfg_seed": seed, "metric_snr_encoder": snr * (1 + 0.01 * seed),
             "metric_snr_decoder": 2.0 * k**0.5, "metric_snr_floor": 0.002}
            for objective, encoder in (("iwae", iwae), ("dreg", [0.2 * k**0.5 for k in ks]))
            for k, snr in zip(ks, encoder, strict=True) for seed in (0, 1)]
    data = snr_vs_k_data(pd.DataFrame(rows))
    # IWAE's encoder at k = 1000 (0.004) is under 3 x floor: left out, the rest fit -1/2
    assert list(dict.fromkeys(data["line"])) == [
        "IWAE encoder (slope -0.50)", "IWAE, DREG decoder (slope +0.50)",
        "DREG encoder (slope +0.50)"]
    assert len(data) == 12 and set(data["seeds"]) == {2}
    assert data["mean"].iloc[0] == pytest.approx(0.1 * 1.005)  # the mean over the 2 seeds


def test_a_plugins_objective_gets_the_same_views_as_the_built_in_estimators(tmp_path):
    # Guards against: views reserved to vaebench's own objectives (a user's estimator could
    # not be written), or a plugin objective's views not reaching the model.
    from bench import plugins

    (tmp_path / "mine.py").write_text(
        "def make(cfg):\n"
        "    from bench.objectives import dreg_bound\n"
        "    return dreg_bound\n\n"
        "def register(api):\n"
        "    api.objective('my_dreg', make, views=('stl', 'split'))\n")
    (tmp_path / "bad.py").write_text(
        "def register(api):\n"
        "    api.objective('bad_views', lambda cfg: None, views=('psychic',))\n")
    with plugins.scoped():
        plugins.load([str(tmp_path / "mine.py")], entry_points=False)
        base = dict(dataset="digits", train_size=100, test_size=20, hidden=((8,),),
                    latent=(2,), k_eval=5, batch_size=50, epochs=2, k=4)
        data = load_data(RunConfig(**base))
        mine = train(RunConfig(**base, objective="my_dreg"), data).metrics()
        built_in = train(RunConfig(**base, objective="dreg"), data).metrics()
        assert mine["test_ll"] == built_in["test_ll"]
        assert mine["final_train_bound"] == built_in["final_train_bound"]
        with pytest.raises(BenchError, match="needs posterior 'gaussian'"):
            RunConfig(objective="my_dreg", posterior="iaf", flow_steps=1)
        with pytest.raises(BenchError, match="unknown view 'psychic'"):
            plugins.load([str(tmp_path / "bad.py")], entry_points=False)
