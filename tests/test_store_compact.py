"""Store compaction (bench.compaction, `vaebench store compact`): every reader sees the same
runs, curves and samples before and after, and after a compaction interrupted at any step
(an exception at each write and removal in turn, and a real kill -9); runners writing
meanwhile lose nothing; the newest row of a run_id wins across loose and compacted files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import compaction, store
from bench.cli import main
from bench.config import RunConfig
from bench.errors import BenchError

PROVENANCE = {"git_commit": "abc123", "git_dirty": False, "torch_threads": 1}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """Writes here need not reach the disk (populate() of 300 runs on a 2-core VM: 1.6-1.7 s
    without fsync, 1.9-2.6 s with)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def row(seed: int, suite: str = "s1", status: str = "finished", **metrics) -> dict:
    cfg = RunConfig(seed=seed)
    values = ({"test_ll": -90.0 - seed / 8, "active_units": seed % 7,
               "active_units_by_layer": [seed % 7]} if status == "finished"
              else {"epochs_done": 1})
    return store.run_row(suite=suite, variant=cfg.label, config=cfg, status=status,
                         metrics={**values, **metrics}, provenance=PROVENANCE, budget="smoke",
                         error=None if status == "finished" else "RuntimeError: boom")


def curves(seed: int, n: int, offset: float = 0.0) -> list[dict]:
    return [{"epoch": e, "train_bound": -100.0 + e + seed + offset, "lr": 1e-3}
            for e in range(1, n + 1)]


def samples(seed: int, n: int = 2) -> list[dict]:
    return [{"kind": kind, "index": i, "height": 2, "width": 2,
             "pixels": [seed / 100, 0.5, 0.25, i / 4]}
            for kind in ("prior", "original") for i in range(n)]


def write(results: Path, seed: int, suite: str = "s1", status: str = "finished",
          n_curves: int = 3, with_samples: bool = True, **kwargs) -> str:
    r = row(seed, suite, status)
    store.write_run(results, r, curves(seed, n_curves),
                    samples=samples(seed) if with_samples else (), **kwargs)
    return r["run_id"]


def populate(results: Path, seeds: range, suite: str = "s1") -> None:
    for seed in seeds:  # a mix: failed and diverged rows, runs without curves or samples
        status = ("failed", "diverged", "finished", "finished")[seed % 4]
        write(results, seed, suite, status, n_curves=seed % 3, with_samples=seed % 5 != 0)


def view(results: Path) -> dict:
    """Everything readers see, in a comparable form."""
    def frame(loaded: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        loaded = loaded.sort_values(keys, kind="stable").reset_index(drop=True)
        return loaded.reindex(sorted(loaded.columns), axis=1)

    return {
        "runs": frame(store.load_runs(results), ["suite", "run_id"]),
        "curves": frame(store.load_curves(results), ["suite", "run_id", "epoch"]),
        "samples": frame(store.load_samples(results), ["suite", "run_id", "kind", "index"]),
        "finished": {s: store.finished_run_ids(results, s) for s in ("s1", "s2")},
    }


def assert_same(a: dict, b: dict) -> None:
    for key in ("runs", "curves", "samples"):
        pd.testing.assert_frame_equal(a[key], b[key], obj=key)
    assert a["finished"] == b["finished"]


def files(results: Path, kind: str = "runs", suite: str = "s1") -> list[str]:
    return sorted(p.name for p in (results / kind / f"suite={suite}").iterdir()
                  if not p.name.startswith("."))


def leftovers(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def template(tmp_path) -> Path:
    """A store already compacted once (a small compacted file) with newer loose runs: one
    replacing a compacted failed row, one a compacted finished row (forced), new ones."""
    results = tmp_path / "template"
    populate(results, range(12))
    populate(results, range(3), suite="s2")
    compaction.compact(results)
    populate(results, range(12, 18))
    write(results, 0, status="finished", n_curves=4)  # was failed, compacted: replaced
    write(results, 2, status="diverged", n_curves=1, replace_finished=True)  # was finished
    return results


def test_compaction_keeps_every_reader_equal_and_is_idempotent(template):
    before = view(template)
    assert len(before["runs"]) == 21 and before["curves"].shape[0] > 0
    done = compaction.compact(template)
    assert [(c.suite, c.loose, c.merged, c.written, c.runs, c.kept) for c in done] == [
        ("s1", 8, 1, ("compacted+00000002.parquet",), 18, 0),
        ("s2", 0, 0, (), 0, 0)]
    assert_same(view(template), before)
    # run rows, curves and samples: one compacted file each, no loose file left
    assert files(template) == files(template, "curves") == files(template, "samples") == [
        "compacted+00000002.parquet"]
    again = compaction.compact(template)
    assert [c.written for c in again] == [(), ()]
    assert_same(view(template), before)


def test_newest_row_wins_across_loose_and_compacted_curves_never_mixed(tmp_path):
    failed = write(tmp_path, 1, status="failed", n_curves=2)
    compaction.compact(tmp_path)
    # the failed compacted row is replaced by a finished loose one without samples
    store.write_run(tmp_path, row(1), curves(1, 5, offset=0.5))
    runs = store.load_runs(tmp_path)
    assert runs["status"].tolist() == ["finished"] and runs["run_id"].tolist() == [failed]
    got = store.load_curves(tmp_path)
    assert got["epoch"].tolist() == [1, 2, 3, 4, 5]  # the new run's 5, not 2 + 5
    assert got["train_bound"].tolist() == [-97.5, -96.5, -95.5, -94.5, -93.5]
    assert store.load_samples(tmp_path).empty  # the compacted samples were the old row's
    assert store.finished_run_ids(tmp_path, "s1") == {failed}
    # among compacted files, the later one wins: compact with the loose row in a new file
    # while the old file keeps its stale copy (one current row left: it is small, merged)
    done = compaction.compact(tmp_path)
    assert done[0].written == ("compacted+00000002.parquet",) and done[0].merged == 1
    assert store.load_curves(tmp_path)["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert store.load_runs(tmp_path)["status"].tolist() == ["finished"]


def test_a_finished_compacted_row_blocks_a_write_unless_forced(tmp_path):
    run_id = write(tmp_path, 4)
    compaction.compact(tmp_path)
    loose = store.run_path(tmp_path, "s1", run_id)
    store.write_run(tmp_path, row(4, status="failed"), curves(4, 1))
    assert not loose.exists()  # nothing written: the finished row stands
    assert store.load_runs(tmp_path)["status"].tolist() == ["finished"]
    assert len(store.load_curves(tmp_path)) == 3
    store.write_run(tmp_path, row(4, status="diverged"), curves(4, 1), replace_finished=True)
    assert loose.exists()
    assert store.load_runs(tmp_path)["status"].tolist() == ["diverged"]
    assert store.load_curves(tmp_path)["epoch"].tolist() == [1]
    assert store.finished_run_ids(tmp_path, "s1") == set()


def test_compacted_files_are_bounded_and_small_ones_merged(tmp_path):
    populate(tmp_path, range(12))
    done = compaction.compact(tmp_path, max_runs=5)
    assert done[0].written == ("compacted+00000001.parquet", "compacted+00000002.parquet",
                               "compacted+00000003.parquet")
    assert compaction.compact(tmp_path, max_runs=5)[0].written == ()  # one small file: kept
    write(tmp_path, 40)
    done = compaction.compact(tmp_path, max_runs=5)  # the small file (2 runs) + 1 loose
    assert (done[0].loose, done[0].merged, done[0].runs) == (1, 1, 3)
    assert files(tmp_path) == ["compacted+00000001.parquet", "compacted+00000002.parquet",
                               "compacted+00000004.parquet"]
    assert len(store.load_runs(tmp_path)) == 13


def test_a_full_disk_is_one_line_and_loses_nothing(template, tmp_path, monkeypatch):
    results = shutil.copytree(template, tmp_path / "full")
    before = view(results)

    def full(table, path):
        raise store.StoreWriteError(28, "No space left on device", str(path))

    monkeypatch.setattr(compaction, "_write", full)
    with pytest.raises(BenchError, match=r"cannot compact suite s1: .*compacted\+.*: No space"):
        compaction.compact(results)
    monkeypatch.undo()
    assert_same(view(results), before)


def test_a_loose_file_not_of_the_run_it_names_stays_loose(tmp_path):
    populate(tmp_path, range(4))
    runs_dir = tmp_path / "runs" / "suite=s1"
    both = pq.read_table(sorted(runs_dir.glob("*.parquet"))[0])
    copied = pq.read_table(sorted(runs_dir.glob("*.parquet"))[1])
    pq.write_table(pa.concat_tables([both, copied], promote_options="permissive"),
                   runs_dir / "copied-in.parquet")
    before = view(tmp_path)
    assert compaction.compact(tmp_path)[0].kept == 1  # its rows would hide behind others'
    assert "copied-in.parquet" in files(tmp_path)
    assert_same(view(tmp_path), before)


def count_steps(results: Path, monkeypatch) -> int:
    calls = []
    real_write, real_unlink = compaction._write, compaction._unlink
    monkeypatch.setattr(compaction, "_write", lambda t, p: (calls.append(p), real_write(t, p)))
    monkeypatch.setattr(compaction, "_unlink", lambda p: (calls.append(p), real_unlink(p)))
    compaction.compact(results)
    monkeypatch.undo()
    return len(calls)


def test_interrupted_at_each_write_and_removal_loses_nothing(template, tmp_path, monkeypatch):
    before = view(template)
    steps = count_steps(shutil.copytree(template, tmp_path / "count"), monkeypatch)
    # 3 files written; the 3 merged removed, and 8 loose runs' 8 + 6 curves + 7 samples files
    assert steps == 3 + 3 + 8 + 6 + 7
    real_write, real_unlink = compaction._write, compaction._unlink
    for fail_at in range(steps):
        results = shutil.copytree(template, tmp_path / f"at{fail_at}")
        calls = []

        def step(real, *args, calls=calls, fail_at=fail_at):
            if len(calls) == fail_at:
                raise KeyboardInterrupt  # stands for a kill: nothing after it runs
            calls.append(args)
            return real(*args)

        monkeypatch.setattr(compaction, "_write", lambda t, p, s=step: s(real_write, t, p))
        monkeypatch.setattr(compaction, "_unlink", lambda p, s=step: s(real_unlink, p))
        with pytest.raises(KeyboardInterrupt):
            compaction.compact(results)
        monkeypatch.undo()
        assert_same(view(results), before)
        compaction.compact(results)  # the rerun finishes the job
        assert_same(view(results), before)
        names = files(results)  # one compacted file (number 3 if the first wrote its own)
        assert len(names) == 1 and names[0].startswith("compacted+"), fail_at
        assert files(results, "curves") == files(results, "samples") == names, fail_at
        assert leftovers(results) == []


def test_killed_mid_compaction_loses_nothing_and_a_rerun_completes(tmp_path):
    populate(tmp_path, range(200))
    before = view(tmp_path)
    # the compactor removes the loose files slowly, so the kill lands while it does
    script = ("import sys, time\nfrom bench import compaction\nreal = compaction._unlink\n"
              "compaction._unlink = lambda p: (time.sleep(0.004), real(p))\n"
              "compaction.compact(sys.argv[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO)
    compacted = tmp_path / "runs" / "suite=s1" / "compacted+00000001.parquet"
    deadline = time.monotonic() + 60
    while not compacted.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    loose = [name for name in files(tmp_path) if not name.startswith("compacted")]
    assert 0 < len(loose) < 200  # killed between writing the compacted file and the end
    assert_same(view(tmp_path), before)
    done = compaction.compact(tmp_path)
    assert done[0].loose == len(loose) and done[0].merged == 1
    assert files(tmp_path) == ["compacted+00000002.parquet"]
    assert_same(view(tmp_path), before)


def test_a_run_rewritten_during_compaction_is_not_lost(tmp_path, monkeypatch):
    failed = write(tmp_path, 1, status="failed", n_curves=1)
    populate(tmp_path, range(4, 8))
    real_write = compaction._write
    new = []

    def runner_meanwhile(table, path):  # after the compactor read the loose files
        if not new:
            store.write_run(tmp_path, row(1), curves(1, 4))  # failed -> finished
            new.append(write(tmp_path, 30))  # and a run it never saw
        real_write(table, path)

    monkeypatch.setattr(compaction, "_write", runner_meanwhile)
    done = compaction.compact(tmp_path)
    assert (done[0].loose, done[0].kept) == (4, 1)
    assert sorted(n for n in files(tmp_path) if not n.startswith("compacted")) == sorted(
        [f"{failed}.parquet", f"{new[0]}.parquet"])
    runs = store.load_runs(tmp_path).set_index("run_id")
    assert runs.loc[failed, "status"] == "finished" and new[0] in runs.index
    assert len(runs) == 6
    assert store.load_curves(tmp_path).query("run_id == @failed")["epoch"].tolist() == [
        1, 2, 3, 4]


def test_corrupt_and_hidden_compacted_files(tmp_path):
    populate(tmp_path, range(4))
    compaction.compact(tmp_path)
    directory = tmp_path / "runs" / "suite=s1"
    before = store.load_runs(tmp_path)
    shutil.copy(directory / "compacted+00000001.parquet", directory / "_compacted+00000009.parquet")
    shutil.copy(directory / "compacted+00000001.parquet", directory / ".compacted+00000009.parquet")
    pd.testing.assert_frame_equal(store.load_runs(tmp_path), before)  # hidden: not read
    (directory / "compacted+00000005.parquet").write_bytes(b"not parquet")
    with pytest.raises(BenchError, match=r"corrupt results file .*compacted\+00000005"):
        store.load_runs(tmp_path)
    with pytest.raises(BenchError, match=r"corrupt results file .*compacted\+00000005"):
        store.finished_run_ids(tmp_path, "s1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pd.testing.assert_frame_equal(store.load_runs(tmp_path, skip_corrupt=True), before)
    assert any("compacted+00000005" in str(w.message) for w in caught)
    with pytest.raises(BenchError, match=r"cannot compact: corrupt results file"):
        compaction.compact(tmp_path)


def test_cli_store_compact(tmp_path, capsys):
    populate(tmp_path, range(5))
    assert main(["store", "compact", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        "suite s1: 5 loose runs -> compacted+00000001.parquet (5 runs)\n")
    assert main(["store", "compact", "--results", str(tmp_path), "--suite", "s1"]) == 0
    assert capsys.readouterr().out == "suite s1: nothing to compact\n"
    assert main(["store", "compact", "--results", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vaebench: error:" in err and "not a results store" in err
    assert main(["store", "compact", "--results", str(tmp_path), "--suite", "s9"]) == 2
    assert capsys.readouterr().err == (
        f"vaebench: error: suite 's9' has no runs in {tmp_path} (suites with runs: s1)\n")


def test_samples_of_a_few_runs_read_only_their_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "COMPACTED_SAMPLES_ROW_GROUP", 8)  # 2 runs of 4 images a group
    populate(tmp_path, range(1, 20))
    compaction.compact(tmp_path)
    everything = store.load_samples(tmp_path)
    wanted = sorted(set(everything["run_id"]))[3:5]
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: (read.append(list(groups)),
                                                    real(self, groups, **kw))[1])
    got = store.load_samples(tmp_path, run_ids=wanted)
    expected = everything[everything["run_id"].isin(wanted)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert read == [[1, 2]]  # the 4th and 5th runs with samples: groups 1 and 2 (2 runs each)
