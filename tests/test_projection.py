"""The projected cost of planned runs (bench.projection) and `vaebench run --dry-run`'s cost
lines, order and reasons (issue 27, part 3)."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest

from bench import config as bench_config
from bench import projection, runner
from bench.cli import main
from bench.config import config_from_dict
from bench.errors import BenchError
from bench.projection import Machine, Projector
from bench.suite import Variant, load_suite

MACHINE = Machine("box", "cpu", "Some CPU", threads=1, slots=2, slots_why="2 CPUs")
#: a known MLP: digits (64 pixels), one hidden layer of 20, 5 latent units
TINY = {"dataset": "digits", "hidden": [[20]], "latent": [5], "k": 3, "epochs": 2,
        "train_size": 100, "test_size": 10, "k_eval": 7, "objective": "iwae"}


def tiny(**changes):
    return config_from_dict({**TINY, **changes})


def test_flops_are_the_analytic_formula_of_the_mlp():
    """Encoder 64x20 + 20x10 (mean and log-variance head), decoder 5x20 + 20x64 multiply-adds:
    forward 2 (1480 + k 1380) FLOPs, training 3x that, x 100 examples x 2 epochs; evaluation
    the estimate at k_eval 7 plus the bounds at k 3 per test example, x 10. Guards the work's
    counts (epochs, examples, which k) and the bound stream being counted."""
    work = Projector(MACHINE, calibrate=False).work(tiny())
    assert work.train_examples == 200 and work.test_examples == 10 and work.eval_samples == 10
    assert work.train_flops == 3 * 2 * (1480 + 3 * 1380) * 100 * 2 == 6_744_000
    assert work.eval_flops == 10 * (2 * (1480 + 7 * 1380) + 2 * (1480 + 3 * 1380)) == 335_200


def test_families_without_known_flops_say_unknown():
    mixture = config_from_dict({"dataset": "digits", "model": "mixture", "components": 3,
                                "iterations": 2})
    p = Projector(MACHINE, calibrate=False).project(mixture)
    assert p.train_flops is None and p.eval_flops is None and p.here_s is None
    assert p.here_source.startswith("unknown (model mixture")
    assert "train unknown FLOPs, eval unknown FLOPs; here unknown" in projection.run_line(p)


def stored_row(cfg, *, hostname="box", threads=1, train=1000.0, evals=5000.0, seed=1):
    """A finished stored row of `cfg` at another seed, as store.run_row writes it."""
    row = {f"cfg_{k}": v for k, v in cfg.replace(seed=seed).flat_dict().items()}
    row.update(run_id=f"stored{seed}{hostname}", status="finished", sys_hostname=hostname,
               sys_device="cpu", sys_device_name="Some CPU", sys_torch_threads=threads,
               metric_train_samples_per_s=train, metric_eval_samples_per_s=evals,
               sys_wall_seconds=12.0)
    row["cfg_hidden"] = [[20]]  # as Parquet gives nested lists back: lists, not tuples
    return row


def test_a_stored_rate_of_the_same_variant_here_beats_calibration(monkeypatch):
    calls = []
    monkeypatch.setattr(projection, "calibrate",
                        lambda cfg, *a, **kw: calls.append(cfg) or (100.0, 1000.0))
    cfg = tiny()
    runs = pd.DataFrame([stored_row(cfg)])
    p = Projector(MACHINE, runs).project(cfg)
    assert calls == []
    assert p.here_s == pytest.approx(200 / 1000 + 10 * 10 / 5000)
    assert p.here_source == "stored rates of stored1box (same variant, this machine)"


@pytest.mark.parametrize("other", [{"hostname": "elsewhere"}, {"threads": 2}])
def test_another_machines_rate_is_not_used(monkeypatch, other):
    """A row of another host, or of this host with other threads per run, is not this
    machine's rate: the run is calibrated (once per shape: the two seeds share it)."""
    calls = []
    monkeypatch.setattr(projection, "calibrate",
                        lambda cfg, *a, **kw: calls.append(cfg) or (100.0, 1000.0))
    cfg = tiny()
    projector = Projector(MACHINE, pd.DataFrame([stored_row(cfg, **other)]))
    first, second = projector.project(cfg), projector.project(cfg.replace(seed=5))
    assert len(calls) == 1
    assert first.here_s == second.here_s == pytest.approx(200 / 100 + 100 / 1000)
    assert first.here_source == "calibrated (cpu, eager)"
    unknown = Projector(MACHINE, pd.DataFrame([stored_row(cfg, **other)]), calibrate=False)
    assert unknown.project(cfg).here_s is None


def test_a_row_older_than_a_later_field_is_the_same_variant():
    """A row stored before snr_draws existed lacks its column (NaN beside newer rows): at
    the field's default it is the same variant, as for the run_id and bench.compare."""
    cfg = tiny()
    old = stored_row(cfg)
    del old["cfg_snr_draws"]
    p = Projector(MACHINE, pd.DataFrame([old, stored_row(cfg.replace(k=4), seed=2)]),
                  calibrate=False).project(cfg)
    assert p.here_source == "stored rates of stored1box (same variant, this machine)"


def test_another_variants_rate_is_not_used():
    cfg = tiny()
    runs = pd.DataFrame([stored_row(cfg.replace(k=4))])
    assert Projector(MACHINE, runs, calibrate=False).project(cfg).here_s is None


def rates_file(tmp_path):
    path = tmp_path / "gpu.json"
    measure = {"setting": "alone", "runs": 1, "step_ms": 1.0}
    path.write_text(json.dumps({
        "device": "NVIDIA H100", "torch_version": "2",
        "measures": [
            {**measure, "case": "1layer-b20-k5", "mode": "eager", "samples_per_s": 1000.0},
            {**measure, "case": "1layer-b100-k5", "mode": "graphed", "samples_per_s": 4000.0},
            {**measure, "case": "1layer-b100-k5", "mode": "eager", "samples_per_s": 2000.0},
            {**measure, "case": "1layer-b20-k5", "setting": "stacked", "runs": 3,
             "mode": "eager", "samples_per_s": 9e9},
        ],
        "evaluation": {"eager_s_per_example_per_1000": 0.002,
                       "compiled_s_per_example_per_1000": 0.001}}))
    return path


def paper(**changes):
    return config_from_dict({"dataset": "mnist", "hidden": [[200, 200]], "latent": [50],
                             "objective": "iwae", "k": 5, "batch_size": 20, "epochs": 1,
                             "k_eval": 5000, **changes})


def test_rates_lookup_takes_the_matching_entry_and_names_it(tmp_path):
    """The (layers, batch, k) entry's own samples/s (a stack's rate is not one run's); the
    estimate at the file's compiled speed (--compile auto). Guards the entry chosen and the
    arithmetic: 60,000 examples / 1000 per s + 10,000 x 5005 samples x 1 ms per 1000."""
    rates = projection.read_rates(rates_file(tmp_path))
    projector = Projector(MACHINE, calibrate=False, rates=rates)
    p = projector.project(paper())
    assert p.gpu_source == "NVIDIA H100 entry 1layer-b20-k5 eager"
    assert p.gpu_s == pytest.approx(60_000 / 1000 + 10_000 * 5005 / 1000 * 0.001)
    graphed = projector.project(paper(batch_size=100))
    assert graphed.gpu_source == "NVIDIA H100 entry 1layer-b100-k5 graphed"
    off = Projector(MACHINE, calibrate=False, rates=rates, compile="off")
    assert off.project(paper(batch_size=100)).gpu_source.endswith("1layer-b100-k5 eager")


def test_rates_lookup_says_nearest_and_scales_by_flops(tmp_path):
    rates = projection.read_rates(rates_file(tmp_path))
    projector = Projector(MACHINE, calibrate=False, rates=rates)
    p = projector.project(paper(batch_size=60, k=6))  # nearer batch 100 than 20
    assert p.gpu_source == ("NVIDIA H100 nearest entry 1layer-b100-k5 graphed, scaled by "
                            "FLOPs")
    ratio = (projector.flops(paper(k=6))[0] / projector.flops(paper(k=5))[0])
    eval_s = 10_000 * 5006 / 1000 * 0.001
    assert p.gpu_s == pytest.approx(60_000 / 4000 * ratio + eval_s)
    two = projector.project(paper(hidden=[[200, 200], [100, 100]], latent=[100, 50]))
    assert two.gpu_s is None and two.gpu_source == "no rate (2-layer models are not in the file)"
    mixture = config_from_dict({"dataset": "mnist", "model": "mixture", "components": 3,
                                "iterations": 2})
    assert projector.project(mixture).gpu_source.startswith("no rate (model mixture")


def test_a_rates_file_of_another_shape_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"device": "x"}')
    with pytest.raises(BenchError, match=r"--rates .*bad.json: not a benchmarks/gpu_thr"):
        projection.read_rates(bad)
    zero = json.loads(rates_file(tmp_path).read_text())
    zero["measures"][0]["samples_per_s"] = 0  # was a ZeroDivisionError at projection time
    bad.write_text(json.dumps(zero))
    with pytest.raises(BenchError, match=r"case 1layer-b20-k5 at 0.0 samples/s is not a rate"):
        projection.read_rates(bad)
    with pytest.raises(BenchError, match="cannot read it"):
        projection.read_rates(tmp_path / "absent.json")
    for speed in (-1, 0):  # was a negative or zero projected time on the GPU
        negative = json.loads(rates_file(tmp_path).read_text())
        negative["evaluation"]["compiled_s_per_example_per_1000"] = speed
        bad.write_text(json.dumps(negative))
        with pytest.raises(BenchError, match=r"evaluation compiled_s_per_example_per_1000 at "
                                             rf"{float(speed)} s is not a speed"):
            projection.read_rates(bad)


def test_paper_models_are_gpu_throughputs():
    """The rates file's cases are gpu_throughput.py's iwae_table1 models: PAPER_MODELS must
    name the same layers, or every "matching entry" compares other models."""
    suite = load_suite("suites/iwae_table1.toml", "paper")
    for layers, (hidden, latent) in projection.PAPER_MODELS.items():
        cfg = next(v.config for v in suite.variants if v.name.startswith(f"{layers}layer"))
        assert (cfg.hidden, cfg.latent) == (hidden, latent) and cfg.dataset == "mnist"


def test_totals_divide_by_the_slots():
    runs = [projection.Projection("a", 1e9, 2e6, 100.0, "calibrated (cpu, eager)"),
            projection.Projection("b", None, None, None, "unknown (model mixture: ...)"),
            projection.Projection("c", 3e9, 1e6, 3500.0, "stored rates of x")]
    assert projection.total_lines(runs, MACHINE, None) == [
        "cost of 3 runs to run: train 4.00e9 FLOPs (1 of 3 runs unknown, not in the sum), "
        "eval 3.00e6 FLOPs (1 of 3 runs unknown, not in the sum)",
        "projected time here (Some CPU, cpu, 1 thread(s) per run): 1:00:00 one after another "
        "(1 of 3 runs unknown, not in the sum); 0:30:00 with 2 at once (2 CPUs); sources: "
        "1 calibrated, 1 stored, 1 unknown"]


# ------------------------------------------------------------------ the CLI
SUITE = """
[suite]
name = "tinycost"
description = "two variants, two seeds"
seeds = [0, 1]

[base]
dataset = "digits"
hidden = [[20]]
latent = [5]
epochs = 2
train_size = 100
test_size = 10
k_eval = 7
objective = "iwae"

[grid]
k = [3, 1]
"""


@pytest.fixture
def tiny_suite(tmp_path):
    path = tmp_path / "tinycost.toml"
    path.write_text(SUITE)
    return path


def test_dry_run_prints_each_runs_cost_and_the_totals(tiny_suite, tmp_path, capsys):
    code = main(["run", str(tiny_suite), "--dry-run", "--no-calibrate", "--executor", "local",
                 "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    suite = load_suite(tiny_suite)
    ids = [v.run_id for v in suite.variants]
    none = "here unknown [unknown (no stored rate of this variant here; --no-calibrate)]"
    k3 = f"            cost: train 6.74e6 FLOPs, eval 3.35e5 FLOPs; {none}"
    k1 = "            cost: train 3.43e6 FLOPs, eval 2.80e5 FLOPs; " + none
    assert out[0] == f"suite tinycost budget None: 4 to run, 0 cached ({tmp_path / 'r'})"
    assert out[1:9] == [
        f"  to run  {ids[0]}  k=3  seed=0  (no stored result)", k3,
        f"  to run  {ids[1]}  k=3  seed=1  (no stored result)", k3,
        f"  to run  {ids[2]}  k=1  seed=0  (no stored result)", k1,
        f"  to run  {ids[3]}  k=1  seed=1  (no stored result)", k1]
    assert out[9] == ("cost of 4 runs to run: train 2.04e7 FLOPs, eval 1.23e6 FLOPs")
    assert out[10].endswith("unknown one after another (4 of 4 runs unknown, not in the sum); "
                            "unknown with 1 at once (--executor local runs one at a time); "
                            "sources: 4 unknown")


@pytest.mark.parametrize("flag", [["--rates", "x.json"], ["--no-calibrate"]])
def test_dry_run_flags_without_dry_run_are_one_line(tiny_suite, tmp_path, capsys, flag):
    code = main(["run", str(tiny_suite), "--results", str(tmp_path / "r"), *flag])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{flag[0]} applies to --dry-run only" in err


def test_dry_run_never_sorts_with_list_index(tiny_suite, tmp_path, monkeypatch, capsys):
    """The listing's order comes from a position index, not `suite.variants.index` (one
    linear scan per run: quadratic, 74 s at 16,000 runs)."""
    import bench.suite

    class NoIndex(tuple):
        def index(self, *args):
            raise AssertionError("tuple.index in the dry-run: quadratic")

    real = bench.suite.load_suite
    monkeypatch.setattr(bench.suite, "load_suite", lambda *a, **kw: dataclasses.replace(
        real(*a, **kw), variants=NoIndex(real(*a, **kw).variants)))
    assert main(["run", str(tiny_suite), "--dry-run", "--no-calibrate",
                 "--results", str(tmp_path / "r")]) == 0
    assert "4 to run" in capsys.readouterr().out


# ------------------------------------------------------------------ explain: linear, same output
def old_explain(suite, variants, rows, force=False):
    """explain before issue 27 (quadratic): the reference its output must keep."""
    reasons = {}
    for variant in variants:
        own = [r for r in rows if r.get("run_id") == variant.run_id]
        if force:
            reasons[variant.run_id] = "--force reruns it"
        elif any(r.get("status") == "finished" for r in own):
            reasons[variant.run_id] = f"finished row, protocol {bench_config.PROTOCOL}"
        elif own:
            reasons[variant.run_id] = f"its stored row is {own[-1].get('status')}: runs again"
        else:
            same = [r for r in rows if r.get("variant") == variant.name
                    and runner._show(r.get("budget")) == runner._show(suite.budget)
                    and r.get("cfg_seed") == variant.seed
                    and r.get("status") == "finished"]
            reasons[variant.run_id] = (runner._difference(same[-1], variant) if same
                                       else "no stored result")
    return reasons


class CountingRows(list):
    iterations = 0

    def __iter__(self):
        CountingRows.iterations += 1
        return super().__iter__()


class Frame:
    """What explain reads of a DataFrame, with rows that count their scans."""

    empty = False

    def __init__(self, rows):
        self.rows = CountingRows(rows)

    def to_dict(self, kind):
        return self.rows


def test_explain_is_linear_and_says_what_it_said_before(tiny_suite):
    """A sample of every reason: a finished own row, a failed own row (the last of two), another
    config of the same variant and seed (the last finished one, with a seed stored as a
    float), another protocol, another budget's row and NaN seeds (not matched). Scanned
    once: the rows are grouped, not searched per run."""
    suite = load_suite(tiny_suite)
    v = suite.variants
    base = {"budget": None, "protocol": bench_config.PROTOCOL, **{
        f"cfg_{k}": val for k, val in v[0].config.flat_dict().items()}}
    rows = [
        {**base, "run_id": v[0].run_id, "status": "finished", "variant": v[0].name,
         "cfg_seed": 0},
        {**base, "run_id": v[1].run_id, "status": "diverged", "variant": v[1].name,
         "cfg_seed": 1},
        {**base, "run_id": v[1].run_id, "status": "failed", "variant": v[1].name},
        {**base, "run_id": "aaa", "status": "finished", "variant": v[2].name, "cfg_seed": 0.0,
         "cfg_epochs": 5},
        {**base, "run_id": "bbb", "status": "finished", "variant": v[2].name, "cfg_seed": 0.0,
         "cfg_epochs": 9},
        {**base, "run_id": "ccc", "status": "finished", "variant": v[3].name, "cfg_seed": 1,
         "protocol": 1},
        {**base, "run_id": "ddd", "status": "finished", "variant": v[3].name, "cfg_seed": 1,
         "budget": "paper"},
        {**base, "run_id": "eee", "status": "finished", "variant": v[2].name,
         "cfg_seed": math.nan},
    ]
    new = runner.explain(suite, tiny_suite.parent, v, runs=Frame(rows))
    assert CountingRows.iterations == 1
    assert new == old_explain(suite, v, rows)
    assert [new[x.run_id].split(" ")[0] for x in v] == ["finished", "its", "bbb", "ccc"]
    assert runner.explain(suite, tiny_suite.parent, v, force=True, runs=Frame(rows)) == \
        old_explain(suite, v, rows, force=True)
    # a variant whose run_ids and names the rows never mention: no stored result
    other = [Variant("unseen", v[0].config.replace(k=7))]
    assert runner.explain(suite, tiny_suite.parent, other, runs=Frame(rows)) == {
        other[0].run_id: "no stored result"}


def test_calibration_times_steps_and_an_estimate_of_the_runs_shape():
    """Eager steps of batch min(100, 100 training examples), then an estimate of 10 test
    examples x min(k_eval 7, 1000) samples; with a clock moving 0.1 s a reading every timed
    call takes 0.1 s: 1000 examples/s, 700 samples/s. Guards the rate's arithmetic (batch,
    examples x samples, per second)."""
    tick = iter(range(10**6))
    rates = projection.calibrate(tiny(), "cpu", 1, clock=lambda: next(tick) * 0.1)
    assert rates == (pytest.approx(1000.0), pytest.approx(700.0))


def test_a_run_whose_calibration_fails_is_unknown_not_a_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(projection, "calibrate", broken)
    p = Projector(MACHINE).project(tiny())
    assert p.here_s is None
    assert p.here_source == "unknown (its calibration failed: RuntimeError: no such kernel)"
