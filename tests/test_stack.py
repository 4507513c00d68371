"""Stacked variants (issue 16, part 3): N same-shape VAE-family variants trained as one
stacked model must each equal their solo run within float tolerance (metrics and curves),
resume from a stack checkpoint exactly, let one variant diverge while the others finish,
and land through the runner as one row per variant with its own run_id and its stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.config import RunConfig
from bench.errors import BenchError
from bench.families.lvm import train
from bench.families.stack import MAX_STACK, group, stack_id, train_stack
from bench.loop import Checkpointing, load_data
from bench.runner import RunOptions, RunTask, StackTask, execute, make_tasks, run_suite
from bench.store import load_curves, load_runs
from bench.suite import Suite, Variant

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="digits", train_size=100, test_size=20, hidden=((8,),), latent=(3,),
            epochs=3, batch_size=30, k_eval=8)
#: measured: stacked and solo runs differ by at most 5.5e-6 nats on the MLPs and 6e-5 of
#: 453 nats (1.3e-7 relative, float32 rounding) on the conv model (batched matmuls and
#: convolutions sum in another order); a variant on another variant's noise or weights is
#: off by > 0.01
TOLERANCE, RELATIVE = 5e-5, 1e-6


def _close(stacked, solo) -> None:
    assert stacked.status == solo.status and stacked.diverged_epoch == solo.diverged_epoch
    for a, b in zip(stacked.curves, solo.curves, strict=True):
        assert a.epoch == b.epoch and a.train_bound == pytest.approx(
            b.train_bound, abs=TOLERANCE, rel=RELATIVE)
    if solo.status == "finished":
        for key in ("test_ll", "test_elbo", "rate", "ess", "final_train_bound"):
            assert stacked.metrics()[key] == pytest.approx(
                solo.metrics()[key], abs=TOLERANCE, rel=RELATIVE), key


@pytest.mark.parametrize("extra, weights", [
    ({"objective": "vae", "k": 2}, [{"beta": 1.0}, {"beta": 2.0}, {"beta": 0.5}]),
    ({"objective": "iwae", "k": 3, "hidden": ((8,), (8,)), "latent": (3, 2)}, [{}, {}, {}]),
    ({"posterior": "iaf", "flow_steps": 2, "input_dropout": 0.3}, [{}, {}]),
    ({"objective": "iwae", "k": 3, "kl_direction": "forward", "optimizer": "burda_adam"},
     [{}, {}]),
    ({"capacity_max": 5.0, "capacity_steps": 4}, [{"gamma": 10.0}, {"gamma": 30.0}]),
    ({"dataset": "shapes_small", "architecture": "conv", "latent": (4,), "train_size": 64,
      "test_size": 16, "batch_size": 32, "epochs": 2, "k_eval": 4},
     [{"beta": 1.0}, {"beta": 4.0}]),
    # the estimators after IWAE (issue 25): their views (stl, split) under vmap
    ({"objective": "dreg", "k": 4, "hidden": ((8,), (8,)), "latent": (3, 2)}, [{}, {}]),
    ({"objective": "piwae", "k": 4, "params": {"m": 2}}, [{}, {}]),
    ({"objective": "ciwae", "k": 3}, [{"beta": 0.2}, {"beta": 0.7}]),
    ({"objective": "rws_dreg", "k": 3, "kl_direction": "forward"}, [{}, {}]),
], ids=["beta", "iwae-2-layer", "iaf-dropout", "forward-kl-burda", "capacity-gamma", "conv",
        "dreg-2-layer", "piwae", "ciwae-beta", "rws-dreg"])
def test_each_stacked_variant_equals_its_solo_run(extra, weights):
    # Guards against: variants sharing one generator or one noise draw (each would see
    # another's stream), a loss that mixes variants (a mean over the stack scales each
    # gradient by 1/N: Adam hides that, BurdaAdam does not), beta or gamma not reaching
    # their variant, a slice unstacked into the wrong model, a posterior or input dropout
    # that vmap changes.
    cfgs = [RunConfig(**{**TINY, **extra, **w, "seed": seed}) for seed, w in enumerate(weights)]
    data = load_data(cfgs[0])
    for stacked, cfg in zip(train_stack(cfgs, data), cfgs, strict=True):
        _close(stacked, train(cfg, data))


def test_one_variant_diverging_leaves_the_others_finishing_as_solo():
    # Guards against: a NaN of one variant leaking into the others (a reduction across the
    # stack), the stack stopping at the first divergence, or a diverged variant recorded
    # past its epoch. beta 1e38 makes the first epoch's loss infinite, solo and stacked.
    cfgs = [RunConfig(**{**TINY, "seed": 0}), RunConfig(**{**TINY, "seed": 1, "beta": 1e38}),
            RunConfig(**{**TINY, "seed": 2, "beta": 2.0})]
    data = load_data(cfgs[0])
    stacked = train_stack(cfgs, data)
    assert [r.status for r in stacked] == ["finished", "diverged", "finished"]
    assert stacked[1].diverged_epoch == 1 and len(stacked[1].curves) == 1
    for result, cfg in zip(stacked, cfgs, strict=True):
        _close(result, train(cfg, data))


def test_an_interrupted_stack_resumes_from_its_checkpoint_exactly(tmp_path):
    # Guards against: a stack checkpoint missing a generator, the optimiser state or a
    # variant's curves (the resumed stack would not be the uninterrupted one), and a
    # checkpoint of another stack being resumed.
    cfgs = [RunConfig(**{**TINY, "epochs": 4, "objective": "iwae", "k": 2, "seed": s})
            for s in (0, 1, 2)]
    data = load_data(cfgs[0])
    reference = train_stack(cfgs, data)
    checkpointing = Checkpointing(tmp_path / f"{stack_id(cfgs)}.pt", every_epochs=1)

    def interrupt_at_epoch_3(i, record, total):
        if record.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stack(cfgs, data, checkpointing=checkpointing, on_epoch=interrupt_at_epoch_3)
    seen = []
    resumed = train_stack(cfgs, data, checkpointing=checkpointing,
                          on_epoch=lambda i, record, total: seen.append((i, record.epoch)))
    assert seen == [(i, e) for e in (3, 4) for i in range(3)]
    for a, b in zip(resumed, reference, strict=True):
        assert [r.train_bound for r in a.curves] == [r.train_bound for r in b.curves]
        assert a.test.test_ll == b.test.test_ll
        for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(pa, pb)
    with pytest.raises(BenchError, match="another config"):
        train_stack(cfgs[:2], data, checkpointing=checkpointing)


def test_only_variants_differing_in_seed_beta_or_gamma_stack():
    # Guards against: stacking configs whose shapes or protocol differ (k, lr, data), or
    # other families, and stacks beyond MAX_STACK.
    base = RunConfig(**TINY)
    cfgs = [base, base.replace(seed=1), base.replace(beta=4.0), base.replace(k=2),
            base.replace(lr=3e-4), base.replace(seed=2, k=2),
            RunConfig(**{**TINY, "model": "m2", "labelled": 20})]
    assert group(cfgs) == [[0, 1, 2], [3, 5], [4], [6]]
    many = [base.replace(seed=s) for s in range(MAX_STACK + 2)]
    assert [len(g) for g in group(many)] == [MAX_STACK, 2]
    with pytest.raises(BenchError, match="differ only in seed, beta, gamma"):
        train_stack([base, base.replace(k=2)], load_data(base))


def _suite(cfgs) -> Suite:
    return Suite(name="stk", description="", path=Path("stk.toml"), budget=None, budgets=(),
                 seeds=(0,), variants=tuple(Variant(f"v{i}", c) for i, c in enumerate(cfgs)),
                 references=(), grid_axes=())


def test_auto_stacks_only_with_cuda_and_on_forces_it(tmp_path):
    # Guards against: auto stacking on a CPU (measured 0.93-1.35x the speed of the runs one
    # after another there: not worth a changed task layout), or never on a GPU
    suite = _suite([RunConfig(**TINY), RunConfig(**{**TINY, "seed": 1})])
    for mode, cuda, kinds in [("auto", False, [RunTask, RunTask]), ("auto", True, [StackTask]),
                              ("on", False, [StackTask]), ("off", True, [RunTask, RunTask])]:
        tasks = make_tasks(suite, suite.variants, RunOptions(tmp_path, stack=mode),
                           on_gpus=cuda)
        assert [type(t) for t in tasks] == kinds, (mode, cuda)


def test_a_stack_lands_one_row_per_variant_with_its_own_run_id_and_curves(tmp_path):
    # Guards against: a stack landing one row, rows under the wrong run_id, or curves
    # attached to the wrong variant; and the stack not being named in the rows.
    cfgs = [RunConfig(**{**TINY, "seed": 0}), RunConfig(**{**TINY, "seed": 1, "beta": 1e38}),
            RunConfig(**{**TINY, "seed": 2, "beta": 2.0})]
    suite = _suite(cfgs)
    summary = run_suite(suite, RunOptions(tmp_path, executor="local", stack="on",
                                          show_progress=False))
    assert summary.statuses == {"finished": 2, "diverged": 1}
    runs = load_runs(tmp_path, suite="stk").set_index("run_id")
    assert sorted(runs.index) == sorted(c.run_id for c in cfgs)
    assert set(runs["sys_stack"]) == {stack_id(cfgs)} and set(runs["sys_stack_size"]) == {3}
    # each row is its variant's slice of the same stack trained directly (which equals the
    # solo runs: test_one_variant_diverging_leaves_the_others_finishing_as_solo)
    direct = train_stack(cfgs, load_data(cfgs[0]))
    curves = load_curves(tmp_path, suite="stk")
    for cfg, result in zip(cfgs, direct, strict=True):
        mine = curves[curves["run_id"] == cfg.run_id].sort_values("epoch")
        assert list(mine["train_bound"]) == [r.train_bound for r in result.curves]
        assert runs.loc[cfg.run_id, "status"] == result.status
    assert runs.loc[cfgs[2].run_id, "metric_test_ll"] == direct[2].metrics()["test_ll"]
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))  # done: no stack checkpoint
    # a stack's failure fails each of its variants, each with the error (train_size 5000
    # passes validation, but digits has 1500 training examples)
    broken = StackTask("stk", None, tuple(Variant(f"w{i}", c.replace(train_size=5000))
                                          for i, c in enumerate(cfgs[:2])), tmp_path, 1, 1)
    rows = [landed.row for landed in execute(broken, device="cpu")]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("train_size" in r["error"] for r in rows)


@pytest.mark.parametrize("objective", ["iwae", "dreg"])
def test_a_compiled_stack_matches_the_eager_stack(objective):
    # Guards against: the compiled stacked step (vmap under torch.compile, fused Adam)
    # following another stream or bound than the eager stack, or losing an estimator's
    # stopped gradients (DReG's split view) in the graph. Measured: under 4e-6 nats.
    cfgs = [RunConfig(**{**TINY, "objective": objective, "k": 3, "seed": s}) for s in (0, 1)]
    data = load_data(cfgs[0])
    eager, compiled = train_stack(cfgs, data), train_stack(cfgs, data, compile="on")
    assert [r.compiled for r in compiled] == [True, True]
    for a, b in zip(compiled, eager, strict=True):
        _close(a, b)


def test_one_variants_failing_evaluation_fails_only_that_variant(tmp_path, monkeypatch):
    # Guards against: an exception in one variant's evaluation (after the stack trained)
    # failing every variant of the stack and throwing their trained models away.
    import bench.families.stack as stack_module

    real_finish = stack_module.finish

    def finish(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("evaluation broke")
        return real_finish(cfg, *args, **kwargs)

    monkeypatch.setattr(stack_module, "finish", finish)
    cfgs = [RunConfig(**{**TINY, "seed": s}) for s in (0, 1, 2)]
    task = StackTask("stk", None, tuple(Variant(f"v{i}", c) for i, c in enumerate(cfgs)),
                     tmp_path, 1, 1)
    rows = [landed.row for landed in execute(task, device="cpu")]
    assert [r["status"] for r in rows] == ["finished", "failed", "finished"]
    assert rows[1]["error"] == "RuntimeError: evaluation broke"
    assert "Traceback" in rows[1]["traceback"]
