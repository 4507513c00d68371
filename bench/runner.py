"""Schedule a suite's runs on Ray (embedded or a cluster) or in-process, and store each result.

    plan        which runs are cached (a finished row exists) and which must run
    explain     why: one line per run (the finished row it reuses, or what differs from the
                stored rows of its variant and seed: the protocol, a config key, a status)
    make_tasks  one task per run, or per stack of compatible variants (--stack: where runs
                get GPUs)
    execute     one task, inside whatever process runs it: train, then a row per run (never
                raises)
    run_suite   the driver: submit, collect as they finish, write each row at once

Only the driver writes to the store, one row per completed run, as soon as it completes:
an interrupted grid keeps everything that finished, and a run that did not finish is never
recorded as finished. A worker process that dies (killed, out of memory) is retried by Ray
(`retries`) and continues from the run's last checkpoint. The runner knows nothing of
reports.

Runners may share a store (two `vaebench run` of one suite, on one host or several): each
claims a run's claim file (bench.claims) just before it trains it, skips runs another
runner holds, and at the end waits for those to land, or takes them over when their runner
stopped; so they split the grid and no run is trained twice. On Ray only about `slots`
tasks are in flight at once, each claimed at submission, so that the rest stay free for
other runners.

A store that cannot be written (a full disk, a store turned read-only) stops the grid at
once, with in-flight work cancelled: a StoreFault says which file, how many runs were
stored and how many trained runs were not (a rerun redoes those), and `vaebench run` exits
with STORE_FAULT_EXIT (3). The store leaves no half-written or orphaned file behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import config as bench_config
from bench import plugins, provenance, store
from bench.claims import DEFAULT_STALE_AFTER, Claims
from bench.errors import BenchError
from bench.eta import ProgressLines, clock_text
from bench.families.registry import FAMILIES
from bench.plugins import Plugin
from bench.suite import Suite, Variant, filter_variants

OBJECT_STORE_BYTES = 256 * 1024**2  # embedded Ray: rows are tiny, no need for 30% of RAM
DEFAULT_GPU_FRACTION = 0.25  # several small MLP runs share one GPU
MIN_GPU_SHARE = 1e-4  # the finest fraction of a resource Ray schedules


@dataclass(frozen=True)
class RunOptions:
    results: Path
    executor: str = "ray"  # "ray" or "local" (in-process, for debugging)
    address: str | None = None  # join this Ray cluster; None starts an embedded one
    cpus_per_run: int = 1  # Ray CPUs per run; also torch's thread count in the run
    gpus_per_run: float | None = None  # None: DEFAULT_GPU_FRACTION if the cluster has GPUs
    retries: int = 2  # re-executions of a run whose worker process died
    force: bool = False  # rerun runs that already have a finished row
    checkpoint_every: int = 10  # epochs between checkpoints
    compile: str = "auto"  # torch.compile the training step: auto, on, off (not in run_ids)
    stack: str = "auto"  # train compatible variants as one stacked model: auto (CUDA), on, off
    show_progress: bool = True
    skip_corrupt: bool = False  # treat unreadable result files as absent (warned), not an error
    claim_timeout: float = DEFAULT_STALE_AFTER  # s without a heartbeat: a claim is stale


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs to execute one run (small and picklable)."""

    suite: str
    budget: str | None
    variant: Variant
    results: Path
    threads: int
    checkpoint_every: int
    compile: str = "auto"
    plugins: tuple[Plugin, ...] = ()  # the plugins its run uses, with their source files


@dataclass(frozen=True)
class StackTask:
    """Variants that train as one stacked model (bench.families.stack), in one process."""

    suite: str
    budget: str | None
    variants: tuple[Variant, ...]
    results: Path
    threads: int
    checkpoint_every: int
    compile: str = "auto"
    plugins: tuple[Plugin, ...] = ()


STACK_MODES = ("auto", "on", "off")


def make_tasks(suite: Suite, variants: Sequence[Variant], options: RunOptions, *,
               on_gpus: bool) -> list[RunTask | StackTask]:
    """One task per run, except that with stacking (options.stack "on", or "auto" where the
    runs train `on_gpus`) compatible VAE-family variants (bench.families.stack.group) become
    one StackTask each. Not on CPUs: a stack trains on one task's CPUs at 0.93-1.35x the
    speed of its runs one after another, while solo runs fill every CPU slot at once."""
    if options.stack not in STACK_MODES:
        raise ValueError(f"unknown stack mode '{options.stack}' (known: {', '.join(STACK_MODES)})")
    common = (options.results, options.cpus_per_run, options.checkpoint_every, options.compile)

    def shipped(members: Sequence[Variant]) -> tuple[Plugin, ...]:
        return plugins.shipment({name: identity for v in members
                                 for name, identity in v.config.plugin_code().items()})

    if options.stack == "off" or (options.stack == "auto" and not on_gpus):
        return [RunTask(suite.name, suite.budget, v, *common, shipped([v])) for v in variants]
    from bench.families.stack import group

    tasks: list[RunTask | StackTask] = []
    for members in group([v.config for v in variants]):
        chosen = [variants[i] for i in members]
        if len(members) == 1:
            tasks.append(RunTask(suite.name, suite.budget, chosen[0], *common,
                                 shipped(chosen)))
        else:
            tasks.append(StackTask(suite.name, suite.budget, tuple(chosen), *common,
                                   shipped(chosen)))
    return tasks


@dataclass(frozen=True)
class Landed:
    """What one run returns to the driver, which stores it."""

    row: dict
    curves: list[dict]
    samples: list[dict]


@dataclass
class RunSummary:
    total: int
    cached: int
    statuses: dict[str, int] = field(default_factory=dict)  # finished / failed / diverged
    interrupted: bool = False
    by_others: int = 0  # runs it planned that other runners (sharing the store) stored

    @property
    def failed(self) -> int:
        return self.statuses.get("failed", 0) + self.statuses.get("diverged", 0)


def plan(
    suite: Suite,
    results: Path,
    filters: Sequence[str] = (),
    force: bool = False,
    skip_corrupt: bool = False,
) -> tuple[list[Variant], list[Variant]]:
    """(to_run, cached): the suite's selected runs split by whether a finished row exists."""
    selected = filter_variants(suite.variants, filters)
    done = set() if force else store.finished_run_ids(results, suite.name,
                                                       skip_corrupt=skip_corrupt)
    to_run = [v for v in selected if v.run_id not in done]
    cached = [v for v in selected if v.run_id in done]
    return to_run, cached


def explain(suite: Suite, results: Path, variants: Sequence[Variant], force: bool = False,
            skip_corrupt: bool = False, runs=None) -> dict[str, str]:
    """run_id -> why that run is cached or must run, for `vaebench run --dry-run`.

    A run is cached only by a finished row of its own run_id. Otherwise the stored rows of
    the same variant name, budget and seed say why not: a row of another code protocol
    (bench.config.PROTOCOL: results of older code are never reused), a config that differs
    in some key (the suite changed), or a row of the same run that failed or diverged.
    `runs`: the suite's stored rows (store.load_runs) where the caller has read them already.
    Linear in rows + variants (a sweep of 10^5 runs): the rows are grouped once, by run_id
    and by (variant, seed), the last row of a group standing for it as before."""
    if runs is None:
        runs = store.load_runs(results, suite=suite.name, skip_corrupt=skip_corrupt)
    rows = runs.to_dict("records") if not runs.empty else []
    own_finished: set[str] = set()
    own_last: dict[str, dict] = {}  # run_id -> its last stored row
    same_last: dict[tuple, dict] = {}  # (variant, seed) -> its last finished row at the budget
    budget = _show(suite.budget)
    for r in rows:
        run_id = r.get("run_id")
        if isinstance(run_id, str):
            own_last[run_id] = r
            if r.get("status") == "finished":
                own_finished.add(run_id)
        if r.get("status") == "finished" and _show(r.get("budget")) == budget:
            key = _seed_key(r.get("variant"), r.get("cfg_seed"))
            if key is not None:
                same_last[key] = r
    reasons: dict[str, str] = {}
    for variant in variants:
        if force:
            reasons[variant.run_id] = "--force reruns it"
        elif variant.run_id in own_finished:
            reasons[variant.run_id] = f"finished row, protocol {bench_config.PROTOCOL}"
        elif variant.run_id in own_last:
            status = own_last[variant.run_id].get("status")
            reasons[variant.run_id] = f"its stored row is {status}: runs again"
        else:
            same = same_last.get(_seed_key(variant.name, variant.seed))
            reasons[variant.run_id] = (_difference(same, variant) if same is not None
                                       else "no stored result")
    return reasons


def _seed_key(name, seed) -> tuple | None:
    """(variant name, seed) as a dict key that matches where `==` did (a seed stored as 0.0
    beside NaNs finds seed 0; NaN, None and unhashable values find nothing)."""
    if not isinstance(name, str) or seed is None or seed != seed:
        return None
    try:
        hash(seed)
    except TypeError:
        return None
    return (name, seed)


def _difference(row: dict, variant: Variant) -> str:
    """Why a finished row of the same variant and seed does not stand for `variant`."""
    stored = row.get("protocol")
    stored = 1 if stored is None or stored != stored else int(stored)  # absent before 2
    old = row.get("run_id")
    if stored != bench_config.PROTOCOL:
        return (f"{old} is a result of protocol {stored}, this code is protocol "
                f"{bench_config.PROTOCOL} "
                "(see bench.config.PROTOCOL): older code's results are not reused")
    changed_plugins = _plugin_changes(row, variant)
    if changed_plugins:
        return (f"{old} is a result of other plugin code: {'; '.join(changed_plugins)}: "
                "results of other code are not reused")
    changed = [f"{key} {_show(row.get(f'cfg_{key}'))} -> {_show(value)}"
               for key, value in variant.config.flat_dict().items()
               if _show(row.get(f"cfg_{key}")) != _show(value)]
    return f"{old} has another config: {', '.join(changed) or 'a key this code adds'}"


def _plugin_changes(row: dict, variant: Variant) -> list[str]:
    """"plugin X changed (version 0.1.0 -> 0.2.0, code a1b2c3d4e5f6 -> ...)" for each plugin
    whose stored identity (sys_plugins) is not the one this run would use."""
    text = row.get("sys_plugins")
    stored = json.loads(text) if isinstance(text, str) and text else {}
    out = []
    for name, now in variant.config.plugin_code().items():
        then = stored.get(name)
        if then is None:
            out.append(f"plugin {name} was not used")
        elif then != now:
            parts = [f"version {then['version'] or '-'} -> {now['version'] or '-'}"
                     if then["version"] != now["version"] else "",
                     f"code {then['digest'][:12]} -> {now['digest'][:12]}"
                     if then["digest"] != now["digest"] else ""]
            out.append(f"plugin {name} changed ({', '.join(p for p in parts if p)})")
    return out


def _show(value) -> str:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if value is None or value != value:  # NaN: a column older rows lack
        return "unset"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a stored column with NaN holds its ints as floats
    return str(value)


def checkpoint_path(results: Path, suite: str, run_id: str) -> Path:
    return results / "checkpoints" / f"suite={suite}" / f"{run_id}.pt"


def log_path(results: Path, suite: str, run_id: str) -> Path:
    return results / "logs" / f"suite={suite}" / f"{run_id}.log"


def execute(task: RunTask | StackTask, device: str | None = None, where: dict | None = None
            ) -> list[Landed]:
    """Run one variant (a RunTask) or one stack of variants (a StackTask) in this process
    and return each variant's row, curves and sample images; exceptions become `failed`
    rows. Progress goes to each run's log file. Torch runs with `task.threads` threads
    meanwhile; the caller's thread count is restored afterwards."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(task.threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(task, StackTask):
            return _execute_stack(task, device, where or {})
        return [_execute(task, device, where or {})]
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _Outcome:
    """What one variant's training gave, before it becomes a row."""

    status: str = "failed"
    metrics: dict = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    compiled: bool = False
    eval_compiled: bool = False
    error: str | None = None
    trace: str | None = None

    @classmethod
    def of(cls, result) -> _Outcome:
        metrics = result.metrics()
        status = metrics.pop("status")
        error = (f"non-finite training loss at epoch {result.diverged_epoch}"
                 if status == "diverged" else None)
        return cls(status, metrics, [{**vars(r)} for r in result.curves], result.samples,
                   result.compiled, result.eval_compiled, error)

    @classmethod
    def failure(cls, err: BaseException, trace: str | None = None) -> _Outcome:
        """A failed run: its error, and its traceback (default: the one being handled)."""
        return cls(error=f"{type(err).__name__}: {err}",
                   trace=traceback.format_exc() if trace is None else trace)


class _RunLog:
    """A run's log file, opened for appending, with its header line written."""

    def __init__(self, task, variant: Variant, device: str, note: str = ""):
        path = log_path(task.results, task.suite, variant.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1)
        cfg = variant.config
        self.file.write(f"# {_now().isoformat()} {variant.name} seed={cfg.seed} "
                        f"run_id={variant.run_id} pid={os.getpid()} device={device}{note}\n")

    def epoch(self, record, total) -> None:
        self.file.write(f"epoch {record.epoch}/{total} bound {record.train_bound:.4f} "
                        f"lr {record.lr:.3g} {record.samples_per_s:.0f} ex/s\n")

    def line(self, text: str) -> None:
        """A progress line with an ETA of long work in the run (bench.eta)."""
        self.file.write(text + "\n")

    def close(self, outcome: _Outcome, checkpoint: Path) -> None:
        if outcome.trace:
            self.file.write(outcome.trace)
        self.file.write(f"# {outcome.status}\n")
        if outcome.status == "failed" and checkpoint.exists():  # its progress stays
            self.file.write(f"# checkpoint kept: {checkpoint}\n")
        self.file.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _execute(task: RunTask, device: str, where: dict) -> Landed:
    from bench.families import run_toy, train_model
    from bench.loop import Checkpointing, load_data

    cfg, run_id = task.variant.config, task.variant.run_id
    started, wall_start = _now(), time.perf_counter()
    checkpoint = checkpoint_path(task.results, task.suite, run_id)
    for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):  # a killed attempt's
        stale.unlink(missing_ok=True)  # (the run is claimed: no one else writes them)
    log = _RunLog(task, task.variant, device)
    if checkpoint.exists():
        log.file.write(f"# resuming from checkpoint {checkpoint}\n")
    try:
        if FAMILIES.of(cfg).toy:  # a toy with a known answer: seconds, on the CPU
            outcome = _Outcome("finished", run_toy(cfg))
        else:
            outcome = _Outcome.of(train_model(
                cfg, load_data(cfg), device=device, on_epoch=log.epoch,
                checkpointing=Checkpointing(checkpoint, task.checkpoint_every),
                compile=task.compile, progress=ProgressLines(log.line)))
    except Exception as err:  # a bug or bad data in one run must not stop the grid
        outcome = _Outcome.failure(err)
    log.close(outcome, checkpoint)
    if outcome.status != "failed":
        checkpoint.unlink(missing_ok=True)
    return _landed(task, task.variant, outcome, device,
                   {**where, "stack": None, "stack_size": 1}, started, wall_start)


def _execute_stack(task: StackTask, device: str, where: dict) -> list[Landed]:
    from bench.families.stack import VariantFailure, stack_id, train_stack
    from bench.loop import Checkpointing, load_data

    cfgs = [v.config for v in task.variants]
    name = stack_id(cfgs)
    started, wall_start = _now(), time.perf_counter()
    checkpoint = checkpoint_path(task.results, task.suite, name)
    note = f" stack={name} of {len(cfgs)}"
    logs = [_RunLog(task, v, device, note) for v in task.variants]
    if checkpoint.exists():
        for log in logs:
            log.file.write(f"# resuming the stack from checkpoint {checkpoint}\n")
    try:
        results = train_stack(cfgs, load_data(cfgs[0]), device=device,
                              on_epoch=lambda i, record, total: logs[i].epoch(record, total),
                              checkpointing=Checkpointing(checkpoint, task.checkpoint_every),
                              compile=task.compile)
        outcomes = [_Outcome.failure(r.error, r.traceback) if isinstance(r, VariantFailure)
                    else _Outcome.of(r) for r in results]
    except Exception as err:  # the stack's training failed: its variants, not the grid
        outcomes = [_Outcome.failure(err)] * len(cfgs)
    for log, outcome in zip(logs, outcomes, strict=True):
        log.close(outcome, checkpoint)
    # A rerun trains the failed variants only: with any variant landed that is another stack
    # (another checkpoint), so this one goes; with all failed it is this stack, which resumes.
    if any(outcome.status != "failed" for outcome in outcomes):
        checkpoint.unlink(missing_ok=True)
    prov = {**where, "stack": name, "stack_size": len(cfgs)}
    return [_landed(task, variant, outcome, device, prov, started, wall_start)
            for variant, outcome in zip(task.variants, outcomes, strict=True)]


def _landed(task, variant: Variant, outcome: _Outcome, device: str, extra: dict,
            started: dt.datetime, wall_start: float) -> Landed:
    prov = {
        **provenance.collect(device),
        **extra,
        "start_time": started.isoformat(),
        "end_time": _now().isoformat(),
        "wall_seconds": time.perf_counter() - wall_start,
        "compiled": outcome.compiled,  # the training step ran torch.compile'd
        "eval_compiled": outcome.eval_compiled,  # so did the test-set estimate
    }
    row = store.run_row(suite=task.suite, variant=variant.name, config=variant.config,
                        status=outcome.status, metrics=outcome.metrics, provenance=prov,
                        error=outcome.error, traceback=outcome.trace, budget=task.budget)
    return Landed(row, outcome.curves, outcome.samples)


def run_suite(suite: Suite, options: RunOptions, filters: Sequence[str] = (), *,
              on_stored: Callable[[dict], None] | None = None) -> RunSummary:
    """Run every selected, not yet finished run of `suite`; each result is stored as it lands.

    `on_stored(row)` is called with each run's row right after it is stored (`vaebench run
    --export`: bench.export sends it to a tracker); it must not raise.

    Runs that another runner claims are left to it (bench.claims); those it stores count in
    `by_others`. A store that cannot be written raises StoreFault (what was kept)."""
    # each run file's state before planning: a row that lands after it is another runner's
    marks = {v.run_id: _mark(store.run_path(options.results, suite.name, v.run_id))
             for v in filter_variants(suite.variants, filters)}
    to_run, cached = plan(suite, options.results, filters, options.force, options.skip_corrupt)
    check_plugin_objectives([v.config for v in to_run])
    summary = RunSummary(total=len(to_run) + len(cached), cached=len(cached))
    progress = Progress(summary, enabled=options.show_progress)

    with progress, Claims(options.results, suite.name,
                          stale_after=options.claim_timeout) as claims:
        grid = _Grid(suite, options, to_run, marks, summary, progress, claims, on_stored)
        try:
            if options.executor == "local":
                _run_locally(grid)
            elif to_run:
                _run_on_ray(grid)
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


STORE_FAULT_EXIT = 3  # `vaebench run`'s exit status when the store cannot be written


class StoreFault(BenchError):
    """The store could not be written mid-grid (a full disk, a store turned read-only): one
    line naming the file and what was kept. `exit_status` is the CLI's exit status."""

    exit_status = STORE_FAULT_EXIT


def _mark(path: Path) -> tuple[int, int, int] | None:
    """Which version of a run file is there (None: none): another row makes another mark."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class _Grid:
    """One runner's way through the runs it planned. It claims each task's runs just before
    they start (bench.claims) and hands out the task narrowed to the runs it won; it skips
    runs another runner holds, and runs another runner stored since the plan (re-checked
    after winning a claim: one may land between plan and claim). When only others' runs are
    left it waits for them to land, or takes them over once their claims go stale. It
    stores what lands, and turns a store that cannot be written into a StoreFault."""

    def __init__(self, suite: Suite, options: RunOptions, to_run: Sequence[Variant],
                 marks: dict, summary: RunSummary, progress: Progress, claims: Claims,
                 on_stored: Callable[[dict], None] | None):
        self.suite, self.options, self.summary = suite, options, summary
        self.progress, self.claims, self.on_stored = progress, claims, on_stored
        self.variants = {v.run_id: v for v in to_run}
        self.marks = marks
        self.queue: deque[RunTask | StackTask] = deque()
        self.waiting: dict[str, Variant] = {}  # claimed by another runner: run_id -> variant
        self.holders: dict[str, str] = {}  # run_id -> "host:pid" of its claim
        self.poll = min(2.0, options.claim_timeout / 4)  # the longest between two looks
        self._next_look = 0.0
        self._on_gpus = False

    def start(self, on_gpus: bool) -> None:
        self._on_gpus = on_gpus
        self.queue.extend(self._tasks(list(self.variants.values())))

    def _tasks(self, variants: Sequence[Variant]) -> list[RunTask | StackTask]:
        return make_tasks(self.suite, variants, self.options, on_gpus=self._on_gpus)

    def done(self) -> bool:
        return not self.queue and not self.waiting

    def take(self) -> RunTask | StackTask | None:
        """The next task with its runs claimed (narrowed to those this runner won), or None
        while every run left is another runner's."""
        try:
            while self.queue:
                task = self.queue.popleft()
                mine = self._claim(_variants(task))
                if len(mine) == len(_variants(task)):
                    return task
                if mine:
                    return self._regroup(mine)
            if self.waiting and time.monotonic() >= self._next_look:
                # a look reads each waiting run's claim: a few a second, hundreds less often
                self._next_look = time.monotonic() + min(
                    self.poll, max(0.25, 0.002 * len(self.waiting)))
                mine = self._claim(list(self.waiting.values()))
                if mine:
                    return self._regroup(mine)
        except OSError as err:  # the claim file could not be written
            raise self.fault(err, lost=0) from None
        return None

    def _regroup(self, mine: list[Variant]) -> RunTask | StackTask:
        first, *rest = self._tasks(mine)
        self.queue.extendleft(reversed(rest))  # claimed already: taken next
        return first

    def _claim(self, variants: Sequence[Variant]) -> list[Variant]:
        mine = []
        for variant in variants:
            run_id = variant.run_id
            if run_id in self.waiting and self.claims.holder(run_id) is not None:
                continue  # still held: nothing to write
            holder = self.claims.claim(run_id)
            if holder is not None:
                self.waiting[run_id], self.holders[run_id] = variant, holder.holder
                continue
            self.waiting.pop(run_id, None)
            self.holders.pop(run_id, None)
            if self._stored_elsewhere(run_id):  # landed meanwhile: not trained twice
                self.claims.release(run_id)
                self.summary.by_others += 1
                continue
            mine.append(variant)
        return mine

    def _stored_elsewhere(self, run_id: str) -> bool:
        now = _mark(store.run_path(self.options.results, self.suite.name, run_id))
        return now is not None and now != self.marks.get(run_id)

    def wait(self) -> None:
        """Show whose runs this runner waits for, and sleep until it looks again."""
        self.progress.waiting(Counter(self.holders[r] for r in self.waiting))
        time.sleep(max(0.05, min(self.poll, self._next_look - time.monotonic())))

    def land(self, task: RunTask | StackTask, landed: Sequence[Landed]) -> None:
        """Store each landed run and release its claim; a write that fails is a StoreFault
        counting that run and the task's runs after it as trained but not stored."""
        self.progress.waiting(Counter())
        for i, one in enumerate(landed):
            row = one.row
            if self.suite.path is not None:  # the report finds a suite run by its path
                row["sys_suite_file"] = str(Path(self.suite.path).resolve())
            try:
                # --force replaces a finished result only with a new finished one
                store.write_run(self.options.results, row, one.curves, samples=one.samples,
                                replace_finished=self.options.force
                                and row["status"] == "finished")
            except OSError as err:
                raise self.fault(err, lost=len(landed) - i,
                                 unstored=[r.row["run_id"] for r in landed[i:]]) from None
            with contextlib.suppress(OSError):  # a read-only store: the claim goes stale
                self.claims.release(row["run_id"])
            if self.on_stored is not None:
                self.on_stored(row)
            self.summary.statuses[row["status"]] = self.summary.statuses.get(row["status"],
                                                                             0) + 1
            self.progress.landed(self.variants[row["run_id"]], row)

    def fault(self, err: OSError, lost: int, trained: bool = True,
              unstored: Sequence[str] = ()) -> StoreFault:
        """The one line for a store that cannot be written: the file, the cause, what was
        kept. The unstored runs' logs say so, where the disk still takes a line."""
        for run_id in unstored:
            with contextlib.suppress(OSError), \
                    open(log_path(self.options.results, self.suite.name, run_id), "a") as log:
                log.write(f"# not stored: {err.strerror or err}\n")
        stored = sum(self.summary.statuses.values())
        kept = f"{stored} run{'s' * (stored != 1)} stored"
        if lost:
            runs = f"{lost}{' trained' * trained} run{'s' * (lost != 1)}"
            kept += (f"; {runs} could not be stored: rerun to redo "
                     f"{'it' if lost == 1 else 'them'}")
        else:
            kept += ": rerun to run the rest"
        path = err.filename or self.options.results
        return StoreFault(f"cannot write {path}: {err.strerror or store._one_line(err)}: {kept}")


def _run_locally(grid: _Grid) -> None:
    """In this process, one task after another, each claimed just before it starts."""
    import torch

    grid.start(on_gpus=torch.cuda.is_available())
    while not grid.done():
        task = grid.take()
        if task is None:
            grid.wait()
            continue
        grid.progress.running = len(_variants(task))
        grid.progress.refresh()
        try:
            landed = execute(task, device=None)
        except OSError as err:  # its log could not be written: the store's disk
            raise grid.fault(err, lost=len(_variants(task)), trained=False) from None
        grid.progress.running = 0
        grid.land(task, landed)


def check_plugin_objectives(configs: Sequence[bench_config.RunConfig]) -> None:
    """Each plugin objective the configs use, tried on a synthetic sample before any run
    starts (bench.objectives.check_objective): a bound of the wrong shape is one line."""
    tried: set[tuple] = set()
    for cfg in configs:
        key = (cfg.objective, cfg.params, cfg.k, cfg.kl_direction, cfg.capacity_max)
        if cfg.plugins() and key not in tried:
            from bench.objectives import check_objective

            check_objective(cfg)
            tried.add(key)


def _variants(task: RunTask | StackTask) -> tuple[Variant, ...]:
    return task.variants if isinstance(task, StackTask) else (task.variant,)


RAY_LOOKAHEAD = 1  # tasks in flight beyond the free slots: the next starts without a gap


def _run_on_ray(grid: _Grid) -> None:
    """On Ray, with about `slots` tasks in flight (claimed at submission): the rest of the
    grid stays unclaimed, free for other runners sharing the store."""
    import ray

    options, progress = grid.options, grid.progress

    started_here = not ray.is_initialized()
    if started_here:
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            # address="local": always a new embedded instance, never a stray `ray start`
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES)
    try:
        resources = ray.cluster_resources()
        has_gpus = resources.get("GPU", 0) > 0
        gpus = options.gpus_per_run
        if gpus is None:
            gpus = DEFAULT_GPU_FRACTION if has_gpus else 0
        if gpus > 0 and not has_gpus:  # Ray would wait forever for a GPU, silently
            raise BenchError(f"--gpus-per-run {gpus:g}: the Ray cluster has no GPUs "
                             "(give 0, or join a cluster with GPUs with --address)")
        slots = max(1, int(resources.get("CPU", 1) // options.cpus_per_run))
        remote = ray.remote(_execute_on_worker)

        def submit(task):  # a stack takes its members' GPU shares, at most one GPU
            n = len(_variants(task))
            share = gpus if n == 1 else min(1.0, gpus * n)
            return remote.options(num_cpus=options.cpus_per_run, num_gpus=share,
                                  max_retries=options.retries,
                                  retry_exceptions=False).remote(task)

        # stacks pay only on a GPU: the runs' own (--gpus-per-run 0 keeps them on CPUs)
        grid.start(on_gpus=gpus > 0)
        pending: dict = {}
        try:
            while pending or not grid.done():
                while len(pending) < slots + RAY_LOOKAHEAD:
                    task = grid.take()
                    if task is None:
                        break
                    pending[submit(task)] = task
                if not pending:  # every run left is another runner's
                    grid.wait()
                    continue
                # runs training: those of the first `slots` tasks waiting (in submission order)
                progress.running = sum(len(_variants(t)) for t in list(pending.values())[:slots])
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                progress.refresh()
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        landed = ray.get(ref)
                    except ray.exceptions.RayError as err:  # worker died more than `retries` times
                        landed = [Landed(_lost_worker_row(task, v, err), [], [])
                                  for v in _variants(task)]
                    if isinstance(landed, PluginFailure):
                        landed = [Landed(_plugin_failure_row(task, v, landed), [], [])
                                  for v in _variants(task)]
                    grid.land(task, landed)
        except BaseException:  # Ctrl-C, a store that cannot be written: nothing more runs
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


@dataclass(frozen=True)
class PluginFailure:
    """What a worker returns when it cannot load a plugin its task uses (the driver, which
    has the plugin, writes the failed rows)."""

    message: str
    node: str


def _execute_on_worker(task: RunTask | StackTask) -> list[Landed] | PluginFailure:
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        plugins.ensure(task.plugins)  # a worker process has only what the task brings
    except BenchError as err:
        return PluginFailure(str(err), node)
    import torch

    gpu_ids = ray.get_gpu_ids()
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    return execute(task, device=device, where={"ray_node_id": node})


def _plugin_failure_row(task: RunTask | StackTask, variant: Variant,
                        failure: PluginFailure) -> dict:
    return store.run_row(
        suite=task.suite, variant=variant.name, config=variant.config, status="failed",
        metrics={}, provenance={**provenance.code_version(), "ray_node_id": failure.node},
        error=f"worker could not load a plugin: {failure.message}", budget=task.budget)


def _lost_worker_row(task: RunTask | StackTask, variant: Variant, err: Exception) -> dict:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return store.run_row(
        suite=task.suite, variant=variant.name, config=variant.config,
        status="failed", metrics={}, provenance=provenance.code_version(),
        error=f"worker lost after {type(err).__name__}: {message}", traceback=str(err),
        budget=task.budget,
    )


class Progress:
    """One live line: done / running / failed / cached and ETA (rich on a terminal; a plain
    line per landed run otherwise, so CI logs stay readable)."""

    def __init__(self, summary: RunSummary, enabled: bool = True):
        self.summary, self.enabled, self.running = summary, enabled, 0
        self.start = time.perf_counter()
        self._live = None
        self._waiting = ""  # "waiting for 2 runs claimed by host:pid", while it waits

    def __enter__(self) -> Progress:
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._line(), console=Console(stderr=True), refresh_per_second=2,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._line())
            self._live.__exit__(*exc)

    def _done(self) -> int:
        return sum(self.summary.statuses.values()) + self.summary.by_others

    def _line(self) -> str:
        s = self.summary
        to_run = s.total - s.cached
        done = self._done()
        elapsed = time.perf_counter() - self.start
        eta = "--" if done == 0 else clock_text(elapsed / done * (to_run - done))
        running = min(self.running, to_run - done)
        others = f"  by others {s.by_others}" if s.by_others else ""
        waiting = f"  {self._waiting}" if self._waiting else ""
        return (f"[{done}/{to_run}] done {s.statuses.get('finished', 0)}  running {running}  "
                f"failed {s.failed}  cached {s.cached}{others}  elapsed {clock_text(elapsed)}  "
                f"ETA {eta}{waiting}")

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._line(), refresh=True)

    def waiting(self, holders: Counter) -> None:
        """The runs this runner waits for, by the runner ("host:pid") holding them: a line
        each time that changes (none: it no longer waits)."""
        text = "waiting for " + ", ".join(
            f"{n} run{'s' * (n != 1)} claimed by {holder}"
            for holder, n in sorted(holders.items())) if holders else ""
        if text == self._waiting:
            return
        self._waiting = text
        if not self.enabled or not text:
            self.refresh()
        elif self._live is not None:
            self._live.console.print(text)
            self.refresh()
        else:
            print(self._line(), file=sys.stderr, flush=True)

    def landed(self, variant: Variant, row: dict) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.console.print(_landed_line(variant, row))
            self.refresh()
        else:
            print(f"{_landed_line(variant, row)}   {self._line()}", file=sys.stderr, flush=True)


def _landed_line(variant: Variant, row: dict) -> str:
    status = row["status"]
    ll = row.get("metric_test_ll")
    detail = f"test_ll {ll:.3f}" if status == "finished" and ll is not None else (row.get("error")
                                                                                    or "")
    return f"{status:<8} {variant.name} seed={variant.seed} ({variant.run_id})  {detail}"

