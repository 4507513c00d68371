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

Writes are crash- and race-safe: each file is written to a hidden temp file in its final
directory, fsynced, renamed over the final name and the directory fsynced, so a reader sees
the old file or the new one, never half of one. The curves land before the run row, so a
run file never exists without its curves. A per-run lock file (`.<run_id>.lock`, flock)
makes the check "is there a finished row already?" and the rename one step between
processes: a finished result is never replaced unless asked (`replace_finished=True`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
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
        if not replace_finished and stored == "finished":
            return run_file
        if stored is None and run_file.exists():  # unreadable: keep it aside, never destroy it
            os.replace(run_file, run_file.with_name(run_file.name + ".corrupt"))
        for side_file, side_table in side_tables.items():
            if side_table is not None:
                side_file.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(side_table, side_file)
            elif side_file.exists():  # the replaced row's would be mistaken for ours
                side_file.unlink()
                _fsync_dir(side_file.parent)
        _write_atomic(run_table, run_file)
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


def _write_atomic(table: pa.Table, final: Path) -> None:
    """Write `table` so that `final` is either absent, the old file or the complete new one."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
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
def finished_run_ids(results: str | Path, suite: str, *, skip_corrupt: bool = False) -> set[str]:
    """run_ids of `suite` with a finished row (reads only the run_id and status columns)."""
    done: set[str] = set()
    for path in _files(Path(results), RUNS, suite):
        table = _read(path, ["run_id", "status", "schema_version"], skip_corrupt)
        if table is None:
            continue
        _check_versions(path, table.column("schema_version").to_pylist())
        for run_id, status in zip(table.column("run_id").to_pylist(),
                                  table.column("status").to_pylist(), strict=True):
            if status == "finished":
                done.add(run_id)
    return done


def load_runs(
    results: str | Path | None = None, *, suite: str | None = None, skip_corrupt: bool = False
) -> pd.DataFrame:
    """Every stored run row (of one suite, or all) as one DataFrame, columns united.

    `results` may also be a single .parquet run file. A corrupt file raises `BenchError`
    naming it unless `skip_corrupt`, which skips it with a warning.
    """
    return _load(results, RUNS, suite, skip_corrupt)


def load_curves(
    results: str | Path | None = None, *, suite: str | None = None, skip_corrupt: bool = False
) -> pd.DataFrame:
    """Every stored per-epoch row (one per run and epoch) as one DataFrame, with run_id."""
    return _load(results, CURVES, suite, skip_corrupt)


def load_samples(
    results: str | Path | None = None, *, suite: str | None = None, skip_corrupt: bool = False
) -> pd.DataFrame:
    """Stored sample images: run_id, suite, kind (prior / original / reconstruction), index,
    height, width, pixels (row-major floats in [0, 1])."""
    return _load(results, SAMPLES, suite, skip_corrupt)


def _load(results: str | Path | None, kind: str, suite: str | None,
          skip_corrupt: bool) -> pd.DataFrame:
    root = results_dir(results)
    frames = []
    for path in _files(root, kind, suite):
        table = _read(path, None, skip_corrupt)
        if table is None:
            continue
        frame = _to_pandas(table)
        if "schema_version" not in frame.columns:
            _corrupt(path, "no schema_version column (not a vaebench results file)",
                     skip_corrupt)
            continue
        if "suite" not in frame.columns and path.parent.name.startswith("suite="):
            frame.insert(0, "suite", path.parent.name[len("suite="):])
        frame = _migrate(path, frame)
        if suite is not None and root.is_file():
            frame = frame[frame["suite"] == suite]
        frames.append(frame)
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=_EMPTY_COLUMNS[kind])
    with warnings.catch_warnings():  # all-NA columns of some files: the result is what we want
        warnings.simplefilter("ignore", FutureWarning)
        return pd.concat(frames, ignore_index=True, sort=False)


def _files(root: Path, kind: str, suite: str | None) -> list[Path]:
    """The Parquet files to read: one given file, or those of one suite or all suites."""
    if root.is_file():
        return [root]
    if root.suffix == ".parquet" and not root.exists():
        raise BenchError(f"results file {root} does not exist")
    if suite is not None:
        directories = [_suite_dir(root, kind, suite)]
    else:
        base = root / kind
        directories = sorted(p for p in base.glob("suite=*") if p.is_dir()) if base.is_dir() \
            else []
    return sorted(
        p for d in directories if d.is_dir() for p in d.glob("*.parquet")
        if not p.name.startswith((".", "_")) and p.is_file()
    )


def _read(path: Path, columns: list[str] | None, skip_corrupt: bool) -> pa.Table | None:
    """The file's table (only `columns` where given), or None where skipped or gone."""
    try:
        with pq.ParquetFile(path) as parquet:
            names = parquet.schema_arrow.names
            missing = [c for c in columns or () if c not in names]
            if missing:
                _corrupt(path, f"no {missing[0]} column (not a vaebench results file)",
                         skip_corrupt)
                return None
            return parquet.read(columns=columns)
    except FileNotFoundError:  # removed between listing and reading (replaced curves)
        return None
    except (pa.ArrowException, OSError, ValueError) as err:
        _corrupt(path, _one_line(err), skip_corrupt)
        return None


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
