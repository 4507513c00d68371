"""The results store: one small Parquet file per run, written atomically, read by anything.

Layout under a results directory (`results/`, `$VAEBENCH_RESULTS`, or an explicit path):

    <results>/runs/suite=<suite>/<run_id>.parquet     one row: config, metrics, status, provenance
    <results>/curves/suite=<suite>/<run_id>.parquet   one row per epoch
    <results>/samples/suite=<suite>/<run_id>.parquet  images for the report (prior samples,
                                                      test inputs and reconstructions)

`suite=<name>` is hive partitioning, so the store is a data set as it stands:

    pandas:   bench.store.load_runs("results")                 (columns united, one frame)
    pyarrow:  pyarrow.dataset.dataset("results/runs", format="parquet", partitioning="hive")
    DuckDB:   SELECT * FROM read_parquet('results/runs/*/*.parquet', union_by_name = true)

Every value has a concrete Arrow type (a metric that is None is stored as a null float64, a
provenance entry as a null string), so readers that take the schema from the first file
(pyarrow.dataset, DuckDB) can cast the others to it. Runs of different variants may still
carry different columns (a diverged run has no test metrics): pandas unites them; DuckDB
needs `union_by_name = true`.

Compaction (`vaebench store compact`, bench.compaction) merges a suite's per-run ("loose")
files into `compacted+<seq>.parquet` files in the same directories (at most
bench.compaction.MAX_RUNS runs each, sorted by run_id, row groups of COMPACTED_ROW_GROUP
rows), so that 10^5 runs are a few files to read, not 3 x 10^5. Every reader here
(finished_run_ids, load_runs, load_curves, load_samples, write_run's finished-row check)
reads both kinds and takes, per run_id, the newest source: the loose file, else the
compacted file of the highest sequence number holding it (zero-padded, so names sort as
numbers); curves and samples come whole from the source of the run's row, never a mix of
two attempts. A finished row that is only compacted still keeps a non-forced write_run
from replacing it; a forced one writes a loose file, which wins. Readers that glob the
files themselves (DuckDB, pyarrow.dataset) may see a run twice after such a replacement
or while a compaction runs: take, per run_id, the loose row, else the highest `compacted+`
file's. Compaction's own guarantees (a kill -9 at any point loses and duplicates nothing;
runners writing meanwhile lose nothing; idempotent) are in bench.compaction. A read that
a compaction overlapped (a listed file vanished, compacted files changed) is repeated.

Writes are crash- and race-safe: each file is written to a hidden temp file in its final
directory, fsynced, renamed over the final name and the directory fsynced, so a reader sees
the old file or the new one, never half of one. The curves land before the run row, so a
run file never exists without its curves; all of a run's files are written before any is
renamed, so a full disk or a store turned read-only (StoreWriteError, naming the file)
leaves the store as it was, with no temp file and no curves of a run that has no row. A
per-run lock file (`.<run_id>.lock`, flock)
makes the check "is there a finished row already?" and the rename one step between
processes: a finished result is never replaced unless asked (`replace_finished=True`).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import config as _config
from bench.config import RunConfig
from bench.errors import BenchError, make_directory

try:  # POSIX; without it (Windows) writes stay atomic but the finished-row check is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
STATUSES = ("finished", "failed", "diverged")

RESULTS_ENV = "VAEBENCH_RESULTS"
RUNS = "runs"
CURVES = "curves"
SAMPLES = "samples"

# Columns every run row starts with, in this order; cfg_*, metric_*, sys_* follow.
RUN_COLUMNS = (
    "run_id", "config_hash", "suite", "variant", "budget", "status", "error", "traceback",
    "schema_version",
)
_EMPTY_COLUMNS = {
    RUNS: ["run_id", "suite", "status"],
    CURVES: ["run_id", "suite", "epoch"],
    SAMPLES: ["run_id", "suite", "kind", "index", "height", "width", "pixels"],
}

# Migrations of stored frames from older schema versions, asv-style: _MIGRATIONS[n] turns a
# frame of version n - 1 into version n (rename a column, fill a new one, ...). A file of
# version v is passed through _MIGRATIONS[v + 1], ..., _MIGRATIONS[SCHEMA_VERSION] in order
# when loaded; files on disk are never rewritten. Bump SCHEMA_VERSION and add an entry
# whenever the meaning or name of a stored column changes. Version 1 is the first.
_MIGRATIONS: dict[int, Callable[[pd.DataFrame], pd.DataFrame]] = {}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ------------------------------------------------------------------------------- paths
def results_dir(path: str | Path | None = None) -> Path:
    """The results directory: `path` if given, else $VAEBENCH_RESULTS, else ./results."""
    if path is not None and str(path) != "":
        return Path(path).expanduser()
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path("results")


def run_path(results: str | Path, suite: str, run_id: str) -> Path:
    """Where the run row of `run_id` in `suite` lives (whether or not it exists yet)."""
    return _suite_dir(Path(results), RUNS, suite) / f"{_check_run_id(run_id)}.parquet"


def curves_path(results: str | Path, suite: str, run_id: str) -> Path:
    """Where the per-epoch curves of `run_id` in `suite` live (whether or not they exist)."""
    return _suite_dir(Path(results), CURVES, suite) / f"{_check_run_id(run_id)}.parquet"


def samples_path(results: str | Path, suite: str, run_id: str) -> Path:
    """Where the sample images of `run_id` in `suite` live (whether or not they exist)."""
    return _suite_dir(Path(results), SAMPLES, suite) / f"{_check_run_id(run_id)}.parquet"


def _suite_dir(results: Path, kind: str, suite: str) -> Path:
    return results / kind / f"suite={_check_suite(suite)}"


def list_suites(results: Path, kind: str = RUNS) -> list[str]:
    """The suites with a directory under <results>/<kind>, sorted."""
    return sorted(p.name[len("suite="):] for p in (results / kind).glob("suite=*") if p.is_dir())


def _check_suite(suite: str) -> str:
    if not isinstance(suite, str) or not _SAFE_NAME.match(suite):
        raise BenchError(
            f"suite name {suite!r} cannot name a results directory "
            "(use letters, digits, '.', '_' and '-', not starting with '.', '_' or '-')"
        )
    return suite


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _SAFE_NAME.match(run_id):
        raise ValueError(f"run_id {run_id!r} cannot name a results file")
    return run_id


# ----------------------------------------------------------------------------- rows
def run_row(
    *,
    suite: str,
    variant: str,
    config: RunConfig,
    status: str,
    metrics: Mapping[str, Any],
    provenance: Mapping[str, Any],
    error: str | None = None,
    traceback: str | None = None,
    budget: str | None = None,
) -> dict[str, Any]:
    """The flat row stored for one run: identity, outcome, cfg_*, metric_*, sys_* columns."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    row: dict[str, Any] = {
        "run_id": config.run_id,
        "config_hash": config.config_hash,
        "suite": _check_suite(suite),
        "variant": variant,
        "budget": budget,
        "status": status,
        "error": error,
        "traceback": traceback,
        "schema_version": SCHEMA_VERSION,
        "protocol": _config.PROTOCOL,  # part of the run_id; rows before protocol 2 lack it
    }
    row.update({f"cfg_{key}": value for key, value in config.flat_dict().items()})
    row.update({f"metric_{key}": _plain(value) for key, value in metrics.items()})
    row.update({f"sys_{key}": _plain(value) for key, value in provenance.items()})
    if config.plugins():  # the plugin code the run ran (its run_id's): name -> version, digest
        row["sys_plugins"] = json.dumps(config.plugin_code(), sort_keys=True)
    return row


def _plain(value: Any) -> Any:
    """numpy/torch scalars and arrays, tuples -> plain Python values and lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()  # numpy scalar or array, torch tensor
    return value


# Arrow types for columns whose value may be None (a null column has no type of its own;
# readers that take the schema from one file could not cast another file's values to it).
_STRING_COLUMNS = set(RUN_COLUMNS) - {"schema_version"}


def _cfg_null_type(name: str) -> pa.DataType:
    annotation = str(_CFG_TYPES.get(name, ""))
    for word, arrow_type in (("bool", pa.bool_()), ("float", pa.float64()),
                             ("int", pa.int64()), ("str", pa.string())):
        if word in annotation:
            return arrow_type
    return pa.string()


_CFG_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def _null_type(column: str, *, curves: bool) -> pa.DataType:
    if curves:
        return pa.string() if column in _STRING_COLUMNS else pa.float64()
    if column in _STRING_COLUMNS or column.startswith("sys_"):
        return pa.string()
    if column.startswith("cfg_"):
        return _cfg_null_type(column[len("cfg_"):])
    if column.startswith("metric_"):
        return pa.float64()
    return pa.string()


def _concrete(arrow_type: pa.DataType, default: pa.DataType) -> pa.DataType:
    """`arrow_type` with null (the type of an all-None column or empty list) replaced."""
    if pa.types.is_null(arrow_type):
        return default
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = _concrete(arrow_type.value_type, pa.int64())
        return pa.list_(inner) if pa.types.is_list(arrow_type) else pa.large_list(inner)
    return arrow_type


def _table(rows: Sequence[Mapping[str, Any]], *, curves: bool) -> pa.Table:
    """One Arrow table from dict rows: union of keys in first-seen order, concrete types."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays = []
    for name in names:
        values = [_plain(row.get(name)) for row in rows]
        try:
            inferred = pa.array(values).type
            arrays.append(pa.array(values, type=_concrete(inferred, _null_type(name,
                                                                                curves=curves))))
        except (pa.ArrowException, TypeError, ValueError) as err:
            raise ValueError(f"column {name!r} cannot be stored: {err}") from None
    return pa.Table.from_arrays(arrays, names=list(names))


# ---------------------------------------------------------------------------- write
def write_run(
    results: str | Path,
    row: Mapping[str, Any],
    curves: Sequence[Mapping[str, Any]] = (),
    *,
    samples: Sequence[Mapping[str, Any]] = (),
    replace_finished: bool = False,
) -> Path:
    """Store one run (and its per-epoch curves) atomically; returns the run file's path.

    `row` is a `run_row(...)`; `curves` are per-epoch mappings (or dataclass records), to
    which run_id, suite and schema_version columns are added; no curves, no curves file.
    `samples` (image rows: kind, index, height, width, pixels) are stored the same way.

    A finished row already stored for this run_id is kept (nothing is written) unless
    `replace_finished`: two runners finishing the same run leave exactly one row, and a
    failed or diverged attempt never replaces a finished result. A failed or diverged row
    is replaced; an unreadable file is moved aside to `<run_id>.parquet.corrupt`. The
    curves are written first and any stale curves of the replaced row removed, so a run
    file always sits beside its own curves.
    """
    results = Path(results)
    status = row.get("status")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    run_id = _check_run_id(row.get("run_id"))
    suite = _check_suite(row.get("suite"))
    row = {**row, "schema_version": SCHEMA_VERSION}
    run_file = run_path(results, suite, run_id)
    run_table = _table([row], curves=False)
    side_tables = {  # written before the run row, so a run row never lacks its own
        curves_path(results, suite, run_id): _side_table(curves, run_id, suite),
        samples_path(results, suite, run_id): _side_table(samples, run_id, suite),
    }

    run_file.parent.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_file.parent / f".{run_id}.lock"):
        stored = _stored_status(run_file)
        if stored is None and not run_file.exists():  # compacted: a loose row would win over it
            stored = _compacted_status(run_file.parent, run_id)
        if not replace_finished and stored == "finished":
            return run_file
        # Every file is written (to its temp name) before any is renamed into place: a full
        # disk or a read-only store fails while writing, and then no final file has changed
        # (no curves without their run, the row it would replace intact). A rename failing
        # after some side files were renamed (rare: the data are already on disk) removes
        # them again, so a replaced row is then left without its curves or samples.
        staged: list[tuple[Path, Path]] = []
        renamed: list[Path] = []
        try:
            for side_file, side_table in side_tables.items():
                if side_table is not None:
                    side_file.parent.mkdir(parents=True, exist_ok=True)
                    staged.append((_stage(side_table, side_file), side_file))
            staged.append((_stage(run_table, run_file), run_file))
            if stored is None and run_file.exists():  # unreadable: keep it aside, not destroy it
                os.replace(run_file, run_file.with_name(run_file.name + ".corrupt"))
            for side_file, side_table in side_tables.items():
                if side_table is None and side_file.exists():  # the replaced row's: not ours
                    side_file.unlink()
                    _fsync_dir(side_file.parent)
            for tmp, final in staged:  # the run row last
                _commit(tmp, final)
                renamed.append(final)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            if run_file not in renamed:  # side files without their run row: orphans
                for side_file in renamed:
                    with contextlib.suppress(OSError):
                        side_file.unlink()
            raise
    return run_file


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Atomically write run rows (mappings, as `run_row` makes and `load_runs` returns) as one
    Parquet file, with the store's column types (bench.history's per-commit files)."""
    _write_atomic(_table(rows, curves=False), Path(path))


def read_rows(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of a Parquet file `write_rows` wrote (list columns as Python lists)."""
    return _to_pandas(pq.read_table(path, columns=columns))


def check_suite_name(suite: str) -> str:
    """`suite` if it is a valid suite name (it names folders), else a BenchError."""
    return _check_suite(suite)


def _side_table(records: Sequence[Any], run_id: str, suite: str) -> pa.Table | None:
    """Per-run rows (curves, samples) tagged with run_id, suite, schema_version; None if none."""
    rows = [
        {"run_id": run_id, "suite": suite,
         **{k: v for k, v in _as_mapping(r).items()
            if k not in ("run_id", "suite", "schema_version")},
         "schema_version": SCHEMA_VERSION}
        for r in records
    ]
    return _table(rows, curves=True) if rows else None


def _as_mapping(record: Any) -> Mapping[str, Any]:
    """A curve row as given, or a dataclass instance (e.g. train.EpochRecord) as a dict."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    return record


def _stored_status(run_file: Path) -> str | None:
    """Status of the stored row, or None where there is none (or it cannot be read)."""
    try:
        with pq.ParquetFile(run_file) as parquet:
            if "status" not in parquet.schema_arrow.names:
                return None
            statuses = parquet.read(columns=["status"]).column("status").to_pylist()
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError):
        return None  # unreadable: a new row replaces it
    return statuses[0] if statuses else None


def _compacted_status(directory: Path, run_id: str) -> str | None:
    """Status of the newest compacted row of `run_id` (bench.compaction), None where none.

    Called under the run's lock, which the compactor also takes to remove a loose file it
    compacted, after writing the compacted file: the row is loose or compacted, never
    neither; a compacted file removed while being read (merged into a newer) means list
    again."""
    for _ in range(_READ_ATTEMPTS):
        try:
            for _, path in reversed(list_suite_dir(directory).compacted):
                table = _read(path, ["run_id", "status"], True, vanished=True,
                              run_ids=frozenset([run_id]))  # its row group alone
                if table is None:  # unreadable: its rows are not there for readers either
                    continue
                mine = table.filter(pc.equal(table.column("run_id"), run_id))
                if mine.num_rows:
                    return mine.column("status")[mine.num_rows - 1].as_py()
            return None
        except _Vanished:
            continue
    return None


@contextlib.contextmanager
def _run_lock(lock_file: Path) -> Iterator[None]:
    """An exclusive inter-process lock; the (empty, hidden) lock file is left in place."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class StoreWriteError(OSError):
    """A store file could not be written (a full disk, a read-only or unwritable store):
    `filename` is the file's final path, never its temp name; errno and strerror the cause.
    Its temp file is already removed."""


def _write_atomic(table: pa.Table, final: Path, *, row_group_size: int | None = None) -> None:
    """Write `table` so that `final` is either absent, the old file or the complete new one."""
    _commit(_stage(table, final, row_group_size=row_group_size), final)


def _stage(table: pa.Table, final: Path, *, row_group_size: int | None = None) -> Path:
    """`table` written and fsynced to a hidden temp file beside `final`; returns its path.
    On any failure the temp file is removed (an OSError becomes a StoreWriteError)."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle, row_group_size=row_group_size)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as err:
        raise StoreWriteError(err.errno, err.strerror or _one_line(err), str(final)) from err
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    """Rename the staged `tmp` over `final` (atomic) and fsync the directory."""
    try:
        os.replace(tmp, final)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreWriteError(err.errno, err.strerror or _one_line(err), str(final)) from err
    _fsync_dir(final.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def export_runs(results: str | Path, suite: str, path: str | Path, *,
                budget: str | None = None) -> Path:
    """Write the finished runs of `suite` (at `budget`, if given) as ONE Parquet file,
    atomically: a baseline to commit and compare against (`load_runs(path)` reads it)."""
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"{path} is a directory: give the baseline's file name "
                         f"(e.g. {path / (suite + '.parquet')})")
    runs = load_runs(results, suite=suite)
    if not runs.empty:
        runs = runs[runs["status"] == "finished"]
        if budget is not None:
            runs = runs[runs["budget"] == budget]
    if runs.empty:
        raise BenchError(f"no finished runs of suite '{suite}'"
                         f"{f' at budget {budget!r}' if budget else ''} in {results}")
    rows = [{k: v for k, v in row.items() if not _isnan(v)} for row in
            runs.astype(object).where(runs.notna(), None).to_dict("records")]
    make_directory(path.parent, "export directory")
    _write_atomic(_table(rows, curves=False), path)
    return path


# ----------------------------------------------------------------------------- read
# A suite directory holds loose files (<run_id>.parquet, one run each, as write_run leaves
# them) and compacted files (bench.compaction: compacted+<seq>.parquet, many runs each; '+'
# cannot occur in a run_id, so the names never collide). A run_id's row is taken from its
# newest source: its loose file, else the compacted file of the highest sequence number
# holding it. Curves and samples come whole from the source of the run's row (loose beside
# loose, the same sequence number beside compacted), never a mix of two attempts.
COMPACTED_PREFIX = "compacted+"
_COMPACTED = re.compile(r"^compacted\+(\d+)\.parquet$")
_READ_ATTEMPTS = 5  # listings retried while a compaction moves the files being read
COMPACTED_ROW_GROUP = 8192  # rows per row group of a compacted file
# ... of samples, one image a row: a report reads the images of one run per variant, and
# reads each such run's whole row group (256 MNIST images are 1.6 MB; 8192 would be 51 MB)
COMPACTED_SAMPLES_ROW_GROUP = 256


def compacted_name(seq: int) -> str:
    """The file name of compacted file number `seq` (zero-padded: names sort as numbers)."""
    return f"{COMPACTED_PREFIX}{seq:08d}.parquet"


@dataclasses.dataclass(frozen=True)
class Listing:
    """The visible Parquet files of one suite directory (names starting with '.' or '_'
    are not): loose files by run_id, compacted files as (sequence number, path), oldest
    first."""

    loose: dict[str, Path]
    compacted: tuple[tuple[int, Path], ...]

    def compacted_names(self) -> frozenset[str]:
        return frozenset(path.name for _, path in self.compacted)


def list_suite_dir(directory: Path) -> Listing:
    """What `directory` (<results>/<kind>/suite=<name>) holds; empty where it is absent."""
    loose: dict[str, Path] = {}
    compacted: list[tuple[int, Path]] = []
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return Listing({}, ())
    with entries:
        for entry in entries:
            name = entry.name
            if name.startswith((".", "_")) or not name.endswith(".parquet"):
                continue
            if not entry.is_file():
                continue
            match = _COMPACTED.match(name)
            if match:
                compacted.append((int(match[1]), Path(entry.path)))
            else:
                loose[name[: -len(".parquet")]] = Path(entry.path)
    return Listing(dict(sorted(loose.items())), tuple(sorted(compacted)))


class _Vanished(Exception):
    """A listed file was removed while being read (a compaction moved it): list again."""


def finished_run_ids(results: str | Path, suite: str, *, skip_corrupt: bool = False) -> set[str]:
    """run_ids of `suite` whose newest row is finished (reads only the run_id and status
    columns)."""
    root = Path(results)
    columns = ["run_id", "status", "schema_version"]
    if _one_file(root):  # a baseline, as it stands
        pieces = _read_file(root, columns, skip_corrupt)
    else:
        pieces = _read_suite(root, RUNS, _check_suite(suite), columns, skip_corrupt)
    done: set[str] = set()
    for piece in pieces:
        if isinstance(piece, pa.Table):
            piece = piece.filter(pc.equal(piece.column("status"), "finished"))
            done.update(piece.column("run_id").to_pylist())
        elif piece is not None:
            done.update(piece.loc[piece["status"] == "finished", "run_id"])
    return done


def load_runs(
    results: str | Path | None = None, *, suite: str | None = None, skip_corrupt: bool = False
) -> pd.DataFrame:
    """Every stored run row (of one suite, or all; the newest of each run_id) as one
    DataFrame, columns united, rows by suite and run_id.

    `results` may also be a single .parquet run file. A corrupt file raises `BenchError`
    naming it unless `skip_corrupt`, which skips it with a warning.
    """
    return _load(results, RUNS, suite, skip_corrupt)


def load_curves(
    results: str | Path | None = None, *, suite: str | None = None, skip_corrupt: bool = False,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every stored per-epoch row (one per run and epoch) as one DataFrame, with run_id;
    `columns`: only those (besides run_id and schema_version)."""
    return _load(results, CURVES, suite, skip_corrupt, columns=columns)


def load_samples(
    results: str | Path | None = None, *, suite: str | None = None, skip_corrupt: bool = False,
    run_ids: Iterable[str] | None = None, columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Stored sample images: run_id, suite, kind (prior / original / reconstruction), index,
    height, width, pixels (row-major floats in [0, 1]). `run_ids`: only those runs' (the
    report shows a few runs' images; all of a large suite's would not fit in memory);
    `columns`: only those columns (e.g. run_id and kind: which runs stored which images)."""
    return _load(results, SAMPLES, suite, skip_corrupt, run_ids=run_ids, columns=columns)


def _load(results: str | Path | None, kind: str, suite: str | None, skip_corrupt: bool, *,
          run_ids: Iterable[str] | None = None,
          columns: Sequence[str] | None = None) -> pd.DataFrame:
    root = results_dir(results)
    wanted = None if columns is None else list(dict.fromkeys(
        ["run_id", "schema_version", *columns]))
    if _one_file(root):  # a baseline, as it stands
        pieces = _read_file(root, None, skip_corrupt)
        if suite is not None:
            pieces = [_to_pandas(p) if isinstance(p, pa.Table) else p for p in pieces
                      if p is not None]
            if pieces and "suite" not in pieces[0].columns:
                _corrupt(root, f"no suite column (cannot select suite '{suite}')",
                         skip_corrupt)
                pieces = []
            pieces = [p[p["suite"] == suite] for p in pieces]
    else:
        suites = [_check_suite(suite)] if suite is not None else list_suites(root, kind)
        chosen = None if run_ids is None else frozenset(run_ids)
        pieces = [piece for name in suites
                  for piece in _read_suite(root, kind, name, wanted, skip_corrupt, chosen)]
    if run_ids is not None:
        keep = pa.array(sorted(set(run_ids)), type=pa.string())
        pieces = [p.filter(pc.is_in(p.column("run_id"), value_set=keep))
                  if isinstance(p, pa.Table) else p[p["run_id"].isin(keep.to_pylist())]
                  for p in pieces if p is not None]
    frames = _frames([p for p in pieces if p is not None])
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=list(wanted or _EMPTY_COLUMNS[kind]))
    if len(frames) == 1:
        return frames[0]
    with warnings.catch_warnings():  # all-NA columns of some files: the result is what we want
        warnings.simplefilter("ignore", FutureWarning)
        return pd.concat(frames, ignore_index=True, sort=False)


def _one_file(root: Path) -> bool:
    """Whether `root` names one Parquet file rather than a results directory."""
    if root.is_file():
        return True
    if root.suffix == ".parquet" and not root.exists():
        raise BenchError(f"results file {root} does not exist")
    return False


def _read_file(path: Path, columns: list[str] | None, skip_corrupt: bool
               ) -> list[pa.Table | pd.DataFrame | None]:
    """One given Parquet file's rows, as pieces (none where skipped)."""
    table = _read(path, columns, skip_corrupt)
    return [] if table is None else [_finish(path, table, None, skip_corrupt)]


def _frames(pieces: list[pa.Table | pd.DataFrame]) -> list[pd.DataFrame]:
    """pandas frames of the pieces: the Arrow tables as ONE frame (a concat of 10^5 small
    frames would take minutes), the migrated frames as they are."""
    tables = [p for p in pieces if isinstance(p, pa.Table) and p.num_columns]
    frames = [p for p in pieces if isinstance(p, pd.DataFrame)]
    if not tables:
        return frames
    try:
        table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return [_to_pandas(t) for t in tables] + frames  # types pandas alone can unite
    return [_to_pandas(table), *frames]


def _read_suite(root: Path, kind: str, suite: str, columns: list[str] | None,
                skip_corrupt: bool, run_ids: frozenset[str] | None = None
                ) -> list[pa.Table | pd.DataFrame | None]:
    """The winning rows of `kind` in one suite, as pieces (tables; migrated frames).

    The side directory is listed before the runs directory, and the read is repeated when
    a listed file vanished or the compacted files changed meanwhile: bench.compaction
    writes a compacted file (side files before run rows) before it removes what it holds
    (run rows before side files), so a consistent pair of listings never misses a run."""
    directory = _suite_dir(root, kind, suite)
    runs_dir = _suite_dir(root, RUNS, suite)
    for attempt in range(_READ_ATTEMPTS):
        last = attempt == _READ_ATTEMPTS - 1
        listing = list_suite_dir(directory)
        runs = listing if kind == RUNS else list_suite_dir(runs_dir)
        try:
            pieces = _read_winners(kind, suite, listing, runs, columns, skip_corrupt,
                                   tolerate_vanished=last, run_ids=run_ids)
        except _Vanished:
            continue
        if last or (list_suite_dir(directory).compacted_names() == listing.compacted_names()
                    and list_suite_dir(runs_dir).compacted_names() == runs.compacted_names()):
            return _sorted_by_run_id(pieces)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_winners(kind: str, suite: str, listing: Listing, runs: Listing,
                  columns: list[str] | None, skip_corrupt: bool, *, tolerate_vanished: bool,
                  run_ids: frozenset[str] | None = None
                  ) -> list[pa.Table | pd.DataFrame | None]:
    """`run_ids`: only these runs' side rows are needed (others may come along)."""
    def read(path: Path, cols: list[str] | None, wanted: frozenset[str] | None = None
             ) -> pa.Table | None:
        try:
            return _read(path, cols, skip_corrupt, vanished=True, run_ids=wanted)
        except _Vanished:
            if tolerate_vanished:
                return None
            raise

    pieces: list[pa.Table | pd.DataFrame | None] = []
    # owners[seq]: the run_ids whose newest row is in compacted file seq of runs/
    owners: dict[int, pa.Array] = {}
    seen = pa.array(list(runs.loose), type=pa.string())
    for seq, path in reversed(runs.compacted):
        table = read(path, columns if kind == RUNS else ["run_id"])
        if table is None:
            continue
        ids = table.column("run_id")
        newest = pc.invert(pc.is_in(ids, value_set=seen))
        owners[seq] = pc.filter(ids, newest).combine_chunks()
        seen = pa.concat_arrays([seen, owners[seq]])
        if kind == RUNS:
            pieces.append(_finish(path, table.filter(newest), suite, skip_corrupt))
    if kind != RUNS:
        for seq, path in reversed(listing.compacted):
            if seq not in owners:  # no compacted run rows of this number: left over
                continue
            table = read(path, columns, run_ids)
            if table is not None:
                mine = pc.is_in(table.column("run_id"), value_set=owners[seq])
                pieces.append(_finish(path, table.filter(mine), suite, skip_corrupt))
    compacted_ids = set(seen.to_pylist()) - set(runs.loose) if kind != RUNS else set()
    for run_id, path in listing.loose.items():
        if kind != RUNS and run_id in compacted_ids:  # the run's row is compacted: stale
            continue
        if kind != RUNS and run_ids is not None and run_id not in run_ids:
            continue
        table = read(path, columns)
        if table is not None:
            pieces.append(_finish(path, table, suite, skip_corrupt))
    return pieces


def _finish(path: Path, table: pa.Table, suite: str | None,
            skip_corrupt: bool) -> pa.Table | pd.DataFrame | None:
    """One file's rows checked (schema version) and brought up to date: the table, or a
    migrated pandas frame, or None where skipped."""
    if "schema_version" not in table.column_names:
        _corrupt(path, "no schema_version column (not a vaebench results file)", skip_corrupt)
        return None
    if "suite" not in table.column_names:
        name = suite or (path.parent.name[len("suite="):]
                         if path.parent.name.startswith("suite=") else None)
        if name is not None:
            table = table.add_column(0, "suite", pa.array([name] * table.num_rows,
                                                           type=pa.string()))
    versions = table.column("schema_version")
    version = _check_versions(path, pc.unique(versions).to_pylist())
    if version == SCHEMA_VERSION:
        return table
    return _migrate(path, _to_pandas(table))


def _sorted_by_run_id(pieces: list[pa.Table | pd.DataFrame | None]
                      ) -> list[pa.Table | pd.DataFrame | None]:
    """The pieces as one table sorted by run_id (stable: a run's rows keep their order), so
    a suite reads the same however its runs are spread over files; migrated frames after."""
    tables = [p for p in pieces if isinstance(p, pa.Table) and p.num_columns]
    others = [p for p in pieces if isinstance(p, pd.DataFrame)]
    if len(tables) < 2 and not (tables and tables[0].num_rows > 1):
        return [*tables, *others]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return [*tables, *others]
    if "run_id" in table.column_names:
        table = table.take(pc.sort_indices(table, sort_keys=[("run_id", "ascending")]))
    return [table, *others]


def _read(path: Path, columns: list[str] | None, skip_corrupt: bool, *,
          vanished: bool = False, run_ids: frozenset[str] | None = None) -> pa.Table | None:
    """The file's table (only `columns` where given), or None where skipped or gone
    (`vanished`: gone raises _Vanished). `run_ids`: only the row groups whose run_id range
    holds one of them (compacted files are sorted by run_id, in row groups of
    COMPACTED_ROW_GROUP rows: the images of a few runs without reading all)."""
    try:
        with pq.ParquetFile(path) as parquet:
            names = parquet.schema_arrow.names
            missing = [c for c in columns or () if c not in names]
            if missing:
                _corrupt(path, f"no {missing[0]} column (not a vaebench results file)",
                         skip_corrupt)
                return None
            # threads pay for themselves on compacted files only (one run: 1.5x slower)
            threads = path.name.startswith(COMPACTED_PREFIX)
            if run_ids is not None and "run_id" in names:
                groups = _row_groups_of(parquet, names.index("run_id"), sorted(run_ids))
                return parquet.read_row_groups(groups, columns=columns, use_threads=threads)
            return parquet.read(columns=columns, use_threads=threads)
    except FileNotFoundError:  # removed between listing and reading (replaced curves)
        if vanished:
            raise _Vanished(path) from None
        return None
    except (pa.ArrowException, OSError, ValueError) as err:
        _corrupt(path, _one_line(err), skip_corrupt)
        return None


def _row_groups_of(parquet: pq.ParquetFile, column: int, wanted: list[str]) -> list[int]:
    """The row groups that may hold a run_id of `wanted` (sorted): those without min/max
    statistics of the column, or whose [min, max] contains one."""
    groups = []
    for index in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(index).column(column).statistics
        if stats is None or not stats.has_min_max:
            groups.append(index)
            continue
        at = bisect.bisect_left(wanted, stats.min)
        if at < len(wanted) and wanted[at] <= stats.max:
            groups.append(index)
    return groups


def _corrupt(path: Path, reason: str, skip_corrupt: bool) -> None:
    if not skip_corrupt:
        raise BenchError(
            f"corrupt results file {path}: {reason}; move it away or pass --skip-corrupt"
        )
    warnings.warn(f"skipping corrupt results file {path}: {reason}", stacklevel=2)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas, keeping list columns as Python lists (not numpy arrays)."""
    frame = table.to_pandas()
    for name, field in zip(table.column_names, table.schema, strict=True):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            frame[name] = pd.Series(table.column(name).to_pylist(), index=frame.index,
                                    dtype=object)
    return frame


def _check_versions(path: Path, versions: list[Any]) -> int:
    """The file's schema version (the oldest of its rows); newer than ours is an error."""
    known = [int(v) for v in versions if v is not None and not _isnan(v)]
    if not known:
        return SCHEMA_VERSION
    if max(known) > SCHEMA_VERSION:
        raise BenchError(
            f"results file {path} has schema version {max(known)}, newer than this vaebench "
            f"understands ({SCHEMA_VERSION}): it was written by a newer vaebench; upgrade "
            "vaebench to read it"
        )
    return min(known)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _migrate(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    version = _check_versions(path, frame["schema_version"].tolist())
    for target in range(version + 1, SCHEMA_VERSION + 1):
        if target not in _MIGRATIONS:
            raise BenchError(
                f"results file {path} has schema version {version} and no migration to "
                f"version {target} exists"
            )
        frame = _MIGRATIONS[target](frame)
        frame["schema_version"] = target
    return frame
