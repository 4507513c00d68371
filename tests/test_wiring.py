"""Wiring contracts (issue 14): each setting is observed where it ACTS, not where it is
written down. The learning rate and Adam's constants are read off the optimiser's
param_groups at every step it takes; the objective is read off the gradient the first
training step actually applies, against the gradient of the bound computed by hand from the
model's own log-weights; binarisation is read off the minibatches the model is fed.

Each test names the realistic bug it guards against. Everything is tiny (digits, one hidden
layer of 8 units, 2 latent units, 100 training images in batches of 50) so that every test
runs in a fraction of a second."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.components import OBJECTIVES, POSTERIORS
from bench.config import RunConfig
from bench.families import cvae as cvae_family
from bench.families import m2 as m2_family
from bench.families.lvm import train
from bench.families.registry import FAMILIES as REGISTRY
from bench.loop import load_data
from bench.models import LatentVariableModel, build_model
from bench.models.lvm import PLAIN
from bench.optim import BurdaAdam, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")  # the tests share a small CPU

TINY = dict(dataset="digits", train_size=100, test_size=10, hidden=((8,),), latent=(2,),
            k_eval=2, batch_size=50)
STEPS_PER_EPOCH = 2  # 100 training images in minibatches of 50

# the model-family settings each family needs (lvm is the default)
FAMILIES = {
    "lvm": {},
    "conditional_nn": dict(model="conditional_nn", condition="quadrants", given_quadrants=1),
    "cvae": dict(model="cvae", condition="quadrants", given_quadrants=1),
    "m2": dict(model="m2", labelled=20),
    "classifier": dict(model="classifier", labelled=20),
}
# optimiser stages per run: a quadrant cvae trains its baseline, then the CVAE, each with
# its own optimiser over the full schedule
STAGES = {"lvm": 1, "conditional_nn": 1, "cvae": 2, "m2": 1, "classifier": 1}


def test_every_registered_model_is_wired_here():
    # Guards against: a family added to the registry that none of the parametrised
    # tests below trains (mixture is fitted by EM: no optimiser, no k, no binarisation).
    assert set(FAMILIES) | {"mixture"} == set(REGISTRY.models())
    assert set(HAND_LOSSES) | set(HAND_GRADIENTS) == set(OBJECTIVES.names())


@pytest.fixture(scope="module")
def digits():
    data = load_data(RunConfig(**TINY))
    assert data.binarized and data.train.shape == (100, 64)
    return data


def config(family: str = "lvm", **overrides) -> RunConfig:
    return RunConfig(**{**TINY, **FAMILIES[family], **overrides})


def run_family(cfg: RunConfig, data):
    """Train cfg with its family's own entry point."""
    if cfg.model == "lvm":
        return train(cfg, data)
    if cfg.model in ("cvae", "conditional_nn"):
        return cvae_family.run(cfg, data)
    return m2_family.run(cfg, data)


def spy_optimizer_steps(monkeypatch) -> list[dict]:
    """Every step any torch Adam or BurdaAdam takes, in order: its class and, per param
    group, the lr, betas and eps it steps with (read at the moment of the step)."""
    steps: list[dict] = []

    def spy(cls):
        real = cls.step

        def step(self, *args, **kwargs):
            steps.append({
                "cls": type(self),
                "lr": [g["lr"] for g in self.param_groups],
                "betas": [tuple(g["betas"]) for g in self.param_groups],
                "eps": [g["eps"] for g in self.param_groups],
            })
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", step)

    spy(torch.optim.Adam)
    spy(BurdaAdam)
    return steps


# ------------------------------------------------------------------ learning rate per step
BURDA3 = [1e-3] * 1 + [7.2e-4] * 3 + [5.2e-4] * 9  # 1 + 3 + 9 = 13 epochs (lr_stages)
# compared with rel=1e-12, i.e. exactly up to the last bit: lr_stages computes 5.2 / 1e4,
# which is one ulp above the literal 5.2e-4


def test_the_burda_schedule_of_three_stages_is_the_authors_rounded_rates():
    # the values the step-level tests below expect, pinned against the config's own schedule
    stages = config(schedule="burda", burda_stages=3).lr_stages()
    assert [e for e, _ in stages] == [1, 3, 9]
    assert [lr for _, lr in stages] == pytest.approx([1e-3, 7.2e-4, 5.2e-4], rel=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("optimizer", ["adam", "burda_adam"])
def test_every_step_uses_the_burda_schedules_rate_of_its_epoch(family, optimizer, digits,
                                                               monkeypatch):
    # Guards against: the trainer recording the schedule's lr in its curves while never
    # setting it on the optimiser (every step at the construction rate), or setting it only
    # at the start of training (the first stage's rate for all 13 epochs), in any family's
    # loop (each builds its own optimiser; a cvae one per stage).
    steps = spy_optimizer_steps(monkeypatch)
    result = run_family(config(family, schedule="burda", burda_stages=3, optimizer=optimizer),
                        digits)
    assert result.status == "finished"
    want = [lr for lr in BURDA3 for _ in range(STEPS_PER_EPOCH)] * STAGES[family]
    assert len(steps) == len(want) == 26 * STAGES[family]
    want_cls = BurdaAdam if optimizer == "burda_adam" else torch.optim.Adam
    assert all(s["cls"] is want_cls for s in steps)
    assert [s["lr"][0] for s in steps] == pytest.approx(want, rel=1e-12)
    assert all(len(set(s["lr"])) == 1 for s in steps)  # every param group alike


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_step_uses_the_constant_rate_of_the_config(family, digits, monkeypatch):
    # Guards against: the loop overwriting cfg.lr with another rate every epoch (e.g. the
    # constant schedule's stage built at a default 1e-3 instead of cfg.lr), so a suite's `lr`
    # axis silently trains every point alike. (The rate an optimiser is constructed with never
    # acts: every epoch sets its rate before its first step, which the burda test pins.)
    steps = spy_optimizer_steps(monkeypatch)
    run_family(config(family, lr=2.5e-3, epochs=2), digits)
    assert [s["lr"] for s in steps] == [[2.5e-3]] * (2 * STEPS_PER_EPOCH * STAGES[family])


# ------------------------------------------------------------------ Adam's constants
@pytest.mark.parametrize("family", list(FAMILIES))
def test_adam_steps_with_the_configs_betas_and_eps(family, digits, monkeypatch):
    # Guards against: make_optimizer (or a family building its own Adam) dropping
    # adam_beta1 / adam_beta2 / adam_eps, so torch's defaults (0.9, 0.999, 1e-8) train a
    # config that says otherwise (eps = 1e-4 is Burda et al.'s protocol).
    steps = spy_optimizer_steps(monkeypatch)
    run_family(config(family, epochs=1, adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6), digits)
    assert len(steps) == STEPS_PER_EPOCH * STAGES[family]
    for s in steps:
        assert s["cls"] is torch.optim.Adam
        assert s["betas"] == [(0.8, 0.99)] and s["eps"] == [1e-6]


def test_make_optimizer_steps_at_the_configs_rate():
    # Guards against: make_optimizer building Adam at a hard-coded 1e-3. The trainers set
    # the rate of every epoch themselves, but `vaebench profile` and the microbenchmarks
    # step the optimiser straight from make_optimizer: Adam's first step moves each weight
    # by lr * g / (|g| + eps).
    param = torch.nn.Parameter(torch.zeros(3))
    cfg = config(lr=0.0123, adam_eps=1e-6)
    optimizer = make_optimizer([param], cfg)
    param.grad = torch.tensor([1.0, -2.0, 0.5])
    optimizer.step()
    expected = -0.0123 * param.grad / (param.grad.abs() + 1e-6)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_burda_adam_is_the_optimiser_that_steps(family, digits, monkeypatch):
    # Guards against: a family calling torch.optim.Adam directly (or make_optimizer ignoring
    # cfg.optimizer), so optimizer = "burda_adam" runs torch's Adam under the authors' name.
    steps = spy_optimizer_steps(monkeypatch)
    run_family(config(family, epochs=1, optimizer="burda_adam"), digits)
    assert len(steps) == STEPS_PER_EPOCH * STAGES[family]
    for s in steps:
        assert s["cls"] is BurdaAdam
        assert s["betas"] == [(0.99, 0.999)] and s["eps"] == [1e-4]


# ------------------------------------------------------------------ the bound minimised
def first_step(cfg: RunConfig, data, monkeypatch, x_in: bool = False) -> dict:
    """Train cfg for one step (train_size = batch_size, one epoch) and capture what that step
    used: the minibatch the model was fed, k, the generator's state before the model drew its
    noise, the weights it was evaluated at, and the gradient the optimiser then applied."""
    assert cfg.train_size == cfg.batch_size and cfg.epochs == 1
    seen: dict = {}
    real_forward = LatentVariableModel.forward
    real_step = torch.optim.Adam.step

    def forward(self, x, k, generator=None, views=PLAIN, x_in=None, noise=None):
        if torch.is_grad_enabled() and "x" not in seen:  # the training step, not evaluation
            seen.update(x=x.clone(), k=k, generator=generator.get_state(), x_in=x_in,
                        weights={n: p.detach().clone() for n, p in self.named_parameters()})
        return real_forward(self, x, k, generator=generator, views=views,
                            x_in=x_in, noise=noise)

    def step(self, *args, **kwargs):
        if "grads" not in seen:
            seen["grads"] = [p.grad.detach().clone() for p in self.param_groups[0]["params"]]
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(LatentVariableModel, "forward", forward)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train(cfg, data)
    monkeypatch.undo()
    assert (seen["x_in"] is not None) == x_in
    model = build_model(cfg, data.dim, image_shape=data.image_shape,
                        pixel_mean=data.pixel_mean)
    model.load_state_dict(seen["weights"])
    names = [n for n, _ in model.named_parameters()]
    seen["grads"] = dict(zip(names, seen["grads"], strict=True))
    seen["model"] = model
    return seen


def hand_gradient(seen: dict, loss_of) -> dict[str, torch.Tensor]:
    """The gradient of loss_of(model, x, k, generator) with the captured weights, minibatch
    and generator state."""
    model = seen["model"]
    generator = torch.Generator().manual_seed(0)
    generator.set_state(seen["generator"])
    model.zero_grad(set_to_none=True)
    loss_of(model, seen["x"], seen["k"], generator).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def assert_same_gradient(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def gradient_gap(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def iwae_loss_by_hand(model, x, k, generator):
    log_w = model(x, k, generator=generator).log_weights  # (k, B)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k)).mean()


def vae_loss_by_hand(model, x, k, generator, beta=1.0, x_in=None):
    sample = model(x, k, generator=generator, x_in=x_in)
    return -(sample.log_px_given_z.mean(0) - beta * sample.kl_analytic).mean()


HAND_LOSSES = {"iwae": iwae_loss_by_hand, "vae": vae_loss_by_hand}


# ---- the estimators after IWAE (issue 25), written the way their authors' code computes
# them: the decoder's and the encoder's gradients as two separate gradients, each over its
# own variables (dreg_estimators/main_loop.py takes tf.gradients of each surrogate over the
# decoder's and the encoder's variable lists), from the model's parts at the drawn noise.
# The trainer computes all of them in one backward pass through the model's split view.
def _parts(model, x, k, generator):
    """(log p(x, z), log q(z|x), log q at stopped mean and variance), each (k, B), for one
    stochastic layer: z = mean + std * eps, eps drawn as the model draws it."""
    mean, logvar, _ = model.encoders[0].net.params(x)
    eps = torch.randn((k, *mean.shape), generator=generator, dtype=mean.dtype)
    z = mean + torch.exp(0.5 * logvar) * eps
    log_p = model.decoder.log_prob(x, z) - 0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)

    def log_normal(m, lv):
        return -0.5 * ((z - m) ** 2 / lv.exp() + lv + math.log(2 * math.pi)).sum(-1)

    return log_p, log_normal(mean, logvar), log_normal(mean.detach(), logvar.detach())


def _lme(log_w, dim=0):
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def _two_gradients(model, decoder_bound, encoder_surrogate) -> dict[str, torch.Tensor]:
    """The gradients of minus the batch means: the decoder's of `decoder_bound`, the
    encoder's of `encoder_surrogate`."""
    out = {}
    for part, value in (("decoder", decoder_bound), ("encoder", encoder_surrogate)):
        named = list(getattr(model, part + "s" if part == "encoder" else part)
                     .named_parameters(prefix=part + "s" if part == "encoder" else part))
        grads = torch.autograd.grad(-value.mean(), [p for _, p in named], retain_graph=True)
        out.update({n: g for (n, _), g in zip(named, grads, strict=True)})
    return out


def stl_by_hand(model, x, k, generator, cfg):
    log_p, _, log_q_stop = _parts(model, x, k, generator)
    bound = _lme(log_p - log_q_stop)  # Roeder et al.'s iwae.py: q's parameters blocked
    return _two_gradients(model, bound, bound)


def _weights(log_w):
    return torch.softmax(log_w.detach(), 0)


def dreg_by_hand(model, x, k, generator, cfg):
    log_p, log_q, log_q_stop = _parts(model, x, k, generator)
    log_w = log_p - log_q
    return _two_gradients(model, _lme(log_w),
                          (_weights(log_w) ** 2 * (log_p - log_q_stop)).sum(0))


def rws_dreg_by_hand(model, x, k, generator, cfg):
    log_p, log_q, log_q_stop = _parts(model, x, k, generator)
    log_w, w = log_p - log_q, _weights(log_p - log_q)
    return _two_gradients(model, _lme(log_w), ((w - w**2) * (log_p - log_q_stop)).sum(0))


def _miwae(log_w, m):
    return _lme(log_w.reshape(m, -1, log_w.shape[1]), dim=1).mean(0)


def miwae_by_hand(model, x, k, generator, cfg):
    log_p, log_q, _ = _parts(model, x, k, generator)
    bound = _miwae(log_p - log_q, cfg.param("m"))
    return _two_gradients(model, bound, bound)


def piwae_by_hand(model, x, k, generator, cfg):
    log_p, log_q, _ = _parts(model, x, k, generator)
    return _two_gradients(model, _lme(log_p - log_q), _miwae(log_p - log_q, cfg.param("m")))


def ciwae_by_hand(model, x, k, generator, cfg):
    log_p, log_q, _ = _parts(model, x, k, generator)
    bound = cfg.beta * (log_p - log_q).mean(0) + (1 - cfg.beta) * _lme(log_p - log_q)
    return _two_gradients(model, bound, bound)


HAND_GRADIENTS = {"stl": stl_by_hand, "dreg": dreg_by_hand, "rws_dreg": rws_dreg_by_hand,
                  "miwae": miwae_by_hand, "piwae": piwae_by_hand, "ciwae": ciwae_by_hand}
ESTIMATOR_SETTINGS = {"rws_dreg": dict(kl_direction="forward"), "miwae": dict(params={"m": 5}),
                      "piwae": dict(params={"m": 5}), "ciwae": dict(beta=0.3)}


@pytest.mark.parametrize("objective", list(HAND_GRADIENTS))
def test_each_estimator_steps_on_its_authors_two_gradients(objective, fifty, monkeypatch):
    # Guards against: an estimator whose one-backward surrogate is not the estimator, e.g.
    # DReG with the weights w instead of w^2, STL with log q's parameters live (the plain
    # IWAE gradient), PIWAE's encoder on IWAE(M x K) or its decoder on MIWAE, MIWAE's
    # groups the wrong way round (pythae's M axis), the split view's stopped copies leaking
    # the path gradient into the decoder or the decoder's into the encoder.
    settings = {**ONE_STEP, "k": 10, **ESTIMATOR_SETTINGS.get(objective, {})}
    cfg = config(objective=objective, **settings)
    seen = first_step(cfg, fifty, monkeypatch)
    want = HAND_GRADIENTS[objective](seen["model"], seen["x"], seen["k"],
                                     _generator(seen), cfg)
    assert_same_gradient(seen["grads"], want)
    iwae = hand_gradient(seen, iwae_loss_by_hand)  # the estimator is not IWAE's
    assert gradient_gap(seen["grads"], iwae) > 1e-4


def _generator(seen: dict) -> torch.Generator:
    generator = torch.Generator().manual_seed(0)
    generator.set_state(seen["generator"])
    return generator


ONE_STEP = dict(train_size=50, batch_size=50, epochs=1, k=5)


@pytest.fixture(scope="module")
def fifty():
    return load_data(RunConfig(**{**TINY, "train_size": 50}))


def test_the_iwae_and_vae_objectives_are_the_bounds_their_gradients_descend(fifty, monkeypatch):
    # Guards against: objective_for (or the trainer) handing the VAE bound to an "iwae"
    # config (or the reverse), which trains and reports plausibly but is not IWAE-k: every
    # IWAE-vs-VAE comparison of the suite would compare a method with itself.
    iwae = first_step(config(objective="iwae", **ONE_STEP), fifty, monkeypatch)
    vae = first_step(config(objective="vae", **ONE_STEP), fifty, monkeypatch)
    # the same weights, minibatch and noise: only the objective differs
    assert torch.equal(iwae["x"], vae["x"]) and iwae["k"] == vae["k"] == 5
    assert torch.equal(iwae["generator"], vae["generator"])
    assert all(torch.equal(iwae["weights"][n], vae["weights"][n]) for n in iwae["weights"])
    assert set(torch.unique(iwae["x"]).tolist()) == {0.0, 1.0}

    assert_same_gradient(iwae["grads"], hand_gradient(iwae, iwae_loss_by_hand))
    assert_same_gradient(vae["grads"], hand_gradient(vae, vae_loss_by_hand))
    assert gradient_gap(iwae["grads"], vae["grads"]) > 1e-3  # far beyond the tolerance


def test_beta_weights_the_kl_of_the_bound_the_trainer_descends(fifty, monkeypatch):
    # Guards against: the objective table dropping cfg.beta (every beta-VAE row of the
    # suites trains the plain ELBO and the rate-distortion sweep is flat).
    beta4 = first_step(config(objective="vae", beta=4.0, **ONE_STEP), fifty, monkeypatch)
    assert_same_gradient(beta4["grads"], hand_gradient(
        beta4, lambda m, x, k, g: vae_loss_by_hand(m, x, k, g, beta=4.0)))
    elbo = hand_gradient(beta4, vae_loss_by_hand)
    assert gradient_gap(beta4["grads"], elbo) > 1e-3


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_input_dropout_zeroes_the_encoders_pixels_at_its_rate(p, fifty, monkeypatch):
    # Guards against: input_dropout never reaching the model (x_in left None, so an
    # "inpainting-trained" encoder is a plain one) or applied at a fixed rate; and the
    # decoder scoring the dropped image instead of the full one.
    seen = first_step(config(objective="vae", input_dropout=p, **ONE_STEP), fifty,
                      monkeypatch, x_in=True)
    x, x_in = seen["x"], seen["x_in"]
    assert x_in is not None and bool((x_in <= x).all())
    kept = float(x_in.sum() / x.sum())  # about 1500 lit pixels: binomial sd 0.013
    assert abs((1 - kept) - p) < 0.05
    assert_same_gradient(seen["grads"], hand_gradient(
        seen, lambda m, xb, k, g: vae_loss_by_hand(m, xb, k, g, x_in=x_in)))


@pytest.mark.parametrize("posterior", POSTERIORS.names())
def test_every_posterior_is_the_one_trained_and_all_its_weights_learn(posterior, fifty,
                                                                    monkeypatch):
    # Guards against: build_model ignoring cfg.posterior (a "flow" row that is a Gaussian),
    # or a flow whose parameters get no gradient (built but not applied to z).
    flow = {} if posterior == "gaussian" else {"posterior": posterior, "flow_steps": 2}
    seen = first_step(config(objective="iwae", **flow, **ONE_STEP), fifty, monkeypatch)
    if flow:  # a flow's weights come on top of the Gaussian's (its base distribution)
        gaussian = set(first_step(config(objective="iwae", **ONE_STEP), fifty,
                                  monkeypatch)["grads"])
        assert gaussian < set(seen["grads"])
    for name, grad in seen["grads"].items():
        assert float(grad.abs().max()) > 0, name
    assert_same_gradient(seen["grads"], hand_gradient(seen, iwae_loss_by_hand))


@pytest.mark.parametrize("family", ["cvae", "m2"])
def test_k_is_the_number_of_samples_each_family_draws_in_training(family, digits,
                                                                  monkeypatch):
    # Guards against: a family's loop calling its model or loss with k = 1 whatever the
    # config says (the lvm's k is observed in the bound test above).
    drawn: list[int] = []
    if family == "m2":
        real = m2_family.M2.noise

        def noise(self, shape, k, generator, like):
            if torch.is_grad_enabled():
                drawn.append(k)
            return real(self, shape, k, generator, like)

        monkeypatch.setattr(m2_family.M2, "noise", noise)
    else:
        real = cvae_family.QuadrantCVAE.forward

        def forward(self, x, k, generator=None, eps=None):
            if torch.is_grad_enabled():  # the samples it draws, or is given drawn
                drawn.append(k if eps is None else eps.shape[0])
            return real(self, x, k, generator, eps)

        monkeypatch.setattr(cvae_family.QuadrantCVAE, "forward", forward)
    run_family(config(family, epochs=1, k=3), digits)
    assert drawn and set(drawn) == {3}


def wake_phi_encoder_loss_by_hand(model, x, k, generator):
    """Minus the wake-phi surrogate (Le et al. 2019), written out: z drawn from q with the
    captured noise and then held fixed, log q(z|x) the Gaussian density at that z, and the
    self-normalised importance weights treated as constants."""
    mean, logvar, _ = model.encoders[0].net.params(x)
    eps = torch.randn((k, *mean.shape), generator=generator, dtype=mean.dtype)
    z = (mean + torch.exp(0.5 * logvar) * eps).detach()
    log_q = (-0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)
    log_p = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(-1) + model.decoder.log_prob(x, z)
    weights = torch.softmax((log_p - log_q).detach(), dim=0)
    return -(weights * log_q).sum(0).mean()


def test_forward_kl_trains_the_encoder_by_the_wake_phi_update(fifty, monkeypatch):
    # Guards against: the trainer not passing detach_samples for kl_direction "forward", so
    # the reparameterised samples carry the decoder's gradient into q and log q's score is
    # evaluated at eps (mean gradient 0): the "forward KL" encoder silently trains on
    # neither KL.
    forward = first_step(config(objective="iwae", kl_direction="forward", **ONE_STEP), fifty,
                         monkeypatch)
    reverse = first_step(config(objective="iwae", **ONE_STEP), fifty, monkeypatch)
    assert torch.equal(forward["x"], reverse["x"])
    assert torch.equal(forward["generator"], reverse["generator"])

    encoder = lambda grads: {n: g for n, g in grads.items() if n.startswith("encoders.")}
    want = encoder(hand_gradient(forward, wake_phi_encoder_loss_by_hand))
    assert len(want) == 4  # two layers of weights and biases
    assert_same_gradient(encoder(forward["grads"]), want)
    assert gradient_gap(encoder(forward["grads"]), encoder(reverse["grads"])) > 1e-3
    # the decoder still ascends the IWAE bound at those samples
    decoder = lambda grads: {n: g for n, g in grads.items() if n.startswith("decoder.")}
    assert_same_gradient(decoder(forward["grads"]),
                         decoder(hand_gradient(forward, iwae_loss_by_hand)))


# ------------------------------------------------------------------ dynamic binarisation
def epoch_totals(batches: list[torch.Tensor], per_epoch: int) -> list[float]:
    return [float(torch.cat(batches[i:i + per_epoch]).sum())
            for i in range(0, len(batches), per_epoch)]


def test_the_lvm_is_fed_freshly_binarised_minibatches(digits, monkeypatch):
    # Guards against: the lvm trainer feeding the grey intensities (Bernoulli likelihood of
    # non-binary data: the bound is not a log-likelihood of binary MNIST and is not
    # comparable with the papers'), or binarising once up front (static binarisation
    # overfits: Burda et al. binarise afresh every time an image is used).
    seen: list[torch.Tensor] = []
    real_forward = LatentVariableModel.forward

    def forward(self, x, *args, **kwargs):
        if torch.is_grad_enabled():  # training, not evaluation
            seen.append(x.detach().clone())
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(LatentVariableModel, "forward", forward)
    assert bool(((digits.train > 0) & (digits.train < 1)).any())  # grey: the check can fail
    train(config(epochs=2), digits)
    assert len(seen) == 2 * STEPS_PER_EPOCH
    for xb in seen:
        assert xb.shape == (50, 64) and set(torch.unique(xb).tolist()) == {0.0, 1.0}
    first, second = epoch_totals(seen, STEPS_PER_EPOCH)  # each epoch: every image once
    assert first != second  # a fresh draw, not the same 0/1 images in another order


def grey(data):
    """`data` with every training image the same flat 0.5 grey: any two minibatches are
    then the same images, and only the binarisation noise can tell them apart."""
    return dataclasses.replace(data, train=torch.full_like(data.train, 0.5))


def test_every_lvm_minibatch_gets_its_own_binarisation_noise(digits, monkeypatch):
    # Guards against: a binarisation generator re-created (re-seeded) for every minibatch,
    # so every batch gets the same noise; the image totals of a shuffled epoch still differ
    # then, so the test above cannot see it.
    seen: list[torch.Tensor] = []
    real_forward = LatentVariableModel.forward

    def forward(self, x, *args, **kwargs):
        if torch.is_grad_enabled():
            seen.append(x.detach().clone())
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(LatentVariableModel, "forward", forward)
    train(config(epochs=2), grey(digits))
    assert len(seen) == 2 * STEPS_PER_EPOCH
    assert len({tuple(xb.flatten().tolist()) for xb in seen}) == len(seen)


def test_every_m2_minibatch_gets_its_own_binarisation_noise(digits, monkeypatch):
    # Guards against: M2's loop re-seeding its binarisation per step (as above).
    seen: list[torch.Tensor] = []
    real_loss = m2_family.semi_supervised_loss

    def loss(model, x_u, x_l, y_l, **kwargs):
        seen.extend([x_u.detach().clone(), x_l.detach().clone()])
        return real_loss(model, x_u, x_l, y_l, **kwargs)

    monkeypatch.setattr(m2_family, "semi_supervised_loss", loss)
    m2_family.run(config("m2", epochs=2), grey(digits))
    assert len(seen) == 2 * 2 * STEPS_PER_EPOCH
    assert len({tuple(xb.flatten().tolist()) for xb in seen}) == len(seen)


def test_m2_is_fed_freshly_binarised_labelled_and_unlabelled_minibatches(digits, monkeypatch):
    # Guards against: M2's step skipping binarize_dynamic (its loop is its own, not the lvm
    # trainer's), so M2 trains on grey levels while the test set is 0/1.
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_loss = m2_family.semi_supervised_loss

    def loss(model, x_u, x_l, y_l, **kwargs):
        seen.append((x_u.detach().clone(), x_l.detach().clone()))
        return real_loss(model, x_u, x_l, y_l, **kwargs)

    monkeypatch.setattr(m2_family, "semi_supervised_loss", loss)
    m2_family.run(config("m2", epochs=2), digits)
    assert len(seen) == 2 * STEPS_PER_EPOCH
    for x_u, x_l in seen:
        assert x_u.shape == (50, 64) and set(torch.unique(x_u).tolist()) == {0.0, 1.0}
        assert x_l.shape == (20, 64) and set(torch.unique(x_l).tolist()) == {0.0, 1.0}
    first, second = epoch_totals([x_u for x_u, _ in seen], STEPS_PER_EPOCH)
    assert first != second
    labelled = [float(x_l.sum()) for _, x_l in seen]  # each step: all 20 labelled images
    assert len(set(labelled)) > 1
