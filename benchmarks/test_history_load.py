"""Loading the history store (issue 26): 1,000 tracked commits of the bench suite (16 runs
each, the committed baseline's rows) should load in about a second."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench import history

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "bench.parquet"


@pytest.fixture(scope="module")
def thousand_commits(tmp_path_factory):
    results = tmp_path_factory.mktemp("history")
    rows = pd.read_parquet(BASELINE)
    for i in range(1000):  # about 20 s: every append rewrites its file, packs every 64
        commit = history.Commit(f"{i:040x}", f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:"
                                f"{i % 60:02d}+00:00", f"commit {i}", False)
        history.append(results, "bench", commit, "box", rows)
    return results


def test_load_a_thousand_commits(benchmark, thousand_commits):
    frame = benchmark(history.load_history, thousand_commits, "bench")
    assert len(frame) == 16_000 and frame["hist_commit"].nunique() == 1000
