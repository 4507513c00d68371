"""`compare` on a committed baseline file: the smoke suite, run now, against
results/baselines/smoke.parquet on the metrics that do not depend on the machine. (The merge
gate proper, on models trained enough to learn, is tests/test_gate.py.)"""

from __future__ import annotations

from pathlib import Path

from bench import store
from bench.compare import compare, has_regression, render_markdown, rules_for
from bench.runner import RunOptions, run_suite
from bench.suite import load_suite, resolve_suite_path

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "smoke.parquet"


def test_smoke_suite_has_not_regressed_against_its_committed_baseline(tmp_path):
    suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
    summary = run_suite(suite, RunOptions(results=tmp_path, executor="local",
                                          show_progress=False))
    assert summary.statuses == {"finished": len(suite.variants)}
    baseline, candidate = store.load_runs(BASELINE), store.load_runs(tmp_path)
    verdicts = compare(baseline, candidate, machine=False)
    table = render_markdown(verdicts)
    assert not has_regression(verdicts), table
    assert {v.verdict for v in verdicts} == {"unchanged"}, table  # nothing missing either
    judged = rules_for(candidate.columns, machine=False)  # test LL, ELBO, ESS, sharpness, ...
    assert len(judged) >= 6
    assert len(verdicts) == len(judged) * len({v.name for v in suite.variants})
