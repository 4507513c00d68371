"""The history store (issue 26, part 1): every tracked commit's results kept, so metrics can
be followed across commits rather than judged pairwise.

`vaebench track SUITE` runs the suite at the checkout's commit and appends each run's row to

    <results>/history/suite=<suite>/<commit>-<machine>.parquet

one file per (commit, machine), rewritten atomically with the rows it already held, and every
PACK_EVERY such files merged into one pack file (1,000 commits of the bench suite, 16,000
rows, load in well under a second). A row
is the run's stored row (bench.store) plus `hist_commit`, `hist_commit_date` (ISO 8601, the
committer date), `hist_subject`, `hist_machine`, `hist_execution` (bench.provenance:
eager, compiled, stacked), `hist_dirty` (tracked from a tree with uncommitted changes, only
with --allow-dirty) and `hist_tracked_at`. The key of a row is (commit, run_id, machine,
execution): a run tracked at this commit on this machine is not run again; the same run_id at
another commit is (that is what history is for). A dirty tree (--allow-dirty) is tracked
apart (`<commit>-dirty-<machine>.parquet`, hist_dirty = true) and always runs again.

The runs themselves execute in `<results>/history/work/<commit>-<machine>/`, an ordinary
results store per commit and machine, so an interrupted `track` continues where it stopped
and nothing of another commit or machine is ever served as cached.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench import store
from bench.errors import BenchError
from bench.provenance import executions

HISTORY = "history"
WORK = "work"
KEY = ("hist_commit", "run_id", "hist_machine", "hist_execution")
#: loose per-commit files are merged into one pack file when this many have gathered: a
#: Parquet file costs 3-5 ms to open whatever its size (124 columns of metadata), so 1,000
#: loose files took 3.5-5 s to load and 16 packs take well under a second
PACK_EVERY = 64
PACK_PREFIX = "pack-"


@dataclass(frozen=True)
class Commit:
    """The checked-out commit a track records."""

    sha: str
    date: str  # committer date, ISO 8601
    subject: str
    dirty: bool  # uncommitted changes to tracked files

    @property
    def short(self) -> str:
        return self.sha[:12]


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise BenchError(f"git {' '.join(args)} failed in {repo}: {err}") from None
    if out.returncode != 0:
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        raise BenchError(f"git {' '.join(args)} failed in {repo} (not a git checkout, or "
                         f"no such commit): {why}")
    return out.stdout.strip()


def current_commit(repo: Path, rev: str = "HEAD") -> Commit:
    """Commit `rev` of the checkout at `repo` (HEAD: with whether the tree is dirty); a
    BenchError where there is no git checkout or no such commit."""
    sha, date, subject = _git(repo, "log", "-1", "--format=%H%x00%cI%x00%s", rev,
                              "--").split("\x00", 2)
    dirty = rev == "HEAD" and bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    return Commit(sha, date, subject, dirty)


def commits_in(repo: Path, spec: str) -> list[str]:
    """The commits a revision or a range ("A..B", oldest first) names."""
    if ".." in spec:
        return _git(repo, "rev-list", "--reverse", spec).split()
    return [_git(repo, "rev-parse", "--verify", f"{spec}^{{commit}}")]


def machine_name() -> str:
    """The default name of this machine in the history: its host name."""
    return platform.node() or "unknown"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:64] or "machine"


def history_dir(results: Path, suite: str) -> Path:
    return Path(results) / HISTORY / f"suite={store.check_suite_name(suite)}"


def work_dir(results: Path, commit: Commit, machine: str) -> Path:
    """The results store the runs of a tracked commit execute in: one per (commit, machine),
    so a results directory two machines share never serves one machine's run to the other;
    a dirty tree's code is not the commit's, so each dirty track gets a fresh one."""
    name = f"{commit.sha}-{_slug(machine)}"
    if commit.dirty:
        name += f"-dirty-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
    return Path(results) / HISTORY / WORK / name


def history_file(results: Path, suite: str, commit: Commit, machine: str) -> Path:
    """The file of (commit, machine); a dirty tree's rows apart from the commit's own."""
    dirty = "-dirty" if commit.dirty else ""
    return history_dir(results, suite) / f"{commit.sha}{dirty}-{_slug(machine)}.parquet"


def _read(path: Path, reader: Callable[..., Any] = pq.read_table, **kwargs: Any) -> Any:
    """`reader(path, **kwargs)`, a file that is not Parquet a BenchError naming it."""
    try:
        return reader(path, **kwargs)
    except (OSError, pa.ArrowException) as err:
        raise BenchError(f"history file {path} is unreadable ({type(err).__name__}); "
                         "move it away and track that commit again") from None


def tracked_run_ids(results: Path, suite: str, commit: Commit, machine: str) -> set[str]:
    """The run_ids of `suite` already in the history at this commit on this machine (none for
    a dirty tree: its code may have changed since, so it always runs again)."""
    if commit.dirty:
        return set()
    path = history_file(results, suite, commit, machine)
    found = set(_read(path, store.read_rows, columns=["run_id"])["run_id"]) if path.exists() \
        else set()
    for pack in history_dir(results, suite).glob(f"{PACK_PREFIX}*.parquet"):
        rows = _read(pack, columns=["run_id", "hist_commit", "hist_machine", "hist_dirty"],
                     filters=[("hist_commit", "=", commit.sha),
                              ("hist_machine", "=", machine),
                              ("hist_dirty", "=", False)])
        found |= set(rows.column("run_id").to_pylist())
    return found


def append(results: Path, suite: str, commit: Commit, machine: str,
           runs: pd.DataFrame) -> Path:
    """Add stored rows of `suite` (bench.store.load_runs of the commit's work store) to the
    history at `commit` on `machine`: one file per (commit, machine), rewritten atomically
    with the rows it held; a row with the key of one already there replaces it."""
    rows = runs.copy()
    rows["hist_commit"] = commit.sha
    rows["hist_commit_date"] = commit.date
    rows["hist_subject"] = commit.subject
    rows["hist_machine"] = machine
    rows["hist_execution"] = executions(rows)
    rows["hist_dirty"] = commit.dirty
    rows["hist_tracked_at"] = datetime.now(UTC).isoformat(timespec="microseconds")
    path = history_file(results, suite, commit, machine)
    if path.exists():
        rows = pd.concat([_read(path, store.read_rows), rows], ignore_index=True)
        rows = rows.drop_duplicates(subset=list(KEY), keep="last")
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_rows(rows.to_dict("records"), path)
    loose = [f for f in path.parent.glob("*.parquet") if not f.name.startswith(PACK_PREFIX)]
    if len(loose) >= PACK_EVERY:
        _pack(sorted(loose))
    return path


def _pack(files: list[Path]) -> Path:
    """Merge loose history files into one pack (written atomically, then the loose files
    removed; a reader in between sees a row twice, which load_history drops)."""
    frame = pa.concat_tables([_read(f) for f in files],
                             promote_options="permissive").to_pandas()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    pack = files[0].parent / f"{PACK_PREFIX}{stamp}.parquet"
    store.write_rows(frame.to_dict("records"), pack)
    for f in files:
        f.unlink(missing_ok=True)
    return pack


def load_history(results: Path, suite: str | None = None) -> pd.DataFrame:
    """Every tracked row (of `suite`, or of every suite), oldest commit first (by commit date,
    then the order tracked); an empty frame without history."""
    root = Path(results) / HISTORY
    folders = [history_dir(results, suite)] if suite is not None else sorted(
        p for p in root.glob("suite=*") if p.is_dir())
    files = [f for folder in folders if folder.is_dir() for f in sorted(folder.glob("*.parquet"))]
    if not files:
        return pd.DataFrame()
    tables = [_read(path) for path in files]
    frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    # committer dates carry their own UTC offsets (git %cI): order by the instant, not text
    instant = pd.to_datetime(frame["hist_commit_date"], utc=True, errors="coerce")
    frame = (frame.assign(_instant=instant)
             .sort_values(["_instant", "hist_tracked_at"], kind="stable", ignore_index=True)
             .drop(columns="_instant"))
    # a key tracked again (a dirty tree rerun, a file packed while read): the latest row
    return frame.drop_duplicates(subset=[*KEY, "hist_dirty"], keep="last", ignore_index=True)


def track_commit(suite: str, budget: str | None, rev: str, results: Path, repo: Path, *,
                 machine: str | None = None, executor: str = "ray",
                 python: str = sys.executable, timeout: float | None = None,
                 variant: str | None = None, seeds: int | None = None) -> Tracked:
    """Track `suite` at commit `rev` of `repo` with that commit's own code: a temporary git
    worktree of it, `python -m bench.cli run SUITE` inside (its suite file, its protocol,
    its trainer; the package imported from the worktree), the runs stored in the commit's
    work store, then appended here by today's code (old rows migrate on load). `variant`:
    only that variant's runs (`--filter name=...`); `seeds`: seeds 0..seeds-1 instead of the
    suite's (its file's `seeds = [...]` lines rewritten in the worktree: bisection adds
    seeds where a probe is too noisy to decide)."""
    start = time.perf_counter()
    commit = current_commit(repo, rev)
    machine = machine or machine_name()
    work = work_dir(results, commit, machine).resolve()
    args = [python, "-m", "bench.cli", "run", suite, "--results", str(work), "--executor",
            executor, "--no-progress"] + (["--budget", budget] if budget else [])
    if variant is not None:
        args += ["--filter", f"name={variant}"]
    with tempfile.TemporaryDirectory(prefix="vaebench-track-") as tmp:
        tree = Path(tmp) / "tree"
        _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit.sha)
        try:
            if seeds is not None:
                _set_seeds(tree / "suites" / f"{suite}.toml", seeds)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            try:
                done = subprocess.run(args, cwd=tree, env=env, capture_output=True,
                                      text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"tracking {suite} at {commit.short} took over {timeout} s; "
                                 f"finished runs are kept in {work}") from None
        finally:
            _git(repo, "worktree", "remove", "--force", str(tree))
    if done.returncode not in (0, 1):  # 1: some runs failed (their rows are stored)
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise BenchError(f"vaebench at {commit.short} could not run suite '{suite}' (exit "
                         f"{done.returncode}): {lines[-1]}")
    runs = store.load_runs(work, suite=suite)
    path = append(results, suite, commit, machine, runs) if not runs.empty else None
    statuses = runs["status"].value_counts().to_dict() if not runs.empty else {}
    return Tracked(commit, machine, len(runs), 0, statuses, time.perf_counter() - start, path)


def _set_seeds(path: Path, seeds: int) -> None:
    """Rewrite every `seeds = [...]` line of a suite file to seeds 0..seeds-1."""
    if not path.is_file():
        raise BenchError(f"no suite file {path.name} at this commit: name a suite of "
                         "suites/ to add seeds to it")
    text = re.sub(r"(?m)^seeds\s*=\s*\[[^\]\n]*\]", f"seeds = {list(range(seeds))}",
                  path.read_text())
    path.write_text(text)


@dataclass(frozen=True)
class Tracked:
    commit: Commit
    machine: str
    ran: int  # runs executed now
    skipped: int  # runs already in the history at this commit and machine
    statuses: dict
    seconds: float
    path: Path | None  # the history file written (None: nothing new)
    interrupted: bool = False  # Ctrl-C: the runs that finished are tracked


def track(suite, options, repo: Path, *, machine: str | None = None,
          allow_dirty: bool = False) -> Tracked:
    """Run `suite` (bench.suite.Suite, at its budget) at the commit checked out at `repo` with
    the runner's `options` (its `results` is the store whose history grows) and append the
    runs to the history; runs already tracked at this commit and machine are skipped."""
    from dataclasses import replace

    from bench.runner import run_suite

    start = time.perf_counter()
    commit = current_commit(repo)
    if commit.dirty and not allow_dirty:
        raise BenchError(f"the checkout at {repo} has uncommitted changes: a history point "
                         "must be a commit (commit them, or track with --allow-dirty, which "
                         "records hist_dirty = true)")
    machine = machine or machine_name()
    results = Path(options.results)
    done = tracked_run_ids(results, suite.name, commit, machine)
    todo = tuple(v for v in suite.variants if v.run_id not in done)
    summary_statuses: dict = {}
    path, interrupted = None, False
    if todo:
        work = work_dir(results, commit, machine)
        summary = run_suite(replace(suite, variants=todo), replace(options, results=work))
        summary_statuses, interrupted = dict(summary.statuses), summary.interrupted
        runs = store.load_runs(work, suite=suite.name)
        runs = runs[runs["run_id"].isin({v.run_id for v in todo})]
        if not runs.empty:
            path = append(results, suite.name, commit, machine, runs)
    return Tracked(commit, machine, len(todo), len(suite.variants) - len(todo),
                   summary_statuses, time.perf_counter() - start, path, interrupted)
