"""A store that cannot be written mid-grid (a full disk, a quota, a store turned read-only):
one line naming the file and what was kept, exit 3, no half-written or orphaned file, and a
rerun once the store is writable again completes the grid."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_runner import TINY

from bench import store
from bench.cli import main
from bench.runner import RunOptions, StoreFault, checkpoint_path, log_path, run_suite
from bench.suite import load_suite, resolve_suite_path

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
KINDS = ("curves", "samples", "runs")  # the order write_run writes a smoke run's files in
WRITE_TABLE = pq.write_table


def fail_writes(monkeypatch, first: int, err_no: int) -> list:
    """Every Parquet write of the store from the `first` (1-based) on writes a few bytes of
    its file, then fails with `err_no`, as a file system that fills up or turns read-only."""
    real, calls = pq.write_table, []

    def write_table(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) >= first:
            where.write(b"PAR1 half a file")
            raise OSError(err_no, os.strerror(err_no))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)  # bench.store writes through it
    return calls


def store_files(results: Path) -> dict[str, list[str]]:
    return {kind: sorted(p.stem for p in (results / kind).rglob("*.parquet"))
            for kind in KINDS}


def leftovers(results: Path) -> list[Path]:
    """Temp files of the atomic writes, and claims still held."""
    return [p for p in results.rglob("*") if p.name.endswith((".tmp", ".claim"))]


@pytest.mark.parametrize("err_no, first", [
    (errno.ENOSPC, 6),  # run 2's row, after its curves and samples were written
    (errno.EDQUOT, 5),  # run 2's samples
    (errno.EROFS, 4),  # run 2's curves
    (errno.EACCES, 1),  # the first file of the grid
])
def test_a_store_that_fills_up_mid_grid_is_one_line_then_a_rerun_completes_it(
        tmp_path, monkeypatch, capsys, err_no, first):
    # Guards against: the OSError traceback of issue 27; a grid that goes on training runs
    # it cannot store; temp files or the unstored run's curves/samples left behind (a run's
    # side files without its row); a message that does not say what was kept.
    suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
    ids = [v.run_id for v in suite.variants]  # the order --executor local runs them in
    stored = (first - 1) // 3  # runs whose three files were all written
    failing = tmp_path / KINDS[(first - 1) % 3] / "suite=smoke" / f"{ids[stored]}.parquet"
    calls = fail_writes(monkeypatch, first, err_no)
    argv = ["run", "smoke", "--executor", "local", "--results", str(tmp_path), "--no-progress"]

    assert main(argv) == 3
    out, err = capsys.readouterr()
    runs_word = "run" if stored == 1 else "runs"
    assert err == (f"vaebench: error: cannot write {failing}: {os.strerror(err_no)}: "
                   f"{stored} {runs_word} stored; 1 trained run could not be stored: rerun to "
                   "redo it\n")
    assert out == ""
    assert len(calls) == first  # it stopped: no run after the failing one was trained
    assert not log_path(tmp_path, "smoke", ids[stored + 1]).exists()
    assert store_files(tmp_path) == {kind: sorted(ids[:stored]) for kind in KINDS}
    assert leftovers(tmp_path) == []
    runs = store.load_runs(tmp_path, suite="smoke")
    assert sorted(runs["run_id"]) == sorted(ids[:stored])
    assert len(store.load_curves(tmp_path, suite="smoke")) == 2 * stored  # 2 epochs each
    log = log_path(tmp_path, "smoke", ids[stored]).read_text()
    assert log.endswith(f"# finished\n# not stored: {os.strerror(err_no)}\n")
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.parquet")}

    monkeypatch.setattr(pq, "write_table", WRITE_TABLE)  # room made
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"suite smoke (budget smoke): 4 runs, {stored} cached, "
                          f"{{'finished': {4 - stored}}} ->")
    assert store_files(tmp_path) == {kind: sorted(ids) for kind in KINDS}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the stored runs: not redone
    assert leftovers(tmp_path) == []


def test_a_run_log_that_cannot_be_written_stops_the_grid_before_training(tmp_path, capsys):
    # Guards against: an OSError from the run's log (the store's disk, before any row is
    # written) escaping as a traceback, or being counted as a trained run.
    logs = tmp_path / "logs" / "suite=smoke"
    logs.parent.mkdir(parents=True)
    logs.write_text("a file where the logs' directory goes")  # its mkdir fails, even as root
    assert main(["run", "smoke", "--executor", "local", "--results", str(tmp_path),
                 "--no-progress"]) == 3
    assert capsys.readouterr().err == (
        f"vaebench: error: cannot write {logs}: File exists: 0 runs stored; 1 run could not "
        "be stored: rerun to redo it\n")
    assert store_files(tmp_path) == {kind: [] for kind in KINDS}
    assert leftovers(tmp_path) == []


FAST_THEN_SLOW = """
[[variant]]
name = "fast"

[[variant]]
name = "slow"
epochs = 100000
"""


def test_a_full_disk_on_ray_cancels_the_runs_in_flight(ray_session, tmp_path, monkeypatch):
    # Guards against: a driver that stops on a StoreFault but leaves its submitted Ray tasks
    # training (on a cluster they would run on for nothing, holding their claims' slots).
    path = tmp_path / "slow.toml"  # a fast run, then a store that is full, a slow run in flight
    path.write_text(TINY.format(name="slow", epochs=1).replace("seeds = [0, 1]", "seeds = [0]")
                    + FAST_THEN_SLOW)
    suite = load_suite(path)
    assert [(v.name, v.config.epochs) for v in suite.variants] == [("fast", 1), ("slow", 100000)]
    results = tmp_path / "r"
    slow = log_path(results, "slow", suite.variants[1].run_id)
    fail_writes(monkeypatch, 1, errno.ENOSPC)
    full = pq.write_table

    def once_the_slow_run_trains(*args, **kwargs):  # else the check below proves nothing
        deadline = time.monotonic() + 120
        while not (slow.exists() and "\nepoch " in slow.read_text()):
            assert time.monotonic() < deadline, "the slow run never started training"
            time.sleep(0.05)
        return full(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", once_the_slow_run_trains)
    with pytest.raises(StoreFault, match="No space left on device: 0 runs stored; 1 "
                                         "trained run could not be stored"):
        run_suite(suite, RunOptions(results=results, show_progress=False))
    time.sleep(0.5)  # the forced cancel lands
    lines = slow.read_text().count("\nepoch ")
    time.sleep(3)  # hundreds of epochs of the slow run, were it still training
    after = slow.read_text().count("\nepoch ")
    assert after == lines, "the slow run went on training after the fault"
    # a worker killed by the forced cancel may leave its checkpoint's temp file (removed by
    # the run's next attempt: test_a_killed_attempts_checkpoint_temp_is_removed); no store
    # file is half-written and no claim is held
    assert [p for p in leftovers(results) if not p.name.startswith(f".{slow.stem}.pt.")] == []


def test_a_killed_attempts_checkpoint_temp_is_removed(tmp_path):
    # Guards against: temp files of checkpoints written by a killed worker (a forced Ray
    # cancel, SIGKILL) piling up beside the checkpoints forever.
    suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
    run_id = suite.variants[0].run_id
    stale = checkpoint_path(tmp_path, "smoke", run_id).with_name(f".{run_id}.pt.99999.tmp")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    assert main(["run", "smoke", "--executor", "local", "--results", str(tmp_path),
                 "--no-progress"]) == 0
    assert not stale.exists() and leftovers(tmp_path) == []


NAMESPACE_SCRIPT = """
set -u
mount -t tmpfs -o size=200k tmpfs "$1" || exit 99
"$2" -m bench.cli run smoke --executor local --results "$1/r" --no-progress 2> "$3/err1"
echo "rc1=$?"
find "$1/r" -type f | sort > "$3/files1"
mount -o remount,size=4m "$1"
"$2" -m bench.cli run smoke --executor local --results "$1/r" --no-progress > "$3/out2"
echo "rc2=$?"
find "$1/r" -type f | sort > "$3/files2"
"""


def test_a_real_full_tmpfs_mid_grid_then_room_made(tmp_path):
    """A 200 KB tmpfs (about two smoke runs), mounted in a user namespace where the kernel
    allows it: the real ENOSPC of a full file system, then the same tmpfs grown."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare")
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                           NAMESPACE_SCRIPT, "sh", str(mount), sys.executable, str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    if done.returncode != 0 or "rc1=" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    assert "rc1=3" in done.stdout and "rc2=0" in done.stdout, done.stdout
    err = (tmp_path / "err1").read_text()
    assert len(err.splitlines()) == 1 and err.startswith(f"vaebench: error: cannot write {mount}")
    assert ": No space left on device: " in err and err.rstrip().endswith(
        ("rerun to redo it", "rerun to run the rest"))
    files = (tmp_path / "files1").read_text().split()
    assert not [f for f in files if f.endswith((".tmp", ".claim"))]
    stems = {kind: {Path(f).stem for f in files if f"/{kind}/" in f and f.endswith(".parquet")}
             for kind in KINDS}
    assert stems["curves"] == stems["samples"] == stems["runs"]  # no orphans, nothing half
    assert "(budget smoke): 4 runs, " in (tmp_path / "out2").read_text()
    final = (tmp_path / "files2").read_text().split()
    assert len([f for f in final if "/runs/" in f and f.endswith(".parquet")]) == 4
