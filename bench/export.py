"""Export stored runs to the trackers users already look at: TensorBoard and MLflow.

    export_store(results, TensorBoardExporter(Path("tb")))        -> ExportSummary
    export_store(results, MlflowExporter("sqlite:///mlflow.db"), suites=["bench"],
                 filters=["objective=iwae", "seed=0"])
    export_each(results, [exporter])  -> the callback `vaebench run --export` gives run_suite

Everything comes from the results store (`bench.store.load_runs`, `load_curves`,
`load_samples`) and the report directory beside it: a store copied from a cluster exports
from a laptop, and an export never trains or re-evaluates anything. Each vaebench run becomes
one tracker run, named `<suite>/<variant>/seed<N>`, with

* tags: run_id, suite, variant, seed, budget, protocol, status, config_hash, git commit (the
  row's sys_git_commit), and the error of a failed run (MLflow: as `vaebench.<tag>`, the
  commit also as mlflow.source.git.commit; the MLflow run's status is FINISHED for a
  finished run, FAILED for a failed or diverged one, its start and end the row's times);
* the config (the row's cfg_* columns, unset ones left out) as hyperparameters: MLflow
  params; TensorBoard hparams (the tags above ride along as `vaebench/<tag>` hparams, so the
  HParams dashboard can filter by budget or status);
* the per-epoch curves (one stored row per epoch) as scalars `epoch/<column>` at step =
  epoch, finite values only (a diverged epoch's inf is left out: its status tag says it);
* the final metrics (metric_* columns, finite numbers only) as `final/<metric>`, at the
  last epoch's step (0 without curves);
* one image per stored sample kind (prior, original, reconstruction, and a family's own
  kinds), the run's images tiled 8 to a row, 1-pixel separators in a colour no grayscale
  image has, pixel = round(255 * stored value): TensorBoard images `samples/<kind>`, MLflow
  artifacts `samples/<kind>.png`;
* MLflow only: the suite's report page and the files it links (its PNGs) as artifacts
  under `report/`, as they are at export time. TensorBoard has no place for a web page: its
  runs carry the sample grids above and the scalars the report plots are drawn from.

Exporting again creates no duplicates. Each export records a fingerprint of the stored row
(status, error, start and end time, final metrics): a run whose fingerprint is already there
is left alone; a run whose stored row changed since (it failed and was rerun, or --force
trained it again) is exported afresh and replaces the stale copy, so a tracker never shows an
outdated outcome. TensorBoard: one directory per run, `DIR/<suite>/<variant>/seed<N>-<run_id>`,
written in a hidden temporary directory and renamed into place (a reader never sees half a
run; an interrupted export leaves nothing TensorBoard shows), a marker file in it holding the
fingerprint. MLflow: a run is found by its `vaebench.run_id` tag in the experiment (default
`vaebench/<suite>`, one per suite so the compare view lines up one config); the
`vaebench.fingerprint` tag is set last, so a run an interrupted export left half-written has
none and is replaced; a stale run is deleted (MLflow keeps it in its trash until `mlflow gc`)
and logged again. `force=True` re-exports every selected run (e.g. after regenerating the
report).

The tracker libraries are optional extras, imported only here and only when used:
`pip install 'vaebench[tensorboard]'` (tensorboard, which writes and reads event files with
numpy alone) and `pip install 'vaebench[mlflow]'` (mlflow-skinny, the client: a tracking
server, or with the full `mlflow` package an sqlite:/// store; MLflow 3 keeps its file store
behind MLFLOW_ALLOW_FILE_STORE=true). Without the extra, a one-line error names it. An
http(s) tracking server is connected to first (`probe_server`): one that cannot be reached is
one line naming its URI within seconds, where MLflow's client would retry for minutes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import html
import importlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import pandas as pd

from bench import images, store
from bench.claims import pid_alive
from bench.config import _INT_FIELDS  # the config's int fields, as it coerces them
from bench.errors import BenchError, make_directory
from bench.report.values import _py  # numpy values unwrapped, NaN/NA/NaT -> None
from bench.suite import _one_line, filter_matches, parse_filters

GRID_COLUMNS = 8  # images per row of a sample grid (bench.images draws it)
MARKER = "vaebench-export.json"  # TensorBoard: the fingerprint of the row a run directory holds
TMP_DIR = ".vaebench-tmp"  # TensorBoard: run directories being written, renamed into place
RUN_ID_TAG = "vaebench.run_id"  # MLflow: how a vaebench run's tracker run is found again
FINGERPRINT_TAG = "vaebench.fingerprint"  # MLflow: set last; its absence = a partial export
#: keys a --filter may use besides the config's: compared as text with the row's own columns
TEXT_FILTER_KEYS = ("name", "variant", "status", "budget", "run_id")
_CURVE_SKIP = ("run_id", "suite", "schema_version", "epoch")


# ------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class RunExport:
    """What one stored run exports as: identity, tags, hyperparameters, scalars, images."""

    run_id: str
    suite: str
    name: str  # <suite>/<variant>/seed<N>
    variant: str
    seed: int | None
    status: str  # finished / failed / diverged
    tags: dict[str, str]  # run_id, suite, variant, seed, budget, protocol, status, ...
    params: dict[str, Any]  # config key -> bool, int, float, str or list (unset left out)
    curves: dict[str, list[tuple[int, float]]]  # epoch/<column> -> (epoch, value), finite
    metrics: dict[str, float]  # final/<metric> -> value, finite numbers
    images: dict[str, np.ndarray]  # sample kind -> (H, W, 3) uint8 grid
    start_time: float | None  # seconds since the epoch (sys_start_time), where stored
    end_time: float | None
    report_files: tuple[tuple[Path, str], ...]  # (file, its path under report/)
    fingerprint: str  # of the stored row: see the module docstring

    @property
    def final_step(self) -> int:
        """The step the final metrics sit at: the last epoch with curves, else 0."""
        return max((step for points in self.curves.values() for step, _ in points), default=0)


def run_export(row: Mapping[str, Any], curves: pd.DataFrame | None = None,
               samples: pd.DataFrame | None = None,
               report_files: Sequence[tuple[Path, str]] = ()) -> RunExport:
    """The export of one stored row, with its curves and samples (frames of this run only)."""
    row = {key: value for key, value in ((k, _py(v)) for k, v in row.items())
           if value is not None}
    run_id, suite = str(row["run_id"]), str(row["suite"])
    variant = str(row.get("variant", run_id))
    params = _config_params(row)
    seed = params.get("seed")
    seed = int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None
    status = str(row.get("status", "failed"))
    protocol = row.get("protocol", 1)  # rows of protocol 1 had no column
    tags = {
        "run_id": run_id, "suite": suite, "variant": variant,
        "seed": "" if seed is None else str(seed), "budget": str(row.get("budget", "")),
        "protocol": str(int(protocol)) if isinstance(protocol, (int, float)) else str(protocol),
        "status": status, "config_hash": str(row.get("config_hash", "")),
        "git_commit": str(row.get("sys_git_commit", "")),
    }
    if row.get("error"):
        tags["error"] = _one_line(str(row["error"]))[:500]
    metrics = {f"final/{key[len('metric_'):]}": float(value) for key, value in row.items()
               if key.startswith("metric_") and _finite_number(value)}
    # what tells one landing of the run from another (a rerun after a failure, --force)
    identity = {"status": status, "error": row.get("error"), "metrics": metrics,
                "start": row.get("sys_start_time"), "end": row.get("sys_end_time")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return RunExport(
        run_id=run_id, suite=suite, name=f"{suite}/{variant}/seed{'?' if seed is None else seed}",
        variant=variant, seed=seed, status=status, tags=tags, params=params,
        curves=_curve_points(curves), metrics=metrics, images=_sample_grids(samples),
        start_time=_seconds(row.get("sys_start_time")),
        end_time=_seconds(row.get("sys_end_time")), report_files=tuple(report_files),
        fingerprint=digest.hexdigest()[:16])


def _config_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's set cfg_* values by config key, as plain Python (unset ones left out)."""
    params = {}
    for column, value in row.items():
        value = _py(value)
        if column.startswith("cfg_") and value is not None:
            params[column[len("cfg_"):]] = _config_value(column[len("cfg_"):], value)
    return params


def _config_value(key: str, value: Any) -> Any:
    """An int field read back as a float (a column other rows leave null) is an int again."""
    if key in _INT_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _finite_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _seconds(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _curve_points(curves: pd.DataFrame | None) -> dict[str, list[tuple[int, float]]]:
    if curves is None or curves.empty or "epoch" not in curves.columns:
        return {}
    curves = curves.sort_values("epoch", kind="stable")
    out: dict[str, list[tuple[int, float]]] = {}
    epochs = [int(e) for e in curves["epoch"]]
    for column in curves.columns:
        if column in _CURVE_SKIP:
            continue
        points = [(epoch, float(v)) for epoch, v in zip(epochs, map(_py, curves[column]),
                                                          strict=True)
                  if _finite_number(v)]
        if points:
            out[f"epoch/{column}"] = points
    return out


def _sample_grids(samples: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """kind -> the run's images of that kind tiled into one RGB grid, in stored order."""
    if samples is None or samples.empty:
        return {}
    samples = samples.sort_values("index", kind="stable")
    grids = {}
    for kind in dict.fromkeys(samples["kind"]):
        rows = samples[samples["kind"] == kind]
        tiles = [np.asarray(p, dtype=float).reshape(int(h), int(w))
                 for p, h, w in zip(rows["pixels"], rows["height"], rows["width"], strict=True)]
        if tiles and len({tile.shape for tile in tiles}) == 1:
            grids[str(kind)] = images.grid_rgb(np.stack(tiles), GRID_COLUMNS)
    return grids


# ----------------------------------------------------------------------- reading the store
def report_files(report_dir: Path | None, suite: str) -> list[tuple[Path, str]]:
    """The suite's report page in `report_dir` and the local files it links (its PNGs),
    each with its path relative to the report directory; none where there is no page.

    The page is `<suite>.html` (with `<suite>.md` beside it; `suite-<suite>.html` for a suite
    named index or report), as `vaebench report` writes it (bench.report.pages); which images
    belong to it is read from the page itself, so the report's folders are its own business.
    A single-file report (report.html, every suite inline) is not a suite's page."""
    if report_dir is None:
        return []
    stem = f"suite-{suite}" if suite in ("index", "report") else suite
    page = report_dir / f"{stem}.html"
    if not page.is_file():
        return []
    root = report_dir.resolve()
    found = dict.fromkeys(p.resolve() for p in (page, page.with_suffix(".md")) if p.is_file())
    for link in re.findall(r'(?:src|href)="([^"#?:]+)"', page.read_text(errors="replace")):
        target = (page.parent / html.unescape(link)).resolve()
        if target.suffix != ".html" and target.is_file() and root in target.parents:
            found[target] = None
    return [(path, path.relative_to(root).as_posix()) for path in found]


def load_exports(results: Path, *, suites: Sequence[str] | None = None,
                 filters: Sequence[str] = (), skip_corrupt: bool = False,
                 report_dir: Path | None = None) -> tuple[list[RunExport], int]:
    """(the selected runs' exports, the number of runs stored in the suites looked at).

    `suites`: these (default: every suite stored); `filters`: "KEY=VALUE" as `vaebench run
    --filter` reads them (a config key, params.<name>, or name / variant / status / budget /
    run_id compared as text). A run_id stored twice exports its last row."""
    tests = parse_filters(filters, TEXT_FILTER_KEYS)
    if suites:
        by_suite = {name: store.load_runs(results, suite=store.check_suite_name(name),
                                          skip_corrupt=skip_corrupt)
                    for name in dict.fromkeys(suites)}
    else:
        every = store.load_runs(results, skip_corrupt=skip_corrupt)
        by_suite = ({str(name): group for name, group in every.groupby("suite", sort=True)}
                    if not every.empty else {})
    exports, stored = [], 0
    for suite, runs in by_suite.items():
        if runs.empty:
            continue
        runs = runs.drop_duplicates("run_id", keep="last")
        stored += len(runs)
        rows = [r for r in runs.to_dict("records") if filter_matches(_filter_values(r), tests)]
        if not rows:
            continue
        wanted = {r["run_id"] for r in rows}
        curves = _by_run(store.load_curves(results, suite=suite, skip_corrupt=skip_corrupt),
                         wanted)
        samples = _by_run(store.load_samples(results, suite=suite, skip_corrupt=skip_corrupt),
                          wanted)
        files = report_files(report_dir, suite)
        exports += [run_export(r, curves.get(r["run_id"]), samples.get(r["run_id"]), files)
                    for r in rows]
    return exports, stored


def _filter_values(row: Mapping[str, Any]) -> dict[str, Any]:
    values = _config_params(row)
    for key in ("status", "budget", "run_id"):
        if _py(row.get(key)) is not None:
            values[key] = row[key]
    values["name"] = values["variant"] = row.get("variant")
    return values


def _by_run(frame: pd.DataFrame, wanted: set[str]) -> dict[str, pd.DataFrame]:
    if frame.empty or "run_id" not in frame.columns:
        return {}
    frame = frame[frame["run_id"].isin(wanted)]
    return {str(run_id): group for run_id, group in frame.groupby("run_id", sort=False)}


def load_stored_run(results: Path, row: Mapping[str, Any],
                    report_dir: Path | None = None) -> RunExport:
    """The export of one run just stored (`vaebench run --export`): its row, curves and
    samples read back from its own files in the store (not the whole suite's), so what is
    exported is what was stored."""
    suite, run_id = str(row["suite"]), str(row["run_id"])
    run_file = store.run_path(results, suite, run_id)
    if not run_file.is_file():  # compacted in the meantime: read the suite
        exports, _ = load_exports(results, suites=[suite], filters=[f"run_id={run_id}"],
                                  report_dir=report_dir)
        if not exports:
            raise BenchError(f"run {run_id} of suite {suite} is not in the store {results}")
        return exports[0]
    stored = store.load_runs(run_file).to_dict("records")[-1]
    side = {}
    for kind, path, load in (("curves", store.curves_path(results, suite, run_id),
                              store.load_curves),
                             ("samples", store.samples_path(results, suite, run_id),
                              store.load_samples)):
        side[kind] = load(path) if path.is_file() else None
    return run_export(stored, side["curves"], side["samples"], report_files(report_dir, suite))


# ---------------------------------------------------------------------------- trackers
class Exporter(Protocol):
    tracker: str  # "tensorboard" or "mlflow"
    target: str  # where it writes, for messages

    def export(self, run: RunExport, *, force: bool = False) -> str:
        """Write one run: "new", "updated" (a stale copy replaced) or "unchanged"."""
        ...


def _require(module: str, tracker: str) -> ModuleType:
    """Import a tracker library of an optional extra, or one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchError(f"export to {tracker} needs the {tracker} extra: "
                         f"pip install 'vaebench[{tracker}]'") from None


class TensorBoardExporter:
    """Event files, one directory per run: DIR/<suite>/<variant>/seed<N>-<run_id>."""

    tracker = "tensorboard"

    def __init__(self, directory: str | Path) -> None:
        _require("tensorboard", "tensorboard")
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._hparams_pb, self._record_writer = summary_v2.hparams_pb, RecordWriter
        self.directory = Path(directory)
        self.target = str(self.directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise BenchError(f"TensorBoard log directory {self.directory} is not a directory")

    def run_dir(self, run: RunExport) -> Path:
        return (self.directory / _path_part(run.suite) / _path_part(run.variant)
                / f"seed{run.seed if run.seed is not None else 'none'}-{run.run_id}")

    def export(self, run: RunExport, *, force: bool = False) -> str:
        final = self.run_dir(run)
        previous = _marker(final)
        if previous == run.fingerprint and not force:
            return "unchanged"
        tmp_root = make_directory(self.directory / TMP_DIR, "TensorBoard log directory")
        _clean_leftovers(tmp_root)
        work = tmp_root / f"{os.getpid()}-{uuid.uuid4().hex}"
        work.mkdir()
        try:
            self._write(run, work)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # the stale copy goes aside, then away
                old = tmp_root / f"{os.getpid()}-{uuid.uuid4().hex}-old"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(work, final)
        except OSError as err:
            raise BenchError(f"cannot write TensorBoard run {final}: "
                             f"{err.strerror or err}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):  # only when empty: another export may be on
                tmp_root.rmdir()
        return "new" if previous is None else "updated"

    def _write(self, run: RunExport, work: Path) -> None:
        start = run.start_time if run.start_time is not None else 0.0
        # the name holds "tfevents" (what TensorBoard reads) and the run's own start time
        path = work / f"events.out.tfevents.{int(start):010d}.vaebench.{run.run_id}"
        with open(path, "wb") as handle:
            writer = self._record_writer(handle)
            Event, Summary = self._event, self._summary

            def write(summary, step: int, wall_time: float) -> None:
                writer.write(Event(wall_time=wall_time, step=step,
                                   summary=summary).SerializeToString())

            writer.write(Event(wall_time=start, file_version="brain.Event:2")
                         .SerializeToString())
            write(self._hparams_pb(_hparams(run), trial_id=run.name, start_time_secs=start),
                  0, start)
            wall = dict(run.curves.get("epoch/wall_seconds", ()))
            for tag, points in run.curves.items():
                for step, value in points:
                    write(Summary(value=[Summary.Value(tag=tag, simple_value=value)]), step,
                          start + wall.get(step, 0.0))
            end = run.end_time if run.end_time is not None else start
            for tag, value in run.metrics.items():
                write(Summary(value=[Summary.Value(tag=tag, simple_value=value)]),
                      run.final_step, end)
            for kind, image in run.images.items():
                picture = Summary.Image(height=image.shape[0], width=image.shape[1],
                                        colorspace=3, encoded_image_string=images.png_bytes(image))
                write(Summary(value=[Summary.Value(tag=f"samples/{kind}", image=picture)]),
                      run.final_step, end)
            handle.flush()
            os.fsync(handle.fileno())
        (work / MARKER).write_text(json.dumps({"run_id": run.run_id, "name": run.name,
                                               "fingerprint": run.fingerprint}) + "\n")


def _hparams(run: RunExport) -> dict[str, bool | float | str]:
    """The config as TensorBoard hparams (bool, number or text; a list as its JSON) and the
    run's tags as vaebench/<tag> text hparams."""
    values: dict[str, bool | float | str] = {}
    for key, value in run.params.items():
        if isinstance(value, (bool, str, int, float)):
            values[key] = value
        else:
            values[key] = json.dumps(value)
    values.update({f"vaebench/{key}": value for key, value in run.tags.items()})
    return values


def _path_part(text: str) -> str:
    """A run's suite or variant name as one directory name (no separators, not hidden)."""
    part = re.sub(r"[/\\\x00]", "_", text) or "_"
    return "_" + part if part.startswith(".") else part


def _marker(run_dir: Path) -> str | None:
    """The fingerprint a run directory holds, None where there is no complete run there."""
    try:
        data = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not any("tfevents" in p.name for p in run_dir.iterdir()):
        return None
    return data.get("fingerprint") if isinstance(data, dict) else None


def _clean_leftovers(tmp_root: Path) -> None:
    """Remove run directories an export that is no longer running left half-written."""
    for entry in tmp_root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


class MlflowExporter:
    """One MLflow run per vaebench run in the experiment `experiment` (default: one per suite,
    `vaebench/<suite>`), found again by its vaebench.run_id tag."""

    tracker = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None) -> None:
        _require("mlflow", "mlflow")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._error = MlflowException
        self.experiment = experiment
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.target = str(self.client.tracking_uri)
        except (MlflowException, ValueError) as err:  # ValueError: e.g. http://[::1
            raise BenchError(f"mlflow tracking URI {tracking_uri or '(default)'}: "
                             f"{store._one_line(err)}") from None
        probe_server(self.target)  # before any run is trained or exported
        self._experiments: dict[str, str] = {}  # name -> id
        self._index: dict[str, dict[str, list[Any]]] = {}  # experiment id -> run_id -> runs

    def experiment_name(self, run: RunExport) -> str:
        return self.experiment or f"vaebench/{run.suite}"

    def export(self, run: RunExport, *, force: bool = False) -> str:
        probe_server(self.target)  # a server gone since: seconds, not MLflow's retries
        try:
            return self._export(run, force)
        except self._error as err:
            raise BenchError(f"mlflow ({self.target}): {store._one_line(err)}") from None
        except OSError as err:  # a local store or an artifact's temporary file
            raise BenchError(f"mlflow ({self.target}): {err.strerror or err}"
                             f"{f': {err.filename}' if err.filename else ''}") from None

    def _export(self, run: RunExport, force: bool) -> str:
        experiment_id = self._experiment_id(self.experiment_name(run))
        index = self._runs(experiment_id)
        existing = index.get(run.run_id, [])
        if (not force and len(existing) == 1
                and existing[0].data.tags.get(FINGERPRINT_TAG) == run.fingerprint):
            return "unchanged"
        for stale in existing:  # changed since, half-written, or a duplicate: replaced
            self.client.delete_run(stale.info.run_id)
        index[run.run_id] = [self._log(run, experiment_id)]
        return "updated" if existing else "new"

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            if found is not None and found.lifecycle_stage == "deleted":
                raise BenchError(f"mlflow experiment {name!r} is deleted: restore it "
                                 "(mlflow experiments restore) or give --experiment")
            self._experiments[name] = (found.experiment_id if found is not None
                                       else self.client.create_experiment(name))
        return self._experiments[name]

    def _runs(self, experiment_id: str) -> dict[str, list[Any]]:
        """run_id tag -> the active MLflow runs carrying it, read once per experiment."""
        if experiment_id not in self._index:
            index: dict[str, list[Any]] = {}
            token = None
            while True:
                page = self.client.search_runs([experiment_id], max_results=1000,
                                               page_token=token)
                for found in page:
                    tag = found.data.tags.get(RUN_ID_TAG)
                    if tag:
                        index.setdefault(tag, []).append(found)
                token = page.token
                if not token:
                    break
            self._index[experiment_id] = index
        return self._index[experiment_id]

    def _log(self, run: RunExport, experiment_id: str) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        start_ms = int(run.start_time * 1000) if run.start_time is not None else None
        tags = {f"vaebench.{key}": value for key, value in run.tags.items()}
        if run.tags["git_commit"]:
            tags["mlflow.source.git.commit"] = run.tags["git_commit"]
        created = self.client.create_run(experiment_id, start_time=start_ms, tags=tags,
                                         run_name=run.name)
        mlflow_id = created.info.run_id
        base = start_ms or 0
        wall = dict(run.curves.get("epoch/wall_seconds", ()))
        metrics = [Metric(tag, value, base + int(wall.get(step, 0.0) * 1000), step)
                   for tag, points in run.curves.items() for step, value in points]
        end_ms = int(run.end_time * 1000) if run.end_time is not None else base
        metrics += [Metric(tag, value, end_ms, run.final_step)
                    for tag, value in run.metrics.items()]
        params = [Param(key, _param_text(value)) for key, value in run.params.items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(mlflow_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(mlflow_id, metrics=metrics[i:i + 1000])
        with tempfile.TemporaryDirectory(prefix="vaebench-mlflow-") as tmp:
            if run.images:
                folder = Path(tmp) / "samples"
                folder.mkdir()
                for kind, image in run.images.items():
                    (folder / f"{_path_part(kind)}.png").write_bytes(images.png_bytes(image))
                self.client.log_artifacts(mlflow_id, str(folder), "samples")
        for path, relative in run.report_files:
            parent = Path("report", relative).parent.as_posix()
            self.client.log_artifact(mlflow_id, str(path), parent)
        self.client.log_batch(mlflow_id, tags=[RunTag(FINGERPRINT_TAG, run.fingerprint)])
        self.client.set_terminated(mlflow_id, "FINISHED" if run.status == "finished"
                                   else "FAILED",
                                   end_time=end_ms if run.end_time is not None else None)
        return self.client.get_run(mlflow_id)


PROBE_TIMEOUT = 5.0  # seconds to connect to a tracking server before it counts as unreachable


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Connect to the server of an http(s) tracking URI (or to the proxy the environment
    sends it through), or one line naming the URI: MLflow's own client retries a refused or
    timed-out connection with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7: "~ 4
    minutes" by mlflow/environment_variables.py of MLflow 3.18) before it says so, for each
    request. Other URIs (a local store) pass."""
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme not in ("http", "https"):
            return
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:  # a port that is not a number in 0-65535, a bad [IPv6] host
        raise BenchError(f"mlflow tracking URI {uri}: {err}") from None
    if not host:
        raise BenchError(f"mlflow tracking URI {uri}: no host")
    via = ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):  # requests would connect there
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        with contextlib.suppress(ValueError):
            if proxied.hostname:
                host, port = proxied.hostname, proxied.port or 80
                via = f" through the proxy {host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise BenchError(f"mlflow tracking server {uri} is unreachable{via}: {reason}") \
            from None


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


#: tracker name -> how to make its exporter from the command line's target (a directory for
#: tensorboard, a tracking URI for mlflow) and an experiment name (mlflow only)
EXPORTERS: dict[str, Callable[[str | None, str | None], Exporter]] = {
    "tensorboard": lambda target, _experiment: TensorBoardExporter(_need_dir(target)),
    "mlflow": lambda target, experiment: MlflowExporter(target, experiment),
}


def _need_dir(target: str | None) -> str:
    if not target:
        raise BenchError("export to tensorboard needs a log directory: tensorboard=DIR")
    return target


def exporter_from_spec(spec: str) -> Exporter:
    """`vaebench run --export`'s value: mlflow, mlflow=URI or tensorboard=DIR."""
    tracker, _, target = spec.partition("=")
    if tracker.strip() not in EXPORTERS:
        raise BenchError(f"--export {spec!r}: expected mlflow, mlflow=URI or tensorboard=DIR")
    return EXPORTERS[tracker.strip()](target.strip() or None, None)


# --------------------------------------------------------------------------- the drivers
@dataclass
class ExportSummary:
    stored: int = 0  # runs stored in the suites looked at
    selected: int = 0  # of which --suite/--filter selected
    outcomes: dict[str, int] = field(default_factory=dict)  # new / updated / unchanged

    def line(self, exporter: Exporter) -> str:
        counts = ", ".join(f"{self.outcomes.get(k, 0)} {k}" for k in ("new", "updated",
                                                                       "unchanged"))
        return (f"exported {self.selected} of {self.stored} stored runs to {exporter.tracker} "
                f"{exporter.target}: {counts}")


def export_store(results: str | Path, exporter: Exporter, *, suites: Sequence[str] | None = None,
                 filters: Sequence[str] = (), skip_corrupt: bool = False, force: bool = False,
                 report_dir: str | Path | None = None) -> ExportSummary:
    """Export the selected stored runs (see `load_exports`) with `exporter`; runs already
    exported with the same stored row are left as they are unless `force`. `report_dir`:
    where the report is (default RESULTS/report)."""
    results = store.results_dir(results)
    if not results.exists():
        raise BenchError(f"results directory {results} does not exist")
    report = Path(report_dir) if report_dir is not None else results / "report"
    runs, stored = load_exports(results, suites=suites, filters=filters,
                                skip_corrupt=skip_corrupt, report_dir=report)
    if not stored:
        where = f"suite {', '.join(suites)}" if suites else "any suite"
        raise BenchError(f"no stored runs of {where} in {results}")
    if not runs:
        raise BenchError(f"none of the {stored} stored runs matches --filter "
                         f"{' '.join(filters)}")
    summary = ExportSummary(stored=stored, selected=len(runs))
    for run in runs:
        outcome = exporter.export(run, force=force)
        summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
    return summary


def export_each(results: str | Path, exporters: Sequence[Exporter],
                report_dir: str | Path | None = None) -> Callable[[dict], None]:
    """run_suite's `on_stored` for `vaebench run --export`: each stored run goes to the
    trackers at once. A failed export is one line on stderr and the grid goes on: the run is
    stored, and a later `vaebench export` sends it. A tracker that failed once gets no more
    runs of this grid. An MLflow server that cannot be reached fails in seconds
    (`probe_server`: when the exporter is made, before any run trains, and before each run);
    one that answers with errors costs MLflow's own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    default 7: minutes) once, not for every run."""
    results = Path(results)
    report = Path(report_dir) if report_dir is not None else results / "report"
    failed: set[int] = set()  # the exporters (by position) that gave up

    def export(row: dict) -> None:
        live = [(i, e) for i, e in enumerate(exporters) if i not in failed]
        if not live:
            return
        try:
            run = load_stored_run(results, row, report)
        except Exception as err:  # the run is stored; the export's trouble must not lose it
            _warn(row, "the trackers", err, "")
            return
        for i, exporter in live:
            try:
                exporter.export(run)
            except Exception as err:
                failed.add(i)
                _warn(row, f"{exporter.tracker} {exporter.target}", err,
                      "; the rest of this grid is not sent there either")

    return export


def _warn(row: Mapping[str, Any], where: str, err: BaseException, more: str) -> None:
    print(f"vaebench: warning: run {row.get('run_id')} is stored but could not be exported to "
          f"{where}: {store._one_line(err)}{more}; `vaebench export` "
          "sends what is missing later", file=sys.stderr, flush=True)
