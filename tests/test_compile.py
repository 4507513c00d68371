"""The compiled training step (issue 16): pre-drawn noise is the eager step's noise, the
compiled run agrees with the eager one within float tolerance and repeats itself exactly,
`auto` compiles only where compiling pays, and the compile mode is not part of a run's
identity (it is recorded as provenance)."""

from __future__ import annotations

import pytest
import torch

from bench.components import POSTERIORS
from bench.config import RunConfig
from bench.errors import BenchError
from bench.families import train_model
from bench.families.compiling import (
    COMPILE_MIN_STEPS,
    EVAL_COMPILE_MIN_SAMPLES,
    should_compile,
    should_compile_eval,
)
from bench.families.lvm import train
from bench.loop import load_data
from bench.models import build_model
from bench.runner import RunTask, execute
from bench.suite import Variant

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="digits", train_size=100, test_size=20, hidden=((8,),), latent=(3,),
            epochs=2, batch_size=50, k_eval=8)


@pytest.mark.parametrize("extra", [
    *({"posterior": p, "flow_steps": 0 if p == "gaussian" else 2} for p in POSTERIORS.names()),
    {"hidden": ((8,), (8,)), "latent": (3, 2)},
], ids=[*POSTERIORS.names(), "2-layer"])
def test_pre_drawn_noise_is_the_noise_the_model_would_draw(extra):
    # Guards against: the compiled step's noise drawn in another shape or order than the
    # eager step's (the compiled run would follow another random stream), or ignored.
    model = build_model(RunConfig(**{**TINY, **extra}), 64)
    x = torch.rand(5, 64)
    drawn = model(x, 3, generator=torch.Generator().manual_seed(1))
    noise = model.draw_noise(5, 3, torch.Generator().manual_seed(1), "cpu")
    given = model(x, 3, generator=torch.Generator().manual_seed(99), noise=noise)
    assert torch.equal(drawn.log_weights, given.log_weights)


def test_auto_compiles_on_cuda_and_from_the_step_count_that_pays():
    cfg = RunConfig(**TINY)  # 2 epochs x 2 steps
    assert not should_compile(cfg, 100, "cpu", "auto")
    assert should_compile(cfg, 100, "cuda", "auto")
    assert should_compile(cfg, 100, "cpu", "on") and not should_compile(cfg, 100, "cuda", "off")
    steps = cfg.replace(epochs=COMPILE_MIN_STEPS // 2)  # 2 steps per epoch: exactly enough
    assert should_compile(steps, 100, "cpu", "auto")
    assert not should_compile(steps, 50, "cpu", "auto")  # 1 step per epoch: half as many
    capacity = cfg.replace(capacity_max=5.0, capacity_steps=10)
    assert not should_compile(capacity, 100, "cuda", "auto")
    with pytest.raises(BenchError, match="does not support controlled capacity"):
        should_compile(capacity, 100, "cpu", "on")
    with pytest.raises(BenchError, match="unknown compile mode 'yes'"):
        should_compile(cfg, 100, "cpu", "yes")
    # the estimate: auto on CUDA, and on a CPU from EVAL_COMPILE_MIN_SAMPLES
    assert should_compile_eval(EVAL_COMPILE_MIN_SAMPLES, "cpu", "auto")
    assert not should_compile_eval(EVAL_COMPILE_MIN_SAMPLES - 1, "cpu", "auto")
    assert should_compile_eval(1, "cuda", "auto") and should_compile_eval(1, "cpu", "on")
    assert not should_compile_eval(EVAL_COMPILE_MIN_SAMPLES, "cuda", "off")


def test_families_that_run_eagerly_refuse_compile_on():
    cfg = RunConfig(**{**TINY, "model": "classifier", "labelled": 20})
    with pytest.raises(BenchError, match="model 'classifier' runs its training loop eagerly"):
        train_model(cfg, load_data(cfg), compile="on")


def test_m2s_pre_drawn_noise_is_the_noise_its_loss_would_draw():
    # Guards against: M2's step (eager and compiled draw beforehand) drawing the labelled
    # batch's noise before the unlabelled one's, or in another shape: another stream than
    # the loss's own draws, which M2's runs followed before compiling existed.
    from bench.families.m2 import build_m2, draw_loss_noise, semi_supervised_loss

    model = build_m2(RunConfig(**{**TINY, "model": "m2", "labelled": 20}), 64)
    x_u, x_l = torch.rand(6, 64), torch.rand(4, 64)
    y_l = torch.tensor([0, 3, 3, 9])
    kwargs = dict(n_total=100, n_labelled=20, alpha=0.1, k=2)
    drawn = semi_supervised_loss(model, x_u, x_l, y_l, generator=torch.Generator().manual_seed(1),
                                 **kwargs)
    noise = draw_loss_noise(model, x_u, x_l, y_l, 2, torch.Generator().manual_seed(1))
    given = semi_supervised_loss(model, x_u, x_l, y_l, noise=noise, **kwargs)
    assert torch.equal(drawn.loss, given.loss)


def test_a_compiled_m2_matches_the_eager_one():
    # Guards against: M2's compiled step optimising another loss or stream than its eager
    # step. Measured: the curves and the test bound agree to under 1e-5 nats.
    cfg = RunConfig(**{**TINY, "model": "m2", "labelled": 20, "k": 2})
    data = load_data(cfg)
    eager, compiled = (train_model(cfg, data, compile=mode) for mode in ("off", "on"))
    assert compiled.compiled and not eager.compiled
    for a, b in zip(compiled.curves, eager.curves, strict=True):
        assert a.train_bound == pytest.approx(b.train_bound, abs=1e-4)
    for key in ("test_unlabelled_bound", "test_error", "train_labelled_error"):
        assert compiled.metrics()[key] == pytest.approx(eager.metrics()[key], abs=1e-4), key


def test_the_compiled_step_matches_the_eager_one_and_repeats_itself(tmp_path):
    # Guards against: a compiled step that follows another random stream or bound (metrics
    # far apart), or that is not deterministic run to run; and a compile mode that changes
    # the run_id. Measured: compiled and eager differ by under 4e-6 nats on such runs.
    cfg = RunConfig(**{**TINY, "objective": "iwae", "k": 3, "hidden": ((8,), (8,)),
                       "latent": (3, 2)})
    data = load_data(cfg)
    eager = train(cfg, data)
    compiled = train(cfg, data, compile="on")
    assert not eager.compiled and compiled.compiled
    for key in ("test_ll", "test_elbo", "final_train_bound", "ess"):
        assert compiled.metrics()[key] == pytest.approx(eager.metrics()[key], abs=1e-4), key
    for a, b in zip(compiled.curves, eager.curves, strict=True):
        assert a.train_bound == pytest.approx(b.train_bound, abs=1e-4)
    # the same config compiled again, through the runner: identical numbers, same run_id
    [landed] = execute(RunTask("c", None, Variant("v", cfg), tmp_path, 1, 1, "on"),
                     device="cpu")
    assert landed.row["run_id"] == cfg.run_id and landed.row["sys_compiled"] is True
    for key in ("test_ll", "test_elbo", "final_train_bound", "ess", "rate"):
        assert landed.row[f"metric_{key}"] == compiled.metrics()[key], key


@pytest.mark.parametrize("extra", [
    {"objective": "dreg", "hidden": ((8,), (8,)), "latent": (3, 2)},
    {"objective": "piwae", "k": 4, "params": {"m": 2}},
    {"objective": "rws_dreg", "kl_direction": "forward"},
], ids=["dreg-2-layer", "piwae", "rws-dreg"])
def test_the_compiled_step_of_each_estimator_matches_the_eager_one(extra):
    # Guards against: torch.compile tracing the estimators' views (q's stopped parameters,
    # the generative half under functional_call with stopped parameters) into another
    # gradient than the eager step's.
    cfg = RunConfig(**{**TINY, "k": 3, **extra})
    data = load_data(cfg)
    eager, compiled = train(cfg, data), train(cfg, data, compile="on")
    assert compiled.compiled
    for key in ("test_ll", "final_train_bound", "test_iwae_k"):
        assert compiled.metrics()[key] == pytest.approx(eager.metrics()[key], abs=1e-4), key


def test_the_compiled_estimate_matches_the_eager_one():
    # Guards against: the compiled evaluation drawing other noise or dropping a slice (the
    # estimate would move by Monte Carlo noise or more), or a graph that breaks on the
    # smaller last slice and batch. Measured: under 1e-5 nats apart.
    from bench.metrics.likelihood import compiled_passes, evaluate

    model = build_model(RunConfig(**{**TINY, "hidden": ((8,), (8,)), "latent": (3, 2)}), 64)
    x = torch.bernoulli(torch.full((37, 64), 0.3), generator=torch.Generator().manual_seed(0))
    runs = {compiled: evaluate(model, x, 300, generator=torch.Generator().manual_seed(1),
                               rows_per_chunk=2048, rows_per_pass=500,
                               passes=compiled_passes() if compiled else None)
            for compiled in (False, True)}
    for key in ("test_ll", "test_elbo", "rate", "distortion", "ess"):
        assert getattr(runs[True], key) == pytest.approx(getattr(runs[False], key),
                                                         abs=1e-5), key
    assert runs[True].active_units_by_layer == runs[False].active_units_by_layer


def test_a_resumed_optimizer_keeps_the_kernel_it_was_built_with():
    # Guards against: load_state_dict restoring the saved groups' `fused` flag, so an eager
    # resume of a compiled run's checkpoint (or the reverse) silently switches Adam's kernel.
    from bench.optim import load_optimizer_state, make_optimizer

    cfg = RunConfig(**TINY)
    fused, eager = (make_optimizer(build_model(cfg, 64), cfg, fused=f) for f in (True, False))
    state = fused.state_dict()
    load_optimizer_state(eager, state)
    assert not eager.param_groups[0]["fused"]
    load_optimizer_state(fused, make_optimizer(build_model(cfg, 64), cfg).state_dict())
    assert fused.param_groups[0]["fused"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_checkpoint_resumes_under_the_other_adam_kernel():
    # Guards against: torch placing the loaded step counts by the saved kernel (CPU for
    # eager Adam), so a compiled (fused) resume of an eager CUDA checkpoint fails at its
    # first step, and an eager resume of a fused one syncs with the host every step.
    from bench.optim import load_optimizer_state, make_optimizer

    cfg = RunConfig(**TINY)
    for saved_fused in (False, True):
        model = build_model(cfg, 64).cuda()
        saving = make_optimizer(model, cfg, fused=saved_fused)
        model(torch.rand(4, 64, device="cuda"), 1).log_weights.sum().backward()
        saving.step()
        resumed = make_optimizer(model, cfg, fused=not saved_fused)
        load_optimizer_state(resumed, saving.state_dict())
        resumed.step()  # raised for the fused resume before the fix
        step = resumed.state[next(model.parameters())]["step"]
        assert step.device.type == ("cpu" if saved_fused else "cuda") and float(step) == 2


def test_each_compile_has_its_own_graphs_and_compiles_whole():
    # Guards against: every trainer compiling the one closure code, whose graphs dynamo
    # keeps together: past its recompile_limit (8) configurations in one process (a reused
    # Ray worker) it ran them eagerly while their rows said compiled (measured: k = 9 after
    # k = 1..8). With the limit at 1, a second configuration must still compile; and a
    # function that cannot compile whole raises instead of running partly eager.
    from bench.compiler import compile_fresh
    from bench.families.lvm import compiled_training_step
    from bench.objectives import objective_for
    from bench.optim import make_optimizer

    x = torch.bernoulli(torch.full((5, 64), 0.3), generator=torch.Generator().manual_seed(0))
    with torch._dynamo.config.patch(recompile_limit=1):
        for k in (1, 2):
            cfg = RunConfig(**{**TINY, "k": k})
            model = build_model(cfg, 64)
            step = compiled_training_step(model, make_optimizer(model, cfg), objective_for(cfg),
                                          k)
            loss = step(x, None, model.draw_noise(5, k, torch.Generator(), "cpu"), 1.0)
            assert torch.isfinite(loss)

    def breaks(t: torch.Tensor) -> torch.Tensor:
        print(end="")  # a graph break
        return t + 1

    with pytest.raises(Exception, match="print"):
        compile_fresh(breaks, {"dynamic": False})(torch.zeros(2))


@pytest.mark.parametrize("n", [32, 30], ids=["groups-of-16", "groups-of-2"])
def test_the_compiled_formulas_are_torchs_functions_and_gradients(n):
    # Guards against: a wrong term or sign in the formulas only ever traced by torch.compile
    # (no eager test runs them), a hand-written gradient that is not the value's (at logit
    # 0 it must be x - 1/2), products of the factors over another pixel grouping or count.
    from bench.compiler import compile_fresh
    from bench.models.fastmath import bernoulli_log_prob, tanh

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, n, generator=gen) * 8
    logits[0, 0, :6] = torch.tensor([-100.0, -30.0, 0.0, 0.0, 30.0, 100.0])
    x = torch.bernoulli(torch.full((3, n), 0.4), generator=gen)
    x[0, 2:4] = torch.tensor([0.0, 1.0])  # logit 0 with either pixel value
    fast = compile_fresh(bernoulli_log_prob, {"dynamic": False})
    exact = bernoulli_log_prob(logits.double(), x.double())
    with torch.no_grad():  # the estimate's path: grouped products
        assert torch.allclose(fast(logits, x).double(), exact, rtol=0, atol=2e-5)
    leaf, x_leaf = logits.clone().requires_grad_(), x.clone().requires_grad_()
    fast(leaf, x_leaf).sum().backward()  # the training path
    assert torch.allclose(leaf.grad, x - torch.sigmoid(logits), rtol=0, atol=1e-6)
    assert leaf.grad[0, 0, 2:4].tolist() == [-0.5, 0.5]
    assert torch.allclose(x_leaf.grad, logits.sum(0), rtol=0, atol=1e-5)  # x broadcast over k

    a = torch.linspace(-20, 20, 401).requires_grad_()
    fast_tanh = compile_fresh(tanh, {"dynamic": False})
    fast_tanh(a).sum().backward()
    assert torch.allclose(fast_tanh(a.detach()), torch.tanh(a.detach()), rtol=0, atol=2e-7)
    assert torch.allclose(a.grad, 1 - torch.tanh(a.detach()) ** 2, rtol=0, atol=1e-6)


def test_the_cvaes_pre_drawn_noise_is_the_noise_its_forward_would_draw():
    # Guards against: the compiled CVAE's noise drawn in another shape than its forward's
    # draw (a compiled run would follow another random stream than the eager one).
    from bench.families.cvae import build, draw_noise

    data = load_data(RunConfig(**TINY))
    for extra in ({"condition": "label"}, {"condition": "quadrants", "given_quadrants": 2}):
        model = build(RunConfig(**{**TINY, "model": "cvae", **extra}), data)
        x = data.train[:5]
        args = (x, torch.eye(10)[:5]) if extra["condition"] == "label" else (x,)
        drawn = model(*args, 3, torch.Generator().manual_seed(1))
        given = model(*args, 3, eps=draw_noise(model, 5, 3, torch.Generator().manual_seed(1)))
        assert torch.equal(drawn.log_weights, given.log_weights)


@pytest.mark.parametrize("extra", [
    {"condition": "label", "objective": "iwae", "k": 2},
    {"condition": "quadrants", "given_quadrants": 2, "validation_size": 20},
], ids=["label", "quadrants"])
def test_a_compiled_cvae_matches_the_eager_one(extra):
    # Guards against: a compiled CVAE stage optimising another loss or stream than its eager
    # stage (its baseline's too), or a validation loss that sees other noise.
    cfg = RunConfig(**{**TINY, "model": "cvae", **extra})
    data = load_data(cfg)
    eager, compiled = (train_model(cfg, data, compile=mode) for mode in ("off", "on"))
    assert compiled.compiled and not eager.compiled
    assert len(compiled.curves) == len(eager.curves)
    for a, b in zip(compiled.curves, eager.curves, strict=True):
        assert a.train_bound == pytest.approx(b.train_bound, abs=1e-4)
        assert a.valid_bound == pytest.approx(b.valid_bound, abs=1e-4)
    metrics = [key for key in ("test_ll", "test_elbo", "rate", "test_cll", "test_cll_is",
                               "nn_test_cll") if key in eager.metrics()]
    assert len(metrics) >= 3
    for key in metrics:
        assert compiled.metrics()[key] == pytest.approx(eager.metrics()[key], abs=1e-4), key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphed_steps_match_the_eager_ones():
    # Guards against: the CUDA path (mode reduce-overhead: CUDA graphs replaying the step,
    # a fused Adam, the estimate compiled under auto) training or estimating something else
    # than the eager CUDA run, or a graph reading a buffer the next replay overwrote (a
    # missing cudagraph_mark_step_begin), solo and stacked.
    from bench.families.stack import train_stack

    cfg = RunConfig(**{**TINY, "objective": "iwae", "k": 3, "epochs": 3})
    data = load_data(cfg)
    eager = train(cfg, data, device="cuda")
    graphed = train(cfg, data, device="cuda", compile="auto")
    assert graphed.compiled and graphed.eval_compiled and not eager.compiled
    for key in ("test_ll", "test_elbo", "final_train_bound", "ess"):
        assert graphed.metrics()[key] == pytest.approx(eager.metrics()[key], abs=1e-4), key
    cfgs = [cfg.replace(seed=s) for s in (0, 1)]
    stacked = train_stack(cfgs, data, device="cuda", compile="auto")
    solos = [eager, train(cfgs[1], data, device="cuda")]
    for variant, solo in zip(stacked, solos, strict=True):
        assert variant.compiled and variant.eval_compiled
        assert variant.metrics()["test_ll"] == pytest.approx(solo.metrics()["test_ll"],
                                                             abs=1e-4)
        for a, b in zip(variant.curves, solo.curves, strict=True):
            assert a.train_bound == pytest.approx(b.train_bound, abs=1e-4)
