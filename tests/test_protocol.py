"""The authors' protocol (issue 13): their Adam, their initialisation, and run identities that
change when the code's results do (bench.config.PROTOCOL)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench import config as bench_config
from bench import store
from bench.cli import main
from bench.config import RunConfig
from bench.data import load_dataset
from bench.families import cvae, m2
from bench.families.lvm import train
from bench.models import build_model
from bench.models.init import output_bias
from bench.optim import BurdaAdam, loss_scale, make_optimizer
from bench.runner import explain, plan
from bench.suite import Suite, Variant

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ burda_adam
def _theano_adam(w0: np.ndarray, grads_of, steps: int, lr: float) -> list[np.ndarray]:
    """yburda/iwae optimizers.py, transcribed: every update of one Theano call reads the
    values from before the call (so the parameter step uses the previous m and v), v starts
    at 1, the timestep at 1, and the authors ASCEND the objective (grad = -dloss)."""
    b1, b2 = 0.99, 0.999
    w, m, v, t = w0.copy(), np.zeros_like(w0), np.ones_like(w0), 1.0
    path = []
    for _ in range(steps):
        g = -grads_of(w)  # gradient of the objective
        alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        new_w = w + alpha * m / (np.sqrt(v) + 1e-4)
        m, v, t = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, t + 1
        w = new_w
        path.append(w.copy())
    return path


def test_burda_adam_matches_the_authors_update():
    # Bugs guarded: v initialised to 0 (torch's Adam), eps inside the sqrt, the current
    # gradient in the step (no Theano delay), a timestep from 0, beta1 0.9.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=20)

    def summed_loss_grad(w):  # d/dw of sum_i (x_i w - y_i)^2
        return 2 * x.T @ (x @ w - y)

    w0 = np.array([0.3, 0.2, -0.1])
    expected = _theano_adam(w0, summed_loss_grad, steps=6, lr=1e-2)

    w = torch.tensor(w0, requires_grad=True)
    opt = BurdaAdam([w], lr=1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    got = []
    for _ in range(6):
        opt.zero_grad()
        ((xt @ w - yt) ** 2).sum().backward()
        opt.step()
        got.append(w.detach().numpy().copy())
    np.testing.assert_allclose(got[0], w0, rtol=0, atol=0)  # m_0 = 0: the first call moves nothing
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-12, atol=1e-14)
    # and it is not torch's Adam
    torch_w = torch.tensor(w0, requires_grad=True)
    torch_opt = torch.optim.Adam([torch_w], lr=1e-2, betas=(0.99, 0.999), eps=1e-4)
    for _ in range(6):
        torch_opt.zero_grad()
        ((xt @ torch_w - yt) ** 2).sum().backward()
        torch_opt.step()
    assert np.abs(torch_w.detach().numpy() - got[-1]).max() > 1e-3


def test_burda_adam_state_survives_a_checkpoint():
    w = nn.Linear(3, 1)
    opt = make_optimizer(w, RunConfig(optimizer="burda_adam"))
    for _ in range(2):
        opt.zero_grad()
        w(torch.ones(4, 3)).sum().backward()
        opt.step()
    clone = make_optimizer(w, RunConfig(optimizer="burda_adam"))
    clone.load_state_dict(opt.state_dict())
    state = clone.state[next(iter(w.parameters()))]
    assert state["step"] == 3 and float(state["exp_avg_sq"].min()) > 0.99  # v from 1, not 0


def test_burda_adam_trains_on_the_minibatch_sum():
    # Bug guarded: the trainer backpropagating the minibatch MEAN for burda_adam (the authors'
    # gradient is of the sum; with v0 = 1 and eps = 1e-4 the scale changes every step).
    cfg = RunConfig(dataset="digits", hidden=((8,),), latent=(2,), epochs=1, batch_size=25,
                    train_size=50, test_size=10, k_eval=2)
    data = load_dataset("digits", train_size=50, test_size=10)
    first_grads = {}
    for name in ("adam", "burda_adam"):
        seen = []
        base = torch.optim.Adam.step if name == "adam" else BurdaAdam.step

        def spy(self, closure=None, _seen=seen, _base=base):
            _seen.append(self.param_groups[0]["params"][0].grad.clone())
            return _base(self, closure)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.optim.Adam if name == "adam" else BurdaAdam, "step", spy)
            train(cfg.replace(optimizer=name), data)
        first_grads[name] = seen[0]
    assert loss_scale(cfg.replace(optimizer="burda_adam"), 25) == 25
    torch.testing.assert_close(first_grads["burda_adam"], 25 * first_grads["adam"])


def test_burda_adam_refuses_adam_settings_and_non_neural_models():
    from bench.errors import BenchError
    with pytest.raises(BenchError, match="apply to optimizer 'adam' only"):
        RunConfig(optimizer="burda_adam", adam_beta1=0.99)
    with pytest.raises(BenchError, match="key 'optimizer' applies to models 'lvm', 'cvae'"):
        RunConfig(model="mixture", components=3, iterations=2, optimizer="burda_adam")


def test_burda_schedule_uses_the_codes_rounded_rates():
    stages = RunConfig(schedule="burda").lr_stages()
    assert [e for e, _ in stages] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert [round(lr * 1e4, 6) for _, lr in stages] == [10, 7.2, 5.2, 3.7, 2.7, 1.9, 1.4, 1.0]


# ------------------------------------------------------------------------ initialisation
def _linear_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_authors_init_sets_the_output_bias_to_the_pixel_logits():
    data = load_dataset("digits", train_size=300, test_size=10)
    cfg = RunConfig(dataset="digits", hidden=((32, 32),), latent=(4,))
    model = build_model(cfg, data.dim, pixel_mean=data.pixel_mean)
    mean = data.train.double().mean(0)
    want = torch.logit(mean.clamp(1e-3, 1 - 1e-3)).float()
    torch.testing.assert_close(model.decoder.net[-1].bias.detach(), want)
    # a digits border pixel is always 0: the clip keeps its bias finite (logit(1e-3))
    assert float(want.min()) == pytest.approx(math.log(1e-3 / (1 - 1e-3)), abs=1e-5)
    # every other bias is zero
    others = [m.bias for m in _linear_layers(model) if m is not model.decoder.net[-1]]
    assert others and all(float(b.detach().abs().max()) == 0.0 for b in others)


def test_authors_init_weights_have_glorot_variance():
    # 784 -> 200 and 200 -> 784 layers: var = 2 / (fan_in + fan_out) for uniform(+-sqrt(6/..))
    cfg = RunConfig(dataset="mnist", hidden=((200, 200),), latent=(50,))
    model = build_model(cfg, 784, pixel_mean=torch.full((784,), 0.13, dtype=torch.float64))
    for layer in _linear_layers(model):
        n_out, n_in = layer.weight.shape
        bound = math.sqrt(6.0 / (n_in + n_out))
        w = layer.weight.detach().double()
        assert float(w.abs().max()) <= bound
        assert float(w.var()) == pytest.approx(2.0 / (n_in + n_out), rel=0.05)
    # torch's default (kaiming-uniform with a=sqrt(5)): var = 1 / (3 fan_in): 784 -> 200 differs
    torch_model = build_model(cfg.replace(init="torch"), 784)
    first = torch_model.encoders[0].net.trunk[0][0].weight.detach().double()
    assert float(first.var()) == pytest.approx(1.0 / (3 * 784), rel=0.05)


def test_conv_decoder_gets_the_logit_of_the_mean_pixel():
    cfg = RunConfig(dataset="digits", architecture="conv", latent=(3,))
    mean = torch.linspace(0.0, 0.5, 64, dtype=torch.float64)
    model = build_model(cfg, 64, image_shape=(8, 8), pixel_mean=mean)
    bias = model.decoder.output_layer.bias.detach().double()
    torch.testing.assert_close(bias, output_bias(mean.mean()).reshape(1), rtol=1e-6, atol=1e-6)


def test_cvae_and_m2_decoders_start_at_their_pixel_logits():
    data = load_dataset("digits", train_size=300, test_size=20)
    want = output_bias(data.pixel_mean).float()
    cfg = RunConfig(dataset="digits", model="cvae", condition="quadrants", given_quadrants=1,
                    hidden=((16,),), latent=(2,))
    quadrant = cvae.build(cfg, data)
    missing = quadrant.missing_index
    torch.testing.assert_close(quadrant.baseline.net[-1].bias.detach(), want[missing])
    torch.testing.assert_close(quadrant.generation_net.rest[-1][-1].bias.detach(), want[missing])
    # the cvae's baseline is still exactly the conditional_nn of the same seed
    nn_model = cvae.build(cfg.replace(model="conditional_nn"), data)
    for a, b in zip(nn_model.state_dict().values(), quadrant.baseline.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)
    label = cvae.build(cfg.replace(condition="label", given_quadrants=0), data)
    torch.testing.assert_close(label.decoder.rest[-1][-1].bias.detach(), want)
    semi = m2.build_m2(RunConfig(dataset="digits", model="m2", labelled=20, hidden=((16,),),
                                 latent=(2,)), data.dim, data.pixel_mean)
    torch.testing.assert_close(semi.decoder_out[-1].bias.detach(), want)
    assert float(semi.classifier[-1].bias.detach().abs().max()) == 0.0


# ------------------------------------------------------------------------ identity
def test_run_ids_of_both_protocols_are_pinned(monkeypatch):
    # Protocol 1 hashed no version: its ids (those of the stores and baselines written before
    # issue 13) are unchanged; every later protocol changes every id (2 was 3246fd5efdf7b467).
    assert RunConfig().run_id == "a9aa99b6761ad534"
    assert '"protocol":3' in RunConfig().canonical_json()
    monkeypatch.setattr(bench_config, "PROTOCOL", 1)
    assert RunConfig().run_id == "a22183d31700ebeb"
    assert "protocol" not in RunConfig().canonical_json()


def _suite(cfg: RunConfig) -> Suite:
    variant = Variant(name="vae", config=cfg)
    return Suite(name="s1", description="", path=None, budget=None, budgets=(), seeds=(0,),
                 variants=(variant,), references=(), grid_axes=())


def _write(results, cfg: RunConfig, status: str = "finished", budget: str | None = None
           ) -> None:
    row = store.run_row(suite="s1", variant="vae", config=cfg, status=status,
                        metrics={"test_ll": -90.0}, provenance={"git_commit": "x"},
                        budget=budget)
    store.write_run(results, row, [])


def test_a_row_of_the_previous_protocol_is_not_served_as_cached(tmp_path, monkeypatch):
    # Bug guarded: the protocol left out of the run_id (or out of the cache check), so a store
    # of PyTorch-init results is served as cached for the authors'-init code.
    cfg = RunConfig(dataset="digits", epochs=3)
    with monkeypatch.context() as old_code:
        old_code.setattr(bench_config, "PROTOCOL", 1)
        old_id = cfg.run_id
        _write(tmp_path, cfg)
        assert plan(_suite(cfg), tmp_path)[1] == [_suite(cfg).variants[0]]  # cached back then
    assert cfg.run_id != old_id
    to_run, cached = plan(_suite(cfg), tmp_path)
    assert [v.run_id for v in to_run] == [cfg.run_id] and cached == []
    why = explain(_suite(cfg), tmp_path, to_run)[cfg.run_id]
    assert why.startswith(f"{old_id} is a result of protocol 1, this code is protocol 3")
    _write(tmp_path, cfg)
    assert plan(_suite(cfg), tmp_path)[1] == [_suite(cfg).variants[0]]
    assert explain(_suite(cfg), tmp_path, _suite(cfg).variants)[cfg.run_id] == (
        "finished row, protocol 3")


def test_explain_names_a_changed_key_and_a_failed_row(tmp_path):
    cfg = RunConfig(dataset="digits", epochs=3)
    # a row of the same variant at another budget explains nothing about this one
    _write(tmp_path, cfg.replace(epochs=9), budget="cpu")
    assert explain(_suite(cfg), tmp_path, _suite(cfg).variants)[cfg.run_id] == (
        "no stored result")
    _write(tmp_path, cfg.replace(epochs=2))
    why = explain(_suite(cfg), tmp_path, _suite(cfg).variants)[cfg.run_id]
    assert why.endswith("has another config: epochs 2 -> 3")
    _write(tmp_path, cfg, status="failed")
    assert explain(_suite(cfg), tmp_path, _suite(cfg).variants)[cfg.run_id] == (
        "its stored row is failed: runs again")
    assert explain(_suite(cfg), tmp_path / "empty", _suite(cfg).variants)[cfg.run_id] == (
        "no stored result")


def test_dry_run_prints_why(tmp_path, capsys):
    code = main(["run", "smoke", "--results", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "to run" in out and "(no stored result)" in out
