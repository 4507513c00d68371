"""Runners that share a store split the work (issue 27, part 6): claim files with a heartbeat,
stale claims taken over atomically, and two `vaebench run` processes on one suite that train
every run once, even when one of them is killed mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import store
from bench.claims import Claim, Claims, claim_path, pid_alive
from bench.runner import RunOptions, log_path, run_suite
from bench.suite import load_suite

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
VAEBENCH = [sys.executable, "-m", "bench.cli"]
HOST = socket.gethostname()
HEADER = re.compile(r"^# \S+ .* run_id=(\S+) pid=(\d+) ", re.M)


def write_claim(results: Path, run_id: str, **fields) -> Path:
    """A claim file as another runner would have left it."""
    now = time.time()
    claim = {"run_id": run_id, "host": "elsewhere", "pid": 1, "runner": "other",
             "started": now, "heartbeat": now, **fields}
    path = claim_path(results, "s", run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(claim))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def trainings(results: Path, suite: str) -> dict[str, list[int]]:
    """run_id -> the pids that started training it, from the header line each attempt
    writes to the run's log."""
    out: dict[str, list[int]] = {}
    for log in sorted((results / "logs" / f"suite={suite}").glob("*.log")):
        for run_id, pid in HEADER.findall(log.read_text()):
            out.setdefault(run_id, []).append(int(pid))
    return out


# ------------------------------------------------------------------------ claim files
def test_a_claim_is_one_whole_file_and_a_second_runner_sees_it_held(tmp_path):
    with Claims(tmp_path, "s") as mine, Claims(tmp_path, "s") as other:
        assert mine.claim("r1") is None
        path = claim_path(tmp_path, "s", "r1")
        data = json.loads(path.read_text())
        assert {k: data[k] for k in ("run_id", "host", "pid", "runner")} == {
            "run_id": "r1", "host": HOST, "pid": os.getpid(), "runner": mine.runner}
        assert data["started"] == data["heartbeat"] == pytest.approx(time.time(), abs=5)
        held = other.claim("r1")
        assert isinstance(held, Claim) and held.runner == mine.runner
        assert held.holder == f"{HOST}:{os.getpid()}"
        assert mine.claim("r1") is None  # its own already
        mine.release("r1")
        assert not path.exists()
        assert other.claim("r1") is None
    assert not path.exists()  # closing released the other's too
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock"]  # no temp files


def test_the_heartbeat_refreshes_a_held_claim(tmp_path):
    # Guards against: a heartbeat thread that never writes, so a live runner's claim looks
    # stale after the timeout and another runner trains the run a second time.
    with Claims(tmp_path, "s", heartbeat_every=0.05) as mine:
        mine.claim("r1")
        first = json.loads(claim_path(tmp_path, "s", "r1").read_text())
        time.sleep(0.4)
        later = json.loads(claim_path(tmp_path, "s", "r1").read_text())
    assert later["heartbeat"] - first["heartbeat"] >= 0.2
    assert later["started"] == first["started"]


def test_a_claim_whose_heartbeat_stopped_is_taken_over_and_a_live_one_is_not(tmp_path):
    now = time.time()
    fresh = Claims(tmp_path, "s", stale_after=60)
    write_claim(tmp_path, "alive", heartbeat=now - 50)
    write_claim(tmp_path, "stopped", heartbeat=now - 70)
    assert fresh.claim("alive").holder == "elsewhere:1"
    assert fresh.claim("stopped") is None
    assert json.loads(claim_path(tmp_path, "s", "stopped").read_text())["runner"] == \
        fresh.runner
    garbage = write_claim(tmp_path, "garbage")
    garbage.write_text("{not json")  # not a claim: as good as a stopped one
    assert fresh.claim("garbage") is None
    binary = write_claim(tmp_path, "binary")
    binary.write_bytes(b"\xff\xfe\x00")  # not even UTF-8: no traceback either
    assert fresh.claim("binary") is None


def test_on_the_same_host_a_claim_of_a_dead_process_is_stale_at_once(tmp_path):
    write_claim(tmp_path, "dead", host=HOST, pid=dead_pid())
    write_claim(tmp_path, "live", host=HOST, pid=os.getpid())
    write_claim(tmp_path, "remote", host="elsewhere", pid=dead_pid())  # not our process table
    claims = Claims(tmp_path, "s")
    assert claims.claim("dead") is None
    assert claims.claim("live").holder == f"{HOST}:{os.getpid()}"
    assert claims.claim("remote").holder.startswith("elsewhere:")


def test_a_killed_but_unreaped_process_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        time.sleep(0.5)  # a zombie until waited for
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid())


def test_a_runner_whose_claim_was_taken_over_knows_and_leaves_it_alone(tmp_path):
    slow = Claims(tmp_path, "s")
    slow.claim("r1")
    quick = Claims(tmp_path, "s", stale_after=0.0)  # slow's heartbeat looks stopped to it
    time.sleep(0.01)
    assert quick.claim("r1") is None
    slow.refresh()
    assert slow.lost == {"r1"} and slow.held == {}
    slow.release_all()
    assert json.loads(claim_path(tmp_path, "s", "r1").read_text())["runner"] == quick.runner


RACE = """
import sys, time
from pathlib import Path
from bench.claims import Claims

claims = Claims(Path(sys.argv[1]), "s", stale_after=60)
start = float(sys.argv[2])
while time.time() < start:
    pass
won = [run_id for run_id in sys.argv[3:] if claims.claim(run_id) is None]
print(" ".join(won), flush=True)
time.sleep(1.5)  # alive (its claims too) until every racer has tried
"""


def test_processes_racing_for_stale_claims_exactly_one_wins_each(tmp_path):
    # Guards against: a takeover that is a read then a write (no lock): every racer that
    # read the stale claim before another wrote its own believes the run is its own.
    run_ids = [f"r{i}" for i in range(20)]
    for run_id in run_ids:
        write_claim(tmp_path, run_id, heartbeat=0.0)
    start = time.time() + 2.5  # all started (Python, no torch) and spinning by then
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(start),
                                *run_ids], stdout=subprocess.PIPE, text=True, cwd=REPO)
              for _ in range(6)]
    wins = [racer.communicate(timeout=60)[0].split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert sorted(run_id for won in wins for run_id in won) == sorted(run_ids)


# ---------------------------------------------------------------- in one runner process
TOYS = """
[suite]
name = "s"
description = "toys that train in milliseconds"
seeds = [0, 1]

[base]
objective = "iwae"
k = 5
dataset = "gmm"
iterations = 20
"""


def toy_suite(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text(TOYS)
    return load_suite(path)


def test_a_run_stored_by_another_runner_after_the_plan_is_not_trained_again(tmp_path,
                                                                           monkeypatch):
    # Guards against: a claim won without re-checking the store: another runner finished
    # the run between this runner's plan and its claim, and it is trained a second time.
    import bench.runner as runner

    suite = toy_suite(tmp_path)
    planned = runner.plan

    def plan_then_another_runner_stores_the_first(*args, **kwargs):
        to_run, cached = planned(*args, **kwargs)
        first = to_run[0]
        store.write_run(tmp_path, store.run_row(
            suite="s", variant=first.name, config=first.config, status="finished",
            metrics={}, provenance={"pid": 1}))
        return to_run, cached

    monkeypatch.setattr(runner, "plan", plan_then_another_runner_stores_the_first)
    summary = run_suite(suite, RunOptions(results=tmp_path, executor="local",
                                          show_progress=False))
    assert summary.by_others == 1 and summary.statuses == {"finished": 1}
    first, second = suite.variants
    assert trainings(tmp_path, "s") == {second.run_id: [os.getpid()]}
    runs = store.load_runs(tmp_path, suite="s").set_index("run_id")
    assert runs.loc[first.run_id, "sys_pid"] == 1  # the other runner's row stands
    assert not list((tmp_path / "claims").rglob("*.claim"))


def test_a_runner_waits_for_a_run_another_runner_holds_until_it_lands(tmp_path, capsys):
    suite = toy_suite(tmp_path)
    held = suite.variants[0]
    with Claims(tmp_path, "s") as other:
        assert other.claim(held.run_id) is None

        def land_it():
            time.sleep(1.0)
            store.write_run(tmp_path, store.run_row(
                suite="s", variant=held.name, config=held.config, status="finished",
                metrics={}, provenance={"pid": 1}))
            other.release(held.run_id)

        lander = threading.Thread(target=land_it)
        lander.start()
        began = time.perf_counter()
        summary = run_suite(suite, RunOptions(results=tmp_path, executor="local",
                                              show_progress=True))
        waited = time.perf_counter() - began
        lander.join()
    assert summary.by_others == 1 and summary.statuses == {"finished": 1}
    assert waited >= 1.0
    assert held.run_id not in trainings(tmp_path, "s")
    err = capsys.readouterr().err
    assert f"waiting for 1 run claimed by {HOST}:{os.getpid()}" in err


def test_a_runner_takes_over_a_claim_whose_heartbeat_stopped(tmp_path):
    suite = toy_suite(tmp_path)
    held = suite.variants[1]
    stopped = Claims(tmp_path, "s")  # never entered: no heartbeat; its process (ours) lives
    assert stopped.claim(held.run_id) is None
    began = time.perf_counter()
    summary = run_suite(suite, RunOptions(results=tmp_path, executor="local",
                                          show_progress=False, claim_timeout=0.5))
    assert time.perf_counter() - began >= 0.5
    assert summary.by_others == 0 and summary.statuses == {"finished": 2}
    assert trainings(tmp_path, "s") == {v.run_id: [os.getpid()] for v in suite.variants}
    stopped.refresh()  # its claim is gone: it knows it no longer holds the run
    assert stopped.lost == {held.run_id}


# ------------------------------------------------------------- two runner processes
SPLIT = """
[suite]
name = "split"
description = "two runners, one grid"
seeds = [0, 1]

[base]
dataset = "digits"
hidden = [[64]]
latent = [8]
epochs = 8
k_eval = 10

[grid]
lr = [1e-3, 2e-3, 3e-3]
"""


def test_two_runner_processes_split_a_grid_and_train_each_run_once(tmp_path):
    path = tmp_path / "split.toml"
    path.write_text(SPLIT)
    results = tmp_path / "r"
    argv = [*VAEBENCH, "run", str(path), "--executor", "local", "--results", str(results),
            "--no-progress"]
    runners = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [runner.communicate(timeout=240) for runner in runners]
    for runner, (_, err) in zip(runners, outs, strict=True):
        assert runner.returncode == 0, err[-2000:]
    suite = load_suite(path)
    ids = sorted(v.run_id for v in suite.variants)
    trained = trainings(results, "split")
    assert sorted(trained) == ids and all(len(pids) == 1 for pids in trained.values())
    by_pid = {runner.pid: sorted(r for r, pids in trained.items() if pids == [runner.pid])
              for runner in runners}
    assert all(by_pid.values()), f"one runner trained everything: {by_pid}"
    runs = store.load_runs(results, suite="split")
    assert sorted(runs["run_id"]) == ids and (runs["status"] == "finished").all()
    assert {r: [p] for r, p in zip(runs["run_id"], runs["sys_pid"], strict=True)} == trained
    for runner, (out, _) in zip(runners, outs, strict=True):  # each counts the other's runs
        other = len(ids) - len(by_pid[runner.pid])
        assert f"{{'finished': {len(by_pid[runner.pid])}}} -> {results}; {other} trained by " \
               "other runners" in out
    assert not list(results.rglob("*.claim"))


KILLED = """
[suite]
name = "killed"
description = "a long run whose runner is killed, and short ones"
seeds = [0]

[base]
dataset = "digits"
k_eval = 10

[[variant]]
name = "long"
epochs = 60

[[variant]]
name = "short-a"
hidden = [[16]]
latent = [4]
train_size = 200
epochs = 1

[[variant]]
name = "short-b"
hidden = [[16]]
latent = [4]
train_size = 200
epochs = 2
"""


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_runners_run_is_taken_over_and_the_grid_completes(tmp_path):
    """Runner A claims the long run and is stopped mid-run; runner B trains the short runs,
    waits for A's, and once A is SIGKILLed takes it over (from its checkpoint): every run
    trained once, but the killed one's, trained twice (once partly)."""
    path = tmp_path / "killed.toml"
    path.write_text(KILLED)
    suite = load_suite(path)
    long_run = suite.variants[0].run_id
    results = tmp_path / "r"
    argv = [*VAEBENCH, "run", str(path), "--executor", "local", "--results", str(results),
            "--checkpoint-every", "1"]
    a = subprocess.Popen([*argv, "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    b = None
    try:
        log = log_path(results, "killed", long_run)
        _wait_for(lambda: log.exists() and log.read_text().count("\nepoch ") >= 2,
                  "runner A to train the long run")
        os.kill(a.pid, signal.SIGSTOP)  # mid-run, its claim alive (its process is)
        b_err = tmp_path / "b.err"
        with open(b_err, "w") as err:
            b = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                                 text=True, start_new_session=True)
        _wait_for(lambda: f"waiting for 1 run claimed by {HOST}:{a.pid}" in b_err.read_text(),
                  "runner B to wait for A's run")
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        out, _ = b.communicate(timeout=180)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert b.returncode == 0, b_err.read_text()[-2000:]
    trained = trainings(results, "killed")
    assert trained == {long_run: [a.pid, b.pid],
                       **{v.run_id: [b.pid] for v in suite.variants[1:]}}
    assert "resuming from checkpoint" in log.read_text()
    runs = store.load_runs(results, suite="killed")
    assert sorted(runs["run_id"]) == sorted(v.run_id for v in suite.variants)
    assert (runs["status"] == "finished").all() and set(runs["sys_pid"]) == {b.pid}
    assert "{'finished': 3}" in out
    assert not list(results.rglob("*.claim"))


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_the_claim_timeout_must_be_a_positive_number_of_seconds(tmp_path, capsys, value):
    from bench.cli import main

    assert main(["run", "smoke", "--claim-timeout", value, "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"vaebench: error: --claim-timeout must be a number of "
                                       f"seconds > 0, got {float(value)}\n")
