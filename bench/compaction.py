"""Compaction of the results store (`vaebench store compact`): the per-run ("loose") files of
a suite merged into a few large Parquet files, so that reading 10^5 runs opens a handful of
files instead of 3 x 10^5.

Per suite, and for each of runs/, curves/ and samples/ alike, compaction writes
`compacted+<seq>.parquet` files (bench.store.compacted_name) beside the loose files: a
compacted runs file holds at most MAX_RUNS run rows, sorted by run_id, and the compacted
curves and samples files of the same number hold those runs' curves and samples. Which row
of a run_id readers take (bench.store): its loose file, else the compacted file of the
highest number holding it; curves and samples come from the source of the run row.

Guarantees (each has a test in tests/test_store_compact.py):

* A crash (kill -9) at any point loses and duplicates nothing readers see. A compacted file
  is written atomically (temp file, fsync, rename; curves and samples before the run rows,
  as write_run does) before anything it holds is removed, and the inputs are removed run
  rows first: while both exist, readers take one row per run_id. A later compaction
  removes what a crash left (temp files, compacted curves or samples without their run
  rows) and finishes the job.
* Runners writing meanwhile lose nothing. A loose run file is removed under the lock that
  write_run takes (`.<run_id>.lock`) and only if it is still the file that was read (same
  inode, size and mtime_ns); a run rewritten after it was read stays loose, and its loose
  row is newer than its compacted copy. A finished row that is only compacted still keeps
  a non-forced write_run from replacing it.
* Bounded files, idempotent. The loose files and the compacted files holding fewer than
  MAX_RUNS / 2 current rows (small ones, or ones most of whose rows newer sources replaced)
  are merged into new files of at most MAX_RUNS runs (the synthetic 10^5-run store of
  benchmarks/store_scale.py, 20 epochs a run, measured compacted: 13 MB of run rows, 176 MB
  of curves, 48 MB of samples at six 8x8 images a run). A compaction leaves at most one
  small file, so compacting again does nothing.
* Only rows of this schema version are compacted (a compacted file has one version);
  loose files of older versions stay loose and are migrated when read, as before. An
  unreadable loose file stays where it is (readers report it, or skip it with
  --skip-corrupt). Hidden files (names starting with '.' or '_') are never read.

One compaction of a suite at a time (a lock file `.compact+.lock` in its runs directory);
runners and readers need not stop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import store
from bench.errors import BenchError

try:  # POSIX; see bench.store
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MAX_RUNS = 100_000  # run rows per compacted file
LOCK_NAME = ".compact+.lock"  # '+' cannot occur in a run_id: never a run's lock file
KINDS = (store.RUNS, store.CURVES, store.SAMPLES)
SIDE_KINDS = (store.CURVES, store.SAMPLES)

Snapshot = tuple[int, int, int] | None  # (inode, size, mtime_ns) of a file read; None: absent


@dataclass(frozen=True)
class Compaction:
    """What compacting one suite did."""

    suite: str
    loose: int  # loose runs merged (their files removed)
    merged: int  # compacted files of runs merged (and removed)
    written: tuple[str, ...]  # the compacted runs files written
    runs: int  # runs in the files written
    kept: int  # loose runs left loose: rewritten while compacting, unreadable or older schema

    def describe(self) -> str:
        if not self.written:
            return f"suite {self.suite}: nothing to compact"
        merged = f" and {self.merged} compacted file{'s' * (self.merged != 1)}" \
            if self.merged else ""
        kept = f"; {self.kept} loose run{'s' * (self.kept != 1)} left loose (rewritten " \
            "meanwhile, unreadable or of an older schema)" if self.kept else ""
        return (f"suite {self.suite}: {self.loose:,} loose run{'s' * (self.loose != 1)}"
                f"{merged} -> {', '.join(self.written)} ({self.runs:,} runs){kept}")


def compact(results: str | Path, suites: Sequence[str] = (), *,
            max_runs: int = MAX_RUNS) -> list[Compaction]:
    """Compact the given suites of the store at `results` (default: every suite)."""
    root = Path(results)
    base = root / store.RUNS
    if not base.is_dir():
        raise BenchError(f"{root} is not a results store (it has no {store.RUNS}/ directory)")
    present = store.list_suites(root)
    for name in suites:
        store.check_suite_name(name)
        if name not in present:
            raise BenchError(f"suite '{name}' has no runs in {root} (suites with runs: "
                             f"{', '.join(present) or 'none'})")
    if max_runs < 1:
        raise BenchError(f"max_runs must be at least 1, got {max_runs}")
    done = []
    for name in list(suites) or present:
        try:
            done.append(_compact_suite(root, name, max_runs))
        except OSError as err:  # a full disk, a read-only store: rerun to finish, nothing lost
            where = f" {err.filename}:" if err.filename else ""
            raise BenchError(f"cannot compact suite {name}:{where} "
                             f"{err.strerror or store._one_line(err)}") from None
    return done


# Each write and removal goes through these two (tests make them fail at the n-th call).
def _write(table: pa.Table, path: Path) -> None:
    samples = path.parent.parent.name == store.SAMPLES  # <results>/samples/suite=<name>/
    store._write_atomic(table, path, row_group_size=store.COMPACTED_SAMPLES_ROW_GROUP
                        if samples else store.COMPACTED_ROW_GROUP)


def _unlink(path: Path) -> None:
    os.unlink(path)


@contextlib.contextmanager
def _compaction_lock(lock_file: Path, suite: str) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"suite {suite} is being compacted by another process "
                             f"(it holds {lock_file})") from None
        yield
    finally:
        os.close(fd)


def _compact_suite(root: Path, suite: str, max_runs: int) -> Compaction:
    dirs = {kind: store._suite_dir(root, kind, suite) for kind in KINDS}
    with _compaction_lock(dirs[store.RUNS] / LOCK_NAME, suite):
        _remove_leftovers(dirs)
        listings = {kind: store.list_suite_dir(d) for kind, d in dirs.items()}
        runs = listings[store.RUNS]

        # the current rows of each compacted file: those no loose file or newer file replaces
        owners: dict[int, pa.Array] = {}
        seen = pa.array(list(runs.loose), type=pa.string())
        for seq, path in reversed(runs.compacted):
            ids = _read_compacted(path, ["run_id"]).column("run_id")
            owners[seq] = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=seen))
                                    ).combine_chunks()
            seen = pa.concat_arrays([seen, owners[seq]])
        small = [seq for seq, ids in owners.items() if 2 * len(ids) < max_runs]
        compacted_ids = set(seen.to_pylist()) - set(runs.loose)
        stale = {kind: {run_id: _snapshot(path) for run_id, path in listings[kind].loose.items()
                        if run_id in compacted_ids}
                 for kind in SIDE_KINDS}  # loose curves beside a compacted run row: not shown
        if not runs.loose and len(small) <= 1:
            _remove_stale(dirs, stale)
            return Compaction(suite, 0, 0, (), 0, 0)

        tables: dict[str, list[pa.Table]] = {kind: [] for kind in KINDS}
        for seq in small:  # the current rows of the small compacted files
            for kind in KINDS:
                path = dirs[kind] / store.compacted_name(seq)
                if kind == store.RUNS or path.exists():
                    table = _read_compacted(path, None)
                    tables[kind].append(
                        table.filter(pc.is_in(table.column("run_id"), value_set=owners[seq])))

        loose: dict[str, dict[str, Snapshot]] = {}  # run_id -> kind -> snapshot of what was read
        kept = 0
        for run_id, path in runs.loose.items():
            read = _read_loose(path)
            if read is None:
                kept += 1
                continue
            snapshots = {store.RUNS: read[1]}
            sides = {}
            for kind in SIDE_KINDS:
                side = _read_loose(dirs[kind] / path.name)
                snapshots[kind] = side[1] if side is not None else None
                sides[kind] = side
            if any(side is None and (dirs[kind] / path.name).exists()
                   for kind, side in sides.items()):  # an unreadable side file: leave the run
                kept += 1
                continue
            loose[run_id] = snapshots
            tables[store.RUNS].append(read[0])
            for kind, side in sides.items():
                if side is not None:
                    tables[kind].append(side[0])

        merged = {kind: _concat(tables[kind], suite) for kind in KINDS}
        run_rows = merged[store.RUNS]
        written: list[str] = []
        if run_rows is not None and run_rows.num_rows:
            run_rows = run_rows.take(pc.sort_indices(run_rows, sort_keys=[("run_id",
                                                                          "ascending")]))
            seq = 1 + max((s for listing in listings.values() for s, _ in listing.compacted),
                          default=0)
            for start in range(0, run_rows.num_rows, max_runs):
                chunk = run_rows.slice(start, max_runs)
                ids = chunk.column("run_id")
                name = store.compacted_name(seq)
                for kind in SIDE_KINDS:  # curves and samples before the run rows
                    side = merged[kind]
                    if side is not None:
                        side = side.filter(pc.is_in(side.column("run_id"), value_set=ids))
                        side = side.take(pc.sort_indices(side, sort_keys=[("run_id",
                                                                           "ascending")]))
                        if side.num_rows:
                            dirs[kind].mkdir(parents=True, exist_ok=True)
                            _write(side, dirs[kind] / name)
                _write(chunk, dirs[store.RUNS] / name)
                written.append(name)
                seq += 1

        for seq in small:  # merged compacted files: run rows first
            for kind in KINDS:
                with contextlib.suppress(FileNotFoundError):
                    _unlink(dirs[kind] / store.compacted_name(seq))
        removed = 0
        for run_id, snapshots in loose.items():
            if _remove_loose(dirs, run_id, snapshots):
                removed += 1
            else:
                kept += 1
        _remove_stale(dirs, stale)
        for directory in dirs.values():
            if directory.is_dir():
                store._fsync_dir(directory)
        return Compaction(suite, removed, len(small), tuple(written),
                          0 if run_rows is None else run_rows.num_rows, kept)


def _remove_leftovers(dirs: dict[str, Path]) -> None:
    """What a crashed compaction left: its hidden temp files, and compacted curves or
    samples whose run rows were never written (or already removed); none of it is read."""
    numbers = {seq for seq, _ in store.list_suite_dir(dirs[store.RUNS]).compacted}
    for kind, directory in dirs.items():
        if not directory.is_dir():
            continue
        for path in directory.glob(f".{store.COMPACTED_PREFIX}*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                _unlink(path)
        if kind != store.RUNS:
            for seq, path in store.list_suite_dir(directory).compacted:
                if seq not in numbers:
                    with contextlib.suppress(FileNotFoundError):
                        _unlink(path)


def _snapshot(path: Path) -> Snapshot:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _read_loose(path: Path) -> tuple[pa.Table, Snapshot] | None:
    """A loose file's rows and the identity of the file they were read from (fstat of the
    open file, so a file renamed over it meanwhile is never mistaken for it); None where
    absent, unreadable, not of this schema version or not only rows of the run it names."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            table = pq.ParquetFile(handle).read()
    except (pa.ArrowException, OSError, ValueError):  # OSError: also a file gone meanwhile
        return None
    if "run_id" not in table.column_names or "schema_version" not in table.column_names:
        return None
    versions = pc.unique(table.column("schema_version")).to_pylist()
    if versions != [store.SCHEMA_VERSION]:
        return None
    if pc.unique(table.column("run_id")).to_pylist() != [path.stem]:
        return None  # not one run's file as write_run leaves it (copied in): its rows stay
    return table, (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _read_compacted(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise BenchError(f"cannot compact: corrupt results file {path}: "
                         f"{store._one_line(err)}; move it away first") from None


def _concat(tables: list[pa.Table], suite: str) -> pa.Table | None:
    if not tables:
        return None
    try:
        return pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise BenchError(f"cannot compact suite {suite}: its files' columns do not unite "
                         f"({store._one_line(err)})") from None


def _remove_loose(dirs: dict[str, Path], run_id: str, snapshots: dict[str, Snapshot]) -> bool:
    """Remove the loose files of `run_id` that were compacted, under the run's lock and only
    if its run file is still the one read; False where it was rewritten (it stays)."""
    name = f"{run_id}.parquet"
    with store._run_lock(dirs[store.RUNS] / f".{run_id}.lock"):
        if _snapshot(dirs[store.RUNS] / name) != snapshots[store.RUNS]:
            return False
        _unlink(dirs[store.RUNS] / name)  # the run row first: its compacted row now wins
        for kind in SIDE_KINDS:
            path = dirs[kind] / name
            if snapshots[kind] is not None and _snapshot(path) == snapshots[kind]:
                _unlink(path)
    return True


def _remove_stale(dirs: dict[str, Path], stale: dict[str, dict[str, Snapshot]]) -> None:
    """Loose curves or samples files whose run row is compacted (left by a run that failed
    to land, or by a crashed compaction; readers ignore them): removed, under the run's lock,
    if the run is still not loose and the file is the one seen."""
    for kind, files in stale.items():
        for run_id, snapshot in files.items():
            name = f"{run_id}.parquet"
            with store._run_lock(dirs[store.RUNS] / f".{run_id}.lock"):
                if (dirs[store.RUNS] / name).exists() or _snapshot(dirs[kind] / name) != snapshot:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    _unlink(dirs[kind] / name)
