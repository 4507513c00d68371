"""Planning and `vaebench run --dry-run` of a sweep of 10^5 runs (issue 27, part 3): linear
in the number of runs. Before: the listing sorted with `suite.variants.index` (each
comparison a config's canonical JSON, recomputed) and `explain` scanned every stored row per
run: this grid's dry-run took 315 s at 8,000 runs on the shared 2-core machine (the issue:
4,000 5 s, 16,000 74 s). After, a run of this test there (its 2 cores shared with other
work): the dry-run of 10^5 runs 21.3 s; load_suite 2.2 s, plan 0.4 s, explain over 10^5
stored rows 5.0 s.

The suite: a grid of 10 cells x 10,000 seeds on the digits data set (written into a tmp
dir). The dry-run projects the cost with --no-calibrate (FLOPs per distinct architecture,
no timing), so it measures the planning; explain is timed on 10^5 stored rows (half of them
finished, so half the runs are cached and half look up their variant and seed)."""

from __future__ import annotations

import contextlib
import io
import time

import pandas as pd
import pytest

from bench import config as bench_config
from bench.cli import main
from bench.runner import explain, plan
from bench.suite import load_suite

SEEDS = 10_000
SUITE = f"""
[suite]
name = "sweep"
description = "a sweep of 10^5 runs"
seeds = {list(range(SEEDS))}

[base]
dataset = "digits"
epochs = 1
k_eval = 10

[grid]
objective = ["vae", "iwae"]
k = [1, 2, 3, 4, 5]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "sweep.toml"
    path.write_text(SUITE)
    return path, folder / "results"


def test_load_plan_and_dry_run_of_100k_runs(sweep, report):
    path, results = sweep
    began = time.perf_counter()
    suite = load_suite(path)
    loaded = time.perf_counter()
    to_run, cached = plan(suite, results)
    planned = time.perf_counter()
    assert len(suite.variants) == 100_000 and len(to_run) == 100_000 and not cached

    rows = pd.DataFrame({
        "run_id": [v.run_id if i % 2 else f"old{i}" for i, v in enumerate(suite.variants)],
        "status": "finished", "variant": [v.name for v in suite.variants],
        "budget": None, "cfg_seed": [float(v.seed) for v in suite.variants],
        "protocol": bench_config.PROTOCOL})
    start = time.perf_counter()
    reasons = explain(suite, results, suite.variants, runs=rows)
    explained = time.perf_counter() - start
    assert sum(r.startswith("finished row") for r in reasons.values()) == 50_000

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["run", str(path), "--dry-run", "--no-calibrate",
                     "--results", str(results)]) == 0
    dry = time.perf_counter() - start
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 2 * 100_000 + 2 and lines[-2].startswith("cost of 100000 runs")
    report(f"10^5 runs: load_suite {loaded - began:.1f} s, plan {planned - loaded:.1f} s, "
           f"explain over 10^5 stored rows {explained:.1f} s, dry-run (load, plan, explain, "
           f"FLOPs, listing) {dry:.1f} s")
    assert dry < 300  # quadratic it took hours; linear it is the load's time and the listing's
