"""The store at scale (issue 27): a cached plan, load_runs, a report of the big suite and a
compare, on a loose store (one file per run) and on the same store compacted.

`make microbench` builds N = VAEBENCH_SCALE_RUNS runs (default 1,000: 1,010 runs in 3,030
files, 6 s to build on a 2-core VM); the 10^5-run figures of the README come from
`python benchmarks/store_scale.py --runs 100000` (store_scale.py builds both stores)."""

from __future__ import annotations

import os
import shutil

import pytest
from store_scale import build_store, export_baseline, main, measurements

from bench.compaction import compact

RUNS = int(os.environ.get("VAEBENCH_SCALE_RUNS", "1000"))
OPS = ("cached plan", "load_runs", "report (big suite)", "compare (baseline file vs store)")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    work = tmp_path_factory.mktemp("scale")
    suites = build_store(work / "loose", work / "suites", RUNS)
    baseline = export_baseline(work / "loose", work / "baseline.parquet")
    shutil.copytree(work / "loose", work / "compacted")
    compact(work / "compacted")
    return {state: measurements(work / state, suites, baseline, work / f"report-{state}")
            for state in ("loose", "compacted")}


@pytest.mark.parametrize("state", ["loose", "compacted"])
@pytest.mark.parametrize("op", OPS)
def test_store_scale(benchmark, stores, state, op):
    benchmark.pedantic(stores[state][op], rounds=1 if op.startswith("report") else 3)


def test_the_script_runs_its_default_steps(tmp_path, capsys):
    assert main(["--runs", "70", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "built a loose store of 70 runs" in out and "compaction took" in out
    for state in ("loose", "compacted"):
        assert out.count(f"{state:10} 70 runs") == len(OPS), out
