"""Disentanglement models and metrics: the conv architecture of Burgess et al. 2018, the
controlled-capacity objective, and factor metrics with latent traversals on `shapes_small`.

The conv networks are checked against their documented geometry (zero padding on the bottom
and right to a multiple of 16, cropping back), every objective and posterior trains through
them, controlled capacity's C follows the optimisation steps (also across a resume from a
checkpoint), and a short capacity run on the shapes grid gets its metrics and traversals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import bench.families.lvm
import bench.metrics.factors
from bench.config import RunConfig
from bench.data import SHAPES_GRIDS, load_dataset
from bench.errors import BenchError
from bench.families.lvm import train, training_step
from bench.loop import Checkpointing, load_data
from bench.metrics.catalog import MACHINE_METRICS
from bench.metrics.disentanglement import beta_vae_score, dci, mig
from bench.metrics.factor_protocols import FACTOR_POINTS, metric_protocols
from bench.metrics.factors import (
    ACTIVE_KL,
    TRAVERSAL_VALUES,
    dci_draws,
    encode_means,
    factor_metrics,
    has_factors,
    traversal_rows,
    unit_kls,
)
from bench.models import build_model
from bench.models.conv import FEATURES, ConvDecoderNet, ConvEncoderNet
from bench.models.lvm import LatentVariableModel, ModelSample
from bench.objectives import (
    ControlledCapacity,
    iwae_bound,
    objective_for,
    vae_bound,
    views_for,
)
from bench.optim import make_optimizer

SHAPES = dict(dataset="shapes_small", architecture="conv", latent=(4,))
# A short capacity run on the shapes grid: C jumps to 8 nats after the first step and
# gamma = 1000 pushes the KL up, so units become active within 5 steps (seconds on a CPU).
FACTOR_RUN = dict(**SHAPES, train_size=500, test_size=100, epochs=1, k_eval=5,
                  capacity_max=8.0, capacity_steps=1, lr=3e-3)
FACTOR_KEYS = {"mig", "dci_disentanglement", "dci_completeness", "dci_informativeness",
               "beta_vae_accuracy", "active_kl_units", "factor_seconds"}


def strip(metrics: dict) -> dict:
    return {key: v for key, v in metrics.items() if key not in MACHINE_METRICS}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")  # the tests share a small CPU


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes_small", train_size=16, test_size=16)


@pytest.fixture(scope="module")
def factor_run():
    cfg = RunConfig(**FACTOR_RUN)
    data = load_data(cfg)
    return cfg, data, train(cfg, data)


# ---- the conv networks --------------------------------------------------------------------
@pytest.mark.parametrize("image_shape", [(64, 64), (32, 32), (28, 28), (8, 8), (12, 40)])
def test_conv_nets_keep_leading_dims_and_map_each_image_on_its_own(image_shape):
    h, w = image_shape
    encoder, decoder = ConvEncoderNet(image_shape), ConvDecoderNet(6, image_shape)
    x = torch.rand(2, 3, h * w, generator=gen(0))
    z = torch.randn(2, 3, 6, generator=gen(1))
    features, logits = encoder(x), decoder(z)
    assert features.shape == (2, 3, FEATURES)
    assert logits.shape == (2, 3, h * w)
    # entry (i, j) is the network applied to x[i, j] alone: the (k, B) dims are not mixed,
    # and nothing about the rest of the batch (padding included) reaches an image's output
    for i, j in np.ndindex(2, 3):
        torch.testing.assert_close(encoder(x[i, j]), features[i, j], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(decoder(z[i, j]), logits[i, j], rtol=1e-5, atol=1e-6)


def test_conv_nets_zero_pad_bottom_right_and_crop_back():
    # 28x28 pads to 32x32: with the same weights, the 28x28 encoder is the 32x32 encoder on
    # the image with zeros appended below and to the right, and the 28x28 decoder's output
    # is the top-left 28x28 corner of the 32x32 decoder's
    small_enc, big_enc = ConvEncoderNet((28, 28)), ConvEncoderNet((32, 32))
    big_enc.load_state_dict(small_enc.state_dict())
    x = torch.rand(5, 28 * 28, generator=gen(2))
    padded = nn.functional.pad(x.reshape(5, 28, 28), (0, 4, 0, 4)).reshape(5, 32 * 32)
    torch.testing.assert_close(small_enc(x), big_enc(padded), rtol=0, atol=0)

    small_dec, big_dec = ConvDecoderNet(3, (28, 28)), ConvDecoderNet(3, (32, 32))
    big_dec.load_state_dict(small_dec.state_dict())
    z = torch.randn(5, 3, generator=gen(3))
    corner = big_dec(z).reshape(5, 32, 32)[:, :28, :28].reshape(5, 28 * 28)
    torch.testing.assert_close(small_dec(z), corner, rtol=0, atol=0)


def test_conv_nets_follow_burgess_et_al():
    encoder, decoder = ConvEncoderNet((64, 64)), ConvDecoderNet(10, (64, 64))
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (4, 4), (2, 2))] * 4
    assert [m.out_features for m in encoder.fc if isinstance(m, nn.Linear)] == [256, 256]
    assert encoder.fc[0].in_features == 32 * 4 * 4
    deconvs = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.out_channels, d.stride) for d in deconvs] == [(32, (2, 2))] * 3 + [(1, (2, 2))]
    assert [m.out_features for m in decoder.fc if isinstance(m, nn.Linear)] == [256, 256, 512]


# ---- the conv model ----------------------------------------------------------------------
def test_conv_model_swaps_the_first_trunk_and_the_decoder_and_keeps_no_mlp_weights(shapes):
    model = build_model(RunConfig(**SHAPES), shapes.dim, image_shape=shapes.image_shape)
    assert isinstance(model.encoders[0].net.trunk, ConvEncoderNet)
    assert isinstance(model.decoder.net, ConvDecoderNet)
    assert model.encoders[0].net.head.in_features == FEATURES
    # no leftover MLP layer on the 1024 pixels (the replaced MLP trunks are gone)
    assert not any(shapes.dim in p.shape for p in model.parameters())
    x = shapes.test[:3]
    sample = model(x, 5, generator=gen(0))
    assert sample.log_px_given_z.shape == sample.log_qz.shape == (5, 3)
    assert sample.z[0].shape == (5, 3, 4)


def test_the_conv_architecture_needs_images_and_one_layer():
    with pytest.raises(BenchError, match="image"):
        build_model(RunConfig(**SHAPES), 1024)  # no image shape
    rules = [
        (dict(model="mixture", components=3, iterations=5),
         "key 'architecture' applies to model 'lvm' only"),
        (dict(dataset="gmm", iterations=10, objective="iwae"),
         "key 'architecture' applies to model 'lvm' only"),
        (dict(hidden=((32,), (16,)), latent=(8, 4)), "architecture 'conv' needs"),
    ]
    for extra, message in rules:
        with pytest.raises(BenchError, match=message):
            RunConfig(**{"architecture": "conv", "dataset": "digits", **extra})
    with pytest.raises(ValueError, match="one stochastic layer"):
        LatentVariableModel(1024, ((32,), (16,)), (8, 4), architecture="conv",
                            image_shape=(32, 32))
    RunConfig(architecture="conv", dataset="mnist")  # every image data set is allowed


VARIANTS = {
    "beta-vae": dict(objective="vae", beta=4.0),
    "iwae-k5": dict(objective="iwae", k=5),
    "forward-kl": dict(objective="iwae", k=5, kl_direction="forward"),
    "planar": dict(posterior="planar", flow_steps=2),
    "radial": dict(posterior="radial", flow_steps=2),
    "iaf": dict(posterior="iaf", flow_steps=2),
    "capacity": dict(capacity_max=5.0, capacity_steps=10, gamma=100.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_training_step_of_every_objective_and_posterior_moves_the_conv_weights(
    variant, shapes
):
    cfg = RunConfig(**SHAPES, **VARIANTS[variant])
    model = build_model(cfg, shapes.dim, image_shape=shapes.image_shape)
    conv_weights = {
        "encoder conv": model.encoders[0].net.trunk.conv[0].weight,
        "encoder fc": model.encoders[0].net.trunk.fc[0].weight,
        "decoder fc": model.decoder.net.fc[0].weight,
        "decoder deconv": model.decoder.net.deconv[-1].weight,
    }
    before = {name: w.detach().clone() for name, w in conv_weights.items()}
    loss = training_step(model, make_optimizer(model, cfg), objective_for(cfg),
                         shapes.train[:8], cfg.k, gen(0),
                         views=views_for(cfg))
    assert math.isfinite(float(loss))
    for name, w in conv_weights.items():
        assert torch.isfinite(w).all(), name
        assert not torch.equal(w, before[name]), f"{name} did not move"


def test_conv_iwae_at_k1_is_the_elbo_with_monte_carlo_kl(shapes):
    model = build_model(RunConfig(**SHAPES), shapes.dim, image_shape=shapes.image_shape)
    x = shapes.test[:8]
    with torch.no_grad():
        iwae = iwae_bound(model(x, 1, generator=gen(7)))
        elbo = vae_bound(model(x, 1, generator=gen(7)), analytic_kl=False)
        analytic = vae_bound(model(x, 1, generator=gen(7)))
    torch.testing.assert_close(iwae, elbo, rtol=1e-6, atol=1e-4)
    assert not torch.equal(elbo, analytic)  # the Monte Carlo KL is a different estimate


def test_posterior_moments_are_the_mean_reconstruct_decodes(shapes):
    model = build_model(RunConfig(**SHAPES), shapes.dim, image_shape=shapes.image_shape)
    x = shapes.test[:6]
    mean, logvar = model.posterior_moments(x)
    assert mean.shape == logvar.shape == (6, 4)
    assert torch.equal(model.reconstruct(x), model.decoder.mean(mean))
    with torch.no_grad():
        sample = model(x, 3, generator=gen(0))
    assert torch.equal(sample.z_means[0][0], mean)  # E_q[z | x] of the sampling pass
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(sample.kl_analytic, kl)


# ---- controlled capacity -----------------------------------------------------------------
def hand_sample(kl: list[float], log_qz=None, log_pz=None) -> ModelSample:
    """k = 2 samples of B = 4 examples with dyadic values: every sum below is exact."""
    recon = torch.tensor([[-10.0, -20.0, -30.0, -40.0], [-12.0, -22.0, -28.0, -36.0]],
                         dtype=torch.float64)
    zeros = torch.zeros_like(recon)
    return ModelSample(
        log_px_given_z=recon,
        log_pz=zeros if log_pz is None else log_pz,
        log_qz=zeros if log_qz is None else log_qz,
        kl_analytic=None if kl is None else torch.tensor(kl, dtype=torch.float64),
        z=[], z_means=[],
    )


def test_capacity_rises_linearly_from_zero_and_stays_at_its_maximum():
    objective = ControlledCapacity(capacity_max=6.0, capacity_steps=4, gamma=10.0)
    assert [objective.capacity(s) for s in range(7)] == [0.0, 1.5, 3.0, 4.5, 6.0, 6.0, 6.0]
    assert objective.capacity(10**6) == 6.0


def test_each_call_is_one_step_and_the_penalty_is_on_the_batch_mean_kl():
    kl = [1.0, 2.5, 4.0, 0.5]  # batch mean 2.0
    sample = hand_sample(kl)
    recon_mean = float(sample.log_px_given_z.mean())  # -24.75
    objective = ControlledCapacity(capacity_max=6.0, capacity_steps=4, gamma=10.0)
    for step, target in enumerate([0.0, 1.5, 3.0, 4.5, 6.0, 6.0]):
        assert objective.steps_done == step
        bound = objective(sample)
        assert bound.shape == (4,)
        # |2 - C|: above, near, then below the target (the absolute value matters there)
        assert float(bound.mean()) == recon_mean - 10.0 * abs(2.0 - target)
        # one penalty for the whole batch: bound - reconstruction is the same for every x
        penalty = sample.log_px_given_z.mean(0) - bound
        assert torch.equal(penalty, torch.full((4,), 10.0 * abs(2.0 - target),
                                               dtype=torch.float64))
    assert objective.steps_done == 6


def test_capacity_uses_the_monte_carlo_kl_when_asked_or_when_there_is_no_closed_form():
    log_qz = torch.tensor([[3.0, 1.0, 2.0, 0.0], [5.0, 1.0, 2.0, 4.0]], dtype=torch.float64)
    mc_kl_mean = float(log_qz.mean())  # log p(z) = 0: KL = mean log q = 2.25
    for analytic_kl, kl in [(False, [100.0] * 4), (True, None)]:
        sample = hand_sample(kl, log_qz=log_qz)
        objective = ControlledCapacity(4.0, 2, gamma=2.0, analytic_kl=analytic_kl)
        objective(sample)  # step 0, C = 0
        bound = objective(sample)  # step 1, C = 2
        expected = float(sample.log_px_given_z.mean()) - 2.0 * abs(mc_kl_mean - 2.0)
        assert float(bound.mean()) == expected


def test_objective_for_builds_a_fresh_controlled_capacity_when_capacity_is_on():
    cfg = RunConfig(capacity_max=25.0, capacity_steps=1000, gamma=50.0, analytic_kl=False)
    objective = objective_for(cfg)
    assert isinstance(objective, ControlledCapacity)
    assert (objective.capacity_max, objective.capacity_steps, objective.gamma) == (25.0, 1000,
                                                                                   50.0)
    assert objective.analytic_kl is False and objective.steps_done == 0
    objective(hand_sample([1.0] * 4))
    assert objective_for(cfg).steps_done == 0  # every run starts its own count at step 0
    plain = objective_for(RunConfig(beta=4.0))
    assert not isinstance(plain, ControlledCapacity)
    sample = hand_sample([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(plain(sample), vae_bound(sample, beta=4.0))


@pytest.mark.parametrize("extra", [
    dict(capacity_max=5.0),  # capacity_steps missing
    dict(capacity_max=5.0, capacity_steps=10, objective="iwae", k=2),
    dict(capacity_max=5.0, capacity_steps=10, beta=4.0),
    dict(capacity_steps=10),  # capacity off: its keys do not apply
    dict(capacity_max=-1.0),
])
def test_controlled_capacity_config_rules(extra):
    with pytest.raises(BenchError, match="capacity"):
        RunConfig(**extra)


def test_a_resumed_capacity_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    # 230 examples in batches of 50: 5 steps an epoch (the last one short), C rising over
    # the first 3 epochs, so a resume that restarted C, or counted 4 steps an epoch, differs
    cfg = RunConfig(dataset="digits", architecture="conv", latent=(4,), train_size=230,
                    test_size=50, batch_size=50, epochs=4, k_eval=5, capacity_max=5.0,
                    capacity_steps=15, gamma=100.0)
    data = load_data(cfg)
    objectives = []

    def spy(c):
        objectives.append(objective_for(c))
        return objectives[-1]

    monkeypatch.setattr(bench.families.lvm, "objective_for", spy)
    reference = train(cfg, data)
    assert objectives[-1].steps_done == 4 * 5

    checkpointing = Checkpointing(tmp_path / "run.pt", every_epochs=1)

    def interrupt_after_epoch_3(record, total):
        if record.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, checkpointing=checkpointing, on_epoch=interrupt_after_epoch_3)
    seen = []
    resumed = train(cfg, data, checkpointing=checkpointing,
                    on_epoch=lambda record, total: seen.append(record.epoch))
    assert seen == [3, 4]  # epochs 1-2 came from the checkpoint
    assert objectives[-1].steps_done == 4 * 5  # resumed at step 10, then 10 more
    assert strip(resumed.metrics()) == strip(reference.metrics())
    assert [r.train_bound for r in resumed.curves] == [r.train_bound for r in reference.curves]
    for pa, pb in zip(resumed.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


# ---- factor metrics and traversals -------------------------------------------------------
def test_a_shapes_run_gets_disentanglement_metrics_in_range(factor_run):
    cfg, data, result = factor_run
    assert result.status == "finished" and has_factors(data)
    metrics = result.metrics()
    assert FACTOR_KEYS <= metrics.keys()
    assert {key for key in metrics if key.startswith("kl_unit_")} == {
        f"kl_unit_{j}" for j in range(4)}
    for key in ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 1.0 < metrics["beta_vae_accuracy"] <= 100.0  # a percentage, not a fraction
    kls = np.array([metrics[f"kl_unit_{j}"] for j in range(4)])
    assert (kls >= 0).all()
    assert metrics["active_kl_units"] == float((kls > ACTIVE_KL).sum())
    assert metrics["active_kl_units"] >= 2  # the capacity pressure opened units
    assert metrics["factor_seconds"] >= 0 and "factor_seconds" in MACHINE_METRICS


def test_unit_kls_sum_to_the_analytic_kl(factor_run):
    cfg, data, result = factor_run
    model, metrics = result.model, result.metrics()
    kls = unit_kls(model, data.test)
    assert kls.shape == (4,)
    assert [metrics[f"kl_unit_{j}"] for j in range(4)] == [float(v) for v in kls]
    assert kls.sum() == pytest.approx(metrics["rate"], rel=1e-5)  # the evaluator's KL
    with torch.no_grad():
        kl = model(data.test, 1, generator=gen(0)).kl_analytic.double().mean()
    assert kls.sum() == pytest.approx(float(kl), rel=1e-5)


def test_traversal_rows_sweep_one_active_unit_each_most_informative_first(factor_run):
    cfg, data, result = factor_run
    model = result.model
    h, w = data.image_shape
    kls = np.array([0.5, ACTIVE_KL / 2, 2.0, 0.02])  # unit 1 inactive; order 2, 0, 3
    rows = traversal_rows(model, data, kls)
    assert rows[0]["kind"] == "test image" and rows[0]["index"] == 0
    assert rows[0]["pixels"] == data.test[0].tolist()
    assert len(rows) == 1 + 3 * len(TRAVERSAL_VALUES) == 34
    assert all((r["height"], r["width"]) == (h, w) for r in rows)
    mean, _ = model.posterior_moments(data.test[:1])
    for n, (unit, label) in enumerate([(2, "2.00"), (0, "0.50"), (3, "0.02")]):
        row = rows[1 + 11 * n : 1 + 11 * (n + 1)]
        assert [r["kind"] for r in row] == [f"unit {unit} (KL {label})"] * 11
        assert [r["index"] for r in row] == list(range(11))
        # the decoder means along unit `unit` with every other unit at the image's mean
        z = mean.repeat(11, 1)
        z[:, unit] = torch.linspace(-3.0, 3.0, 11)
        expected = model.decoder.mean(z).clamp(0, 1)
        got = torch.tensor([r["pixels"] for r in row])
        assert got.shape == (11, h * w)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert not torch.equal(got[0], got[-1])  # the sweep shows something


def test_a_runs_traversals_follow_its_unit_kls(factor_run):
    cfg, data, result = factor_run
    metrics = result.metrics()
    kls = [metrics[f"kl_unit_{j}"] for j in range(4)]
    active = sorted((j for j in range(4) if kls[j] > ACTIVE_KL), key=lambda j: -kls[j])
    kinds = [r["kind"] for r in result.samples if r["kind"].startswith("unit ")]
    assert kinds == [f"unit {j} (KL {kls[j]:.2f})" for j in active for _ in range(11)]
    assert [r["kind"] for r in result.samples].count("test image") == 1


def test_a_dead_unit_is_not_active_and_not_traversed(factor_run):
    cfg, data, result = factor_run
    model = build_model(cfg, data.dim, image_shape=data.image_shape)
    model.load_state_dict(result.model.state_dict())
    head = model.encoders[0].net.head  # rows [j] give unit j's mean, rows [4 + j] its logvar
    with torch.no_grad():
        for row in (1, 4 + 1):
            head.weight[row] = 0.0
            head.bias[row] = 0.0  # q(z_1 | x) = N(0, 1) for every x: KL exactly 0
    metrics, rows = factor_metrics(model, data, seed=cfg.seed)
    kls = [metrics[f"kl_unit_{j}"] for j in range(4)]
    assert kls[1] == 0.0 and min(kls[0], kls[2], kls[3]) > ACTIVE_KL
    assert metrics["active_kl_units"] == 3.0
    units = {r["kind"].split(" (")[0] for r in rows if r["kind"].startswith("unit ")}
    assert units == {"unit 0", "unit 2", "unit 3"}
    assert len(rows) == 1 + 3 * 11


def test_the_same_config_and_seed_give_identical_factor_metrics(factor_run):
    cfg, data, result = factor_run
    again = train(cfg, data)
    first, second = strip(result.metrics()), strip(again.metrics())
    assert {k: first[k] for k in first if k in FACTOR_KEYS or k.startswith("kl_unit")} == {
        k: second[k] for k in second if k in FACTOR_KEYS or k.startswith("kl_unit")}
    assert first == second
    assert result.samples == again.samples


def test_data_without_factors_gets_no_factor_metrics():
    digits = load_dataset("digits", train_size=100, test_size=50)
    assert not has_factors(digits)
    assert has_factors(load_dataset("shapes_small", train_size=10, test_size=10))
    result = train(RunConfig(dataset="digits", architecture="conv", latent=(4,), epochs=1,
                             train_size=100, test_size=50, k_eval=5), digits)
    metrics = result.metrics()
    assert result.status == "finished" and "test_ll" in metrics
    assert not FACTOR_KEYS & metrics.keys()
    assert not any(key.startswith("kl_unit_") for key in metrics)
    assert not any(r["kind"] == "test image" or r["kind"].startswith("unit ")
                   for r in result.samples)


# ---- the DCI protocol keys (dci_estimator, dci_train, dci_test) and the report's labels --
def _grid_codes(model, data):
    from bench.data.shapes import load_shapes

    grid = load_shapes(SHAPES_GRIDS[data.name])
    return grid, encode_means(model, grid.pixels())


def test_default_dci_keys_keep_the_original_protocol_bit_for_bit(factor_run):
    cfg, data, result = factor_run
    assert (cfg.dci_estimator, cfg.dci_train, cfg.dci_test) == ("forest", 0, 0)
    stored = {k: v for k, v in result.metrics().items()
              if k in FACTOR_KEYS - {"factor_seconds"}}
    # train() passes its config (the keys at their defaults); no config is the old call
    plain, _ = factor_metrics(result.model, data, seed=cfg.seed)
    assert {k: plain[k] for k in stored} == stored
    # ... and they are what the code computed before the keys existed: one sample of
    # FACTOR_POINTS grid images (all 6,144 here) drawn with the seed, MIG on it, the forest
    # DCI on its 2:1 split (dci's default), the beta-VAE metric from the grid's codes
    grid, codes = _grid_codes(result.model, data)
    points = np.random.default_rng(cfg.seed).choice(
        len(grid), size=min(len(grid), FACTOR_POINTS), replace=False)
    factors = grid.factor_indices[points]
    old = dci(codes[points], factors, seed=cfg.seed)
    assert stored["mig"] == mig(codes[points], factors)
    assert (stored["dci_disentanglement"], stored["dci_completeness"],
            stored["dci_informativeness"]) == (old.disentanglement, old.completeness,
                                               old.informativeness_test)
    assert stored["beta_vae_accuracy"] == 100.0 * beta_vae_score(
        lambda f: codes[grid.index_of(f)], grid.spec.factor_sizes, seed=cfg.seed)


def test_dci_keys_draw_independent_training_and_test_points_for_boosted_trees(
        factor_run, monkeypatch):
    import sklearn.ensemble
    from sklearn.ensemble import GradientBoostingClassifier

    cfg, data, result = factor_run
    fitted, calls = [], []

    class Recorded(GradientBoostingClassifier):
        def fit(self, x, y, *args, **kwargs):
            fitted.append((self.get_params(), np.array(x)))
            return super().fit(x, y, *args, **kwargs)

    def spy_dci(codes, factors, **kwargs):
        calls.append((codes, factors, kwargs))
        return dci(codes, factors, **kwargs)

    monkeypatch.setattr(sklearn.ensemble, "GradientBoostingClassifier", Recorded)
    monkeypatch.setattr(bench.metrics.factors, "dci", spy_dci)
    boosted = RunConfig(**FACTOR_RUN, dci_estimator="boosting", dci_train=600, dci_test=300)
    metrics, _ = factor_metrics(result.model, data, seed=cfg.seed, config=boosted)
    (train_z, train_f, kwargs), = calls
    test_z, test_f = kwargs["test"]
    assert kwargs["estimator"] == "boosting"
    assert train_z.shape == (600, 4) and test_z.shape == (300, 4)
    # the codes are the encoder means of the drawn factor combinations
    grid, codes = _grid_codes(result.model, data)
    np.testing.assert_array_equal(train_z, codes[grid.index_of(train_f)])
    np.testing.assert_array_equal(test_z, codes[grid.index_of(test_f)])
    # independent draws with replacement (disentanglement_lib's generate_batch_factor_code
    # called twice): repeats within a draw and points in both, impossible for a split of
    # one sample drawn without replacement
    train_rows, test_rows = grid.index_of(train_f), grid.index_of(test_f)
    assert len(np.unique(train_rows)) < 600
    assert len(np.intersect1d(train_rows, test_rows)) > 0
    order = np.random.default_rng(cfg.seed).permutation(min(len(grid), FACTOR_POINTS))
    split_test = np.random.default_rng(cfg.seed).choice(
        len(grid), size=min(len(grid), FACTOR_POINTS), replace=False)[order[:2048]]
    assert not set(test_rows) <= set(split_test)
    # one sklearn GradientBoostingClassifier per factor at sklearn's defaults (as
    # disentanglement_lib), each fitted on all 600 training points
    assert len(fitted) == 5
    for params, x in fitted:
        assert (params["n_estimators"], params["max_depth"], params["learning_rate"]) == (
            100, 3, 0.1)
        np.testing.assert_array_equal(x, train_z)
    assert 0.0 <= metrics["dci_disentanglement"] <= 1.0
    # MIG and the beta-VAE metric do not depend on the DCI keys
    default = result.metrics()
    assert (metrics["mig"], metrics["beta_vae_accuracy"]) == (default["mig"],
                                                              default["beta_vae_accuracy"])


def test_dci_draws_are_uniform_with_replacement_and_train_and_test_independent():
    sizes = (3, 4, 8, 8, 8)
    train, test = dci_draws(sizes, 20000, 500, seed=0)
    assert train.shape == (20000, 5) and test.shape == (500, 5)
    for k, size in enumerate(sizes):
        counts = np.bincount(train[:, k], minlength=size)
        assert len(counts) == size
        np.testing.assert_allclose(counts / 20000, 1 / size, atol=0.02)
    # the test points do not depend on how many training points were drawn
    np.testing.assert_array_equal(dci_draws(sizes, 10, 500, seed=0)[1], test)
    assert not np.array_equal(dci_draws(sizes, 10, 500, seed=1)[1], test)


def test_half_set_or_unknown_dci_keys_are_one_line_config_errors():
    # where they act: a run with them never starts (factor_metrics reads validated keys)
    with pytest.raises(BenchError, match="dci_train' and 'dci_test' are set together"):
        RunConfig(dci_train=100)
    with pytest.raises(BenchError, match="unknown dci_estimator 'lasso'"):
        RunConfig(dci_estimator="lasso")
    with pytest.raises(BenchError, match="at least 2 points"):
        RunConfig(dci_train=1, dci_test=5)


def test_metric_protocols_name_each_estimator():
    assert metric_protocols("shapes_small") == {
        "mig": "20-bin histogram, 6,144 points",
        "dci": "random forest, 2:1 split of 6,144 points",
        "beta_vae": "logistic regression, 10,000/5,000 points of 64 pairs",
    }
    paper = metric_protocols("shapes", "boosting", 10000, 5000)
    assert paper["dci"] == "gradient-boosted trees, 10,000/5,000 independent draws"
    assert paper["mig"] == "20-bin histogram, 10,000 points"
    assert metric_protocols(None)["mig"] == "20-bin histogram, up to 10,000 points"


def _stored_run(root, cfg: RunConfig, budget: str, *, drop_dci_keys: bool = False) -> None:
    from bench import store

    metrics = {"test_ll": -80.0, "test_elbo": -82.0, "rate": 10.0, "distortion": 72.0,
               "mig": 0.2, "dci_disentanglement": 0.4, "dci_completeness": 0.3,
               "dci_informativeness": 0.8, "beta_vae_accuracy": 80.0, "active_kl_units": 3.0,
               "kl_unit_0": 2.0, "kl_unit_1": 0.0}
    row = store.run_row(suite="dis", variant=f"beta{cfg.beta:g}", config=cfg,
                        status="finished", metrics=metrics,
                        provenance={"hostname": "node-a", "wall_seconds": 1.0}, budget=budget)
    if drop_dci_keys:  # as stored before the keys existed
        row = {k: v for k, v in row.items() if not k.startswith("cfg_dci_")}
    store.write_run(root, row)


def test_the_report_names_each_metrics_estimator_from_the_stored_config(tmp_path):
    from bench import report, store

    small = dict(SHAPES, epochs=1, k_eval=5)
    _stored_run(tmp_path, RunConfig(**small, beta=4.0), "smoke", drop_dci_keys=True)
    _stored_run(tmp_path, RunConfig(**small, beta=4.0, seed=1), "smoke", drop_dci_keys=True)
    paper = dict(small, dataset="shapes", dci_estimator="boosting", dci_train=10000,
                 dci_test=5000)
    _stored_run(tmp_path, RunConfig(**paper, beta=4.0), "paper")
    runs = report.prepare_runs(store.load_runs(tmp_path, suite="dis"))
    old = runs[runs["budget"] == "smoke"]
    assert "cfg_dci_estimator" not in old.dropna(axis=1, how="all").columns
    assert report.factor_metric_protocols(old)["metric_dci_disentanglement"] == (
        "random forest, 2:1 split of 6,144 points")
    new = runs[runs["budget"] == "paper"]
    assert report.factor_metric_protocols(new) == {
        "metric_mig": "20-bin histogram, 10,000 points",
        "metric_dci_disentanglement": "gradient-boosted trees, 10,000/5,000 independent draws",
        "metric_beta_vae_accuracy": "logistic regression, 10,000/5,000 points of 64 pairs",
    }
    panels = set(report.disentanglement_data(new)["panel"])
    assert "DCI disentanglement\n(gradient-boosted trees, 10,000/5,000 independent draws)" \
        in panels
    pages = report.build_report(tmp_path, tmp_path / "out")
    md = "".join(p.with_suffix(".md").read_text(encoding="utf-8")
                 for p in pages.suites.values())
    for heading in ("MIG (20-bin histogram, 6,144 points)",
                    "DCI disentanglement (random forest, 2:1 split of 6,144 points)",
                    "beta-VAE metric (%; logistic regression, 10,000/5,000 points of 64 pairs)",
                    "MIG (20-bin histogram, 10,000 points)",
                    "DCI disentanglement (gradient-boosted trees, 10,000/5,000 independent "
                    "draws)"):
        assert heading in md, heading
    assert ("Estimators: MIG: 20-bin histogram, 10,000 points; DCI: gradient-boosted trees, "
            "10,000/5,000 independent draws; beta-VAE metric: logistic regression, "
            "10,000/5,000 points of 64 pairs.") in md
