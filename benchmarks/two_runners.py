"""Two runners sharing a store against one (issue 27, part 6): does a grid finish in about
half the time when two `vaebench run --executor local` processes split it on this machine?

    .venv/bin/python benchmarks/two_runners.py --suite smoke --budget cpu --repeat 3

Each repetition trains the suite's grid twice into fresh results directories: once with
one runner, once with two runners started at the same moment on the same store (the order
alternates between repetitions, so a drifting machine load does not favour either). A
runner is `python -m bench.cli run SUITE --budget B --executor local --no-progress` of the
code beside this file (a runner trains one run at a time with --cpus-per-run torch threads,
default 1, so two runners on two cores do not oversubscribe them). The table gives:

    one / two    wall time from the launch until every runner has exited (s)
    ratio        two / one (0.5 would be a perfect halving)
    split        runs trained by each of the two runners, from the run logs' headers (one
                 `pid=` line each time a process starts training a run)
    start-up     launch to the first run's start (its row's sys_start_time), per runner:
                 interpreter, imports, suite loading, planning; what a second runner cannot
                 share. The first run's own wall time also pays one-off costs (torch's
                 optimizer imports torch._dynamo on first use, the data set's first load)
    CPU s        each runner's CPU time (user + system, from wait4): its work whatever the
                 load; two runners on two free cores take about the larger of their two
    run s        mean stored wall time of a run (sys_wall_seconds), one runner / two runners:
                 above one runner's, the two runners slow each other down

Every repetition checks that each run of the grid has one finished row and was trained once;
otherwise it stops with the runner's output. `uptime`'s load averages are printed before and
after: the machine is shared, so compare medians of repetitions run together.
Not part of the test suite: it trains the grid twice per repetition.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import store  # noqa: E402  (the code beside this file, not an installed copy)

HEADER = re.compile(r"^# \S+ .* run_id=(\S+) pid=(\d+) ")


@dataclass(frozen=True)
class Runner:
    pid: int
    wall: float  # launch to exit, s
    cpu: float  # its CPU time (user + system), s
    startup: float | None  # launch to its first run's start, s (None: it trained no run)
    runs: int  # runs it started training (run logs)


@dataclass(frozen=True)
class Trial:
    wall: float  # launch to the last runner's exit, s
    runners: tuple[Runner, ...]
    run_seconds: float  # mean sys_wall_seconds of the grid's runs


def trial(suite: str, budget: str, n_runners: int, cpus_per_run: int, keep: Path | None
          ) -> Trial:
    results = Path(tempfile.mkdtemp(prefix=f"two-runners-{n_runners}-", dir=keep))
    command = [sys.executable, "-m", "bench.cli", "run", suite, "--budget", budget,
               "--executor", "local", "--results", str(results), "--no-progress",
               "--cpus-per-run", str(cpus_per_run)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    outputs = [(results / f"runner{i}.out").open("w+") for i in range(n_runners)]
    launched_at = dt.datetime.now(dt.timezone.utc)
    start = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
             for out in outputs]
    exited: dict[int, float] = {}
    cpu: dict[int, float] = {}
    while len(exited) < n_runners:
        for proc in procs:
            if proc.pid in exited:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                exited[pid] = time.perf_counter() - start
                cpu[pid] = usage.ru_utime + usage.ru_stime
                proc.returncode = os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    wall = max(exited.values())
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            out.seek(0)
            sys.exit(f"runner {proc.pid} exited {proc.returncode}:\n{out.read()[-3000:]}")
        out.close()
    trained = _trained(results, suite)
    rows = store.load_runs(results, suite=suite)
    _check(rows, trained)
    runners = []
    for proc in procs:
        mine = rows[rows["sys_pid"] == proc.pid]
        first = min((dt.datetime.fromisoformat(t) for t in mine["sys_start_time"]),
                    default=None)
        runners.append(Runner(proc.pid, exited[proc.pid], cpu[proc.pid],
                              None if first is None else (first - launched_at).total_seconds(),
                              sum(pid == proc.pid for pid in trained.values())))
    if keep is None:
        shutil.rmtree(results)
    return Trial(wall, tuple(runners), float(rows["sys_wall_seconds"].mean()))


def _trained(results: Path, suite: str) -> dict[str, int]:
    """run_id -> the pid that trained it, from the run logs' header lines; a run trained
    twice (two headers in its log) stops the benchmark."""
    out: dict[str, int] = {}
    for log in (results / "logs" / f"suite={suite}").glob("*.log"):
        for line in log.read_text().splitlines():
            if match := HEADER.match(line):
                if match[1] in out:
                    sys.exit(f"{match[1]} was trained twice (pids {out[match[1]]} and "
                             f"{match[2]}): see {log}")
                out[match[1]] = int(match[2])
    return out


def _check(rows, trained: dict[str, int]) -> None:
    ids = list(rows["run_id"])
    if len(ids) != len(set(ids)) or set(ids) != set(trained):
        sys.exit(f"stored rows {sorted(ids)} do not match the runs trained {sorted(trained)}")
    if set(rows["status"]) != {"finished"}:
        sys.exit(f"not every run finished: {dict(rows['status'].value_counts())}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="smoke", help="suite name or TOML (default smoke)")
    parser.add_argument("--budget", default="smoke", help="budget (default smoke)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--cpus-per-run", type=int, default=1,
                        help="each runner's torch threads per run (default 1, as vaebench run)")
    parser.add_argument("--one-cpus-per-run", type=int, default=None,
                        help="the lone runner's threads per run (default: --cpus-per-run); "
                        "2 gives one runner both cores, against two runners of one each")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the results directories (and runner output) under DIR")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.cpus_per_run < 1 or (args.one_cpus_per_run or 1) < 1:
        parser.error("--repeat and the CPU counts must be >= 1")
    threads = {1: args.one_cpus_per_run or args.cpus_per_run, 2: args.cpus_per_run}
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    print(f"{args.suite} --budget {args.budget} --executor local, --cpus-per-run "
          f"{threads[1]} (one runner) and {threads[2]} (two runners), {os.cpu_count()} CPUs, "
          f"load {load_before}", flush=True)
    print(f"{'rep':>3}  {'one s':>6}  {'two s':>6}  {'ratio':>5}  {'split':>5}  "
          f"{'start-up one | two':>18}  {'CPU s one | two':>17}  {'run s one | two':>15}",
          flush=True)
    ones, twos = [], []
    for rep in range(1, args.repeat + 1):
        order = (1, 2) if rep % 2 else (2, 1)
        done = {n: trial(args.suite, args.budget, n, threads[n], args.keep)
                for n in order}
        one, two = done[1], done[2]
        ones.append(one.wall)
        twos.append(two.wall)
        split = "+".join(str(r.runs) for r in two.runners)
        starts = " ".join("-" if r.startup is None else f"{r.startup:.1f}" for r in two.runners)
        cpus = " ".join(f"{r.cpu:.1f}" for r in two.runners)
        print(f"{rep:>3}  {one.wall:6.1f}  {two.wall:6.1f}  {two.wall / one.wall:5.2f}  "
              f"{split:>5}  {one.runners[0].startup or 0:6.1f} | {starts:<9}  "
              f"{one.runners[0].cpu:5.1f} | {cpus:<9}  "
              f"{one.run_seconds:5.2f} | {two.run_seconds:<5.2f}", flush=True)
    one_m, two_m = statistics.median(ones), statistics.median(twos)
    print(f"median: one runner {one_m:.1f} s, two runners {two_m:.1f} s, ratio "
          f"{two_m / one_m:.2f}; load {load_before} -> {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
