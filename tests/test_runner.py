"""The grid runner through Ray: end to end, cached reruns, failures as rows, killed workers,
and a real two-node cluster joined with --address."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench import store
from bench.runner import RunOptions, log_path, plan, run_suite
from bench.suite import load_suite, resolve_suite_path

REPO = Path(__file__).resolve().parents[1]
VAEBENCH = [sys.executable, "-m", "bench.cli"]


def write_suite(tmp_path: Path, body: str, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(body))
    return path


TINY = """
[suite]
name = "{name}"
description = "runner test"
seeds = [0, 1]

[base]
dataset = "digits"
hidden = [[16]]
latent = [4]
train_size = 200
test_size = 50
epochs = {epochs}
k_eval = 10
"""


def test_smoke_suite_end_to_end_through_ray_then_all_cached(ray_session, tmp_path):
    suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
    options = RunOptions(results=tmp_path, show_progress=False)
    summary = run_suite(suite, options)
    assert summary.statuses == {"finished": len(suite.variants)} and summary.cached == 0

    runs = store.load_runs(tmp_path, suite="smoke")
    assert sorted(runs["run_id"]) == sorted(v.run_id for v in suite.variants)
    assert (runs["status"] == "finished").all()
    for column in ("sys_git_commit", "sys_torch", "sys_ray", "sys_numpy", "sys_hostname",
                   "sys_device_name", "sys_cpu_count", "sys_start_time", "sys_wall_seconds",
                   "sys_ray_node_id", "config_hash", "schema_version", "cfg_seed"):
        assert runs[column].notna().all(), column
    curves = store.load_curves(tmp_path, suite="smoke")
    assert len(curves) == sum(v.config.epochs for v in suite.variants)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.parquet")}

    again = run_suite(suite, options)
    assert again.cached == len(suite.variants) and again.statuses == {}
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing rewritten

    # the same runs in-process give the same metrics: where it ran is not what it computed
    local = tmp_path / "local"
    run_suite(suite, RunOptions(results=local, executor="local", show_progress=False))
    a = runs.set_index("run_id").sort_index()["metric_test_ll"]
    b = store.load_runs(local, suite="smoke").set_index("run_id").sort_index()["metric_test_ll"]
    assert a.equals(b)


def test_a_run_that_raises_is_a_failed_row_and_the_grid_goes_on(ray_session, tmp_path):
    # train_size 5000 passes validation but digits has only 1500 training examples
    path = write_suite(tmp_path, TINY.format(name="failing", epochs=1) + """
[[variant]]
name = "ok"

[[variant]]
name = "too-big"
train_size = 5000
""")
    summary = run_suite(load_suite(path), RunOptions(results=tmp_path / "r", show_progress=False))
    assert summary.statuses == {"finished": 2, "failed": 2}
    runs = store.load_runs(tmp_path / "r", suite="failing")
    failed = runs[runs["status"] == "failed"]
    assert set(failed["variant"]) == {"too-big"}
    assert failed["error"].str.contains("train_size").all()
    assert failed["traceback"].str.contains("Traceback").all()
    # failed runs are not cached: a rerun retries them (and they fail again)
    to_run, cached = plan(load_suite(path), tmp_path / "r")
    assert {v.name for v in to_run} == {"too-big"} and len(cached) == 2


def test_stacked_variants_run_as_one_ray_task_and_land_as_their_own_rows(ray_session,
                                                                         tmp_path):
    # Guards against: a stack task that does not pickle or whose list of results the driver
    # does not unpack (one row, or none), and stacked rows that lose their stack's name.
    path = write_suite(tmp_path, TINY.format(name="stacked", epochs=1) + """
[grid]
beta = [1.0, 2.0]
""")
    suite = load_suite(path)
    summary = run_suite(suite, RunOptions(results=tmp_path / "r", show_progress=False,
                                          stack="on"))
    assert summary.statuses == {"finished": 4}
    runs = store.load_runs(tmp_path / "r", suite="stacked")
    assert sorted(runs["run_id"]) == sorted(v.run_id for v in suite.variants)
    assert runs["sys_stack"].nunique() == 1 and set(runs["sys_stack_size"]) == {4}
    assert runs["sys_ray_node_id"].notna().all()


ON_A_GPU_CLUSTER = """
import json, sys
from pathlib import Path

import ray

from bench import store
from bench.runner import RunOptions, run_suite
from bench.suite import load_suite

# one logical GPU: Ray schedules GPU shares on it; without CUDA the runs train on the CPU
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
         log_to_driver=False, object_store_memory=128 * 1024**2)
suite, sizes = load_suite(Path(sys.argv[1])), {}
for gpus in (0.0, None):
    results = Path(sys.argv[2]) / str(gpus)
    run_suite(suite, RunOptions(results=results, show_progress=False, gpus_per_run=gpus))
    sizes[str(gpus)] = sorted(int(n) for n in store.load_runs(results)["sys_stack_size"])
print(json.dumps(sizes))
"""


def test_auto_stacks_on_a_gpu_cluster_only_the_runs_that_get_gpus(tmp_path):
    # Guards against: --stack auto deciding from the cluster's GPUs rather than the runs'
    # own share, so `--gpus-per-run 0` on a GPU cluster stacked runs that train on CPUs
    # (0.93-1.35x there); and a default share that never stacks on a GPU cluster.
    path = write_suite(tmp_path, TINY.format(name="gpu", epochs=1))
    done = subprocess.run([sys.executable, "-c", ON_A_GPU_CLUSTER, str(path),
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"0.0": [1, 1], "None": [2, 2]}


def test_a_killed_worker_is_retried_from_its_checkpoint(ray_session, tmp_path):
    # full digits with the default model: ~0.05 s per epoch, so epoch 5 of 200 is mid-run
    body = TINY.format(name="killed", epochs=200).replace("train_size = 200\n", "")
    body = body.replace("hidden = [[16]]\nlatent = [4]\n", "")
    suite = load_suite(write_suite(tmp_path, body))
    suite_one = suite.variants[:1]
    results = tmp_path / "r"
    log = log_path(results, "killed", suite_one[0].run_id)
    killed = []

    def kill_after_a_few_epochs():
        deadline = time.time() + 120
        while time.time() < deadline:
            if log.exists():
                text = log.read_text()
                if len(re.findall(r"^epoch ", text, re.M)) >= 5:
                    pid = int(re.search(r"pid=(\d+)", text).group(1))
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_a_few_epochs)
    killer.start()
    summary = run_suite(suite, RunOptions(results=results, show_progress=False,
                                          checkpoint_every=1, retries=2),
                        filters=[f"seed={suite_one[0].seed}"])
    killer.join()
    assert killed, "the run finished before it could be killed"
    assert summary.statuses == {"finished": 1}
    runs = store.load_runs(results, suite="killed")
    assert list(runs["run_id"]) == [suite_one[0].run_id]  # exactly one row for the run
    text = log.read_text()
    assert "resuming from checkpoint" in text
    assert text.count("# finished") == 1
    assert not list((results / "checkpoints").rglob("*.pt"))  # cleaned up after finishing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One authentication mode for every process of the test cluster. Ray's `ray start --head`
# turns token auth on when ~/.ray/auth_token exists (an earlier embedded ray.init writes it)
# while `ray start --address` does not, unless RAY_AUTH_MODE says so; an earlier ray.init in
# this process sets RAY_AUTH_MODE=token, so the test passed or failed by test order.
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # 127.0.0.1 only


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    ray_bin = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray_bin), "start", "--block", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=CLUSTER_ENV,
                            start_new_session=True)  # own process group: stopped as one


def _stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def test_run_joins_a_two_node_cluster_with_address(tmp_path):
    """`ray start --head` plus a second node with its own resources, on 127.0.0.1; the same
    `vaebench run` command joins it with --address, and runs land on both nodes."""
    pytest.importorskip("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    head = _start_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--include-dashboard=false", *common], tmp_path / "head.log")
    worker = None
    try:
        time.sleep(8)
        worker = _start_node([f"--address={address}", "--node-ip-address=127.0.0.1",
                              '--resources={"second_node": 1}', *common],
                             tmp_path / "worker.log")
        time.sleep(8)
        results = tmp_path / "results"
        out = subprocess.run(
            [*VAEBENCH, "run", "smoke", "--address", address, "--results", str(results),
             "--no-progress"],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=CLUSTER_ENV,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs = store.load_runs(results, suite="smoke")
        assert (runs["status"] == "finished").all() and len(runs) == 4
        assert runs["sys_ray_node_id"].nunique() == 2, "all runs landed on one node"

        # a .py plugin given only to the driver (--plugin): each task carries its source, so
        # its runs train on both nodes (issue 24; Ray's workers never see the driver's file)
        driver_only = tmp_path / "driver-only"
        driver_only.mkdir()
        (driver_only / "twin.py").write_text((REPO / "tests" / "plugins" / "twin.py").read_text())
        suite = write_suite(tmp_path, TINY.format(name="twin", epochs=1) + """
objective = "twin"
k = 3

[grid]
lr = [1e-3, 2e-3]
""", name="twin")
        out = subprocess.run(
            [*VAEBENCH, "run", str(suite), "--address", address, "--results", str(results),
             "--no-progress", "--plugin", str(driver_only / "twin.py")],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=CLUSTER_ENV,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs = store.load_runs(results, suite="twin")
        assert (runs["status"] == "finished").all() and len(runs) == 4, runs["error"].tolist()
        assert runs["sys_ray_node_id"].nunique() == 2, "the plugin's runs landed on one node"
        (stored,) = set(runs["sys_plugins"])
        assert list(json.loads(stored)) == ["twin"]
    finally:
        for node in (worker, head):
            if node is not None:
                _stop(node)


def test_cli_run_dry_run_and_bad_suite(tmp_path, capsys):
    from bench.cli import main

    assert main(["run", "smoke", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 to run, 0 cached" in out and out.count("to run ") == 4

    bad = write_suite(tmp_path, "[suite]\nname = 'x'\ndescription = 'd'\n[grid]\nk = [0, 5]\n")
    assert main(["run", str(bad), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "'k'" in err

    assert main(["run", "no-such-suite"]) == 2
    assert "smoke" in capsys.readouterr().err  # the error lists what exists


@pytest.mark.parametrize("share", ["nan", "inf", "0.00001", "-1"])
def test_cli_refuses_a_gpu_share_ray_cannot_schedule(tmp_path, capsys, share):
    # Guards against: nan and 1e-5 reaching Ray's option checks (a ValueError traceback)
    from bench.cli import main

    assert main(["run", "smoke", "--budget", "smoke", "--gpus-per-run", share,
                 "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaebench: error: --gpus-per-run must be 0 or a finite share >= 0.0001 (Ray's "
        f"finest), got {float(share)}")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_gpu_share_on_a_cluster_without_gpus_is_an_error_not_a_hang(tmp_path):
    # Guards against: Ray waiting forever, silently (its warning is not logged to the
    # driver), for a GPU that a cluster without GPUs never offers (a subprocess, so that the
    # bug fails the test at its timeout instead of hanging the session)
    done = subprocess.run([*VAEBENCH, "run", "smoke", "--budget", "smoke", "--gpus-per-run",
                           "0.25", "--results", str(tmp_path / "r"), "--no-progress"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "vaebench: error: --gpus-per-run 0.25: the Ray cluster has no GPUs (give 0, or join "
        "a cluster with GPUs with --address)")
    assert store.load_runs(tmp_path / "r").empty


def test_cli_reports_a_truncated_results_file_by_name(tmp_path, capsys):
    from bench.cli import main

    suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
    run_suite(suite, RunOptions(results=tmp_path, executor="local", show_progress=False),
              filters=["seed=0"])
    victim = next((tmp_path / "runs").rglob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert main(["run", "smoke", "--results", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and len(err.strip().splitlines()) == 1

    # --skip-corrupt goes on: the unreadable run is rerun, the damaged file kept aside
    damaged = victim.read_bytes()
    with pytest.warns(UserWarning, match="skipping corrupt"):
        assert main(["run", "smoke", "--results", str(tmp_path), "--executor", "local",
                     "--filter", "seed=0", "--skip-corrupt", "--no-progress"]) == 0
    assert victim.with_name(victim.name + ".corrupt").read_bytes() == damaged
    assert set(store.load_runs(tmp_path, suite="smoke")["status"]) == {"finished"}


def test_ctrl_c_keeps_finished_runs_and_records_no_partial_run(tmp_path):
    """SIGINT to `vaebench run` (embedded Ray): exit 130, finished rows kept, the run that
    was still training leaves no row; a rerun resumes with the finished ones cached."""
    pytest.importorskip("ray")
    # one seed: 2 runs for the 2 slots, so "fast" never queues behind "slow" (Ray does not
    # promise to start tasks in submission order)
    suite_text = TINY.format(name="interrupted", epochs=1).replace("seeds = [0, 1]",
                                                                  "seeds = [0]")
    path = write_suite(tmp_path, suite_text + """
[[variant]]
name = "fast"

[[variant]]
name = "slow"
epochs = 100000
""")
    results = tmp_path / "r"
    proc = subprocess.Popen(
        [*VAEBENCH, "run", str(path), "--results", str(results), "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, killed whole if it hangs
        # SIGINT as at a terminal: a shell starting pytest in the background (`make test &`)
        # leaves SIGINT ignored, and children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    fast_ids = {v.run_id for v in load_suite(path).variants if v.name == "fast"}
    landed: set[str] = set()
    while time.time() < deadline and not fast_ids <= landed:
        landed = {p.stem for p in results.rglob("runs/*/*.parquet")}
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"vaebench run did not stop within 120 s of SIGINT (fast runs landed: "
                    f"{fast_ids <= landed}); stderr: {err[-2000:]}")
    assert fast_ids <= landed, "the fast run did not land within 120 s"
    assert proc.returncode == 130, err[-2000:]
    runs = store.load_runs(results, suite="interrupted")
    assert set(runs["run_id"]) == fast_ids and (runs["status"] == "finished").all()
    to_run, cached = plan(load_suite(path), results)
    assert {v.name for v in to_run} == {"slow"} and {v.run_id for v in cached} == fast_ids


def test_force_reruns_but_a_failed_rerun_never_replaces_a_finished_result(tmp_path, monkeypatch):
    import bench.runner as runner

    suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
    options = RunOptions(results=tmp_path, executor="local", show_progress=False)
    run_suite(suite, options, filters=["seed=0", "name=vae"])
    before = store.load_runs(tmp_path, suite="smoke")
    assert list(before["status"]) == ["finished"]

    def broken_train(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("bench.families.train_model", broken_train)
    forced = RunOptions(results=tmp_path, executor="local", show_progress=False, force=True)
    summary = runner.run_suite(suite, forced, filters=["seed=0", "name=vae"])
    assert summary.statuses == {"failed": 1}
    after = store.load_runs(tmp_path, suite="smoke")
    assert list(after["status"]) == ["finished"]
    assert after["metric_test_ll"].equals(before["metric_test_ll"])


def test_toys_run_as_suite_runs_and_land_with_their_metrics(tmp_path):
    path = write_suite(tmp_path, """
[suite]
name = "toys"
description = "toys through the runner"

[base]
objective = "iwae"
k = 5

[grid]
kl_direction = ["reverse", "forward"]

[[variant]]
name = "gmm"
dataset = "gmm"
iterations = 50

[[variant]]
name = "bimodal"
dataset = "bimodal"
iterations = 200
""")
    summary = run_suite(load_suite(path), RunOptions(results=tmp_path / "r", executor="local",
                                                     show_progress=False))
    assert summary.statuses == {"finished": 4}
    runs = store.load_runs(tmp_path / "r", suite="toys").set_index("variant")
    gmm = runs.loc[["gmm,kl_direction=reverse", "gmm,kl_direction=forward"]]
    assert (gmm["metric_posterior_kl"] > 0).all()
    assert gmm["metric_mixture_weight_error"].notna().all()
    bimodal = runs.loc["bimodal,kl_direction=reverse"]
    assert bimodal["metric_mass_left"] + bimodal["metric_mass_right"] == pytest.approx(1.0)


def test_the_local_executor_restores_the_callers_torch_thread_count(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
        run_suite(suite, RunOptions(results=tmp_path, executor="local", cpus_per_run=1,
                                    show_progress=False), filters=["seed=0", "name=vae"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_failed_run_keeps_its_checkpoint_for_a_rerun(tmp_path):
    from bench.runner import RunTask, checkpoint_path, execute

    suite = load_suite(write_suite(tmp_path, TINY.format(name="kept", epochs=2)))
    variant = suite.variants[0]
    checkpoint = checkpoint_path(tmp_path, suite.name, variant.run_id)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")  # the run fails on it, naming it
    [landed] = execute(RunTask(suite.name, None, variant, tmp_path, 1, 1), device="cpu")
    assert landed.row["status"] == "failed" and "unreadable checkpoint" in landed.row["error"]
    assert checkpoint.exists()
