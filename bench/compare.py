"""Compare two result sets (a baseline and a candidate), asv-style: one verdict per variant
and metric, each metric with its own direction and practical threshold.

Classification (`compare`) is pure: two run DataFrames (as `bench.store.load_runs` returns
them) in, a list of `Verdict`s out. Rendering (`render_markdown`, `render_json`) and file
handling (`load_side`, `run_compare`) are separate.

The metrics and their rules come from `bench.metrics.catalog`: every stored metric whose
record has a direction (higher or lower is better) is judged, with that record's practical
threshold; a metric without a direction (the rate, a config echo) is recorded but not judged.

How a verdict is reached, per (suite, variant) and metric:

* Only rows with `status == "finished"` count. Runs are matched by suite and `variant_key`:
  the canonical JSON (sorted keys) of the `cfg_*` columns except `cfg_seed`, so the seeds of
  one config are aggregated (mean, std with ddof=1, n). Null config values are left out of
  the key (a column absent from older results reads as its default, which for such fields
  is None). Integral floats are written as ints, so `1000` and `1000.0` (a column that has
  nulls elsewhere in the frame) give the same key.
* A variant on one side only gives one verdict `missing` with metric `"*"`; its note says
  which side lacks it. `missing` is reported but is not a regression.
* A metric absent on both sides (no column, or no finite value for the variant) is skipped:
  it does not apply. Absent on one side only gives `not comparable`.
* Metrics that measure the machine (throughput, memory) need the same single setup on both
  sides: the device (`sys_device_name`) and the execution (`provenance.execution`: the
  step and the estimate compiled or eager, solo or in a stack of N); otherwise `not
  comparable` with note "different setups: X vs Y". A rate (throughput) needs at least
  MIN_TIMED_SECONDS of its wall time (the catalog's `timed_by`) on average on each side;
  otherwise `not comparable`, "timed over T s: too short to judge a speed".
* d = candidate mean - baseline mean, oriented so that positive is better. |d| below the
  threshold (absolute, or a fraction of |baseline mean| for relative metrics) is `unchanged`.
  Otherwise, with >= 2 values on each side, Welch's t-test decides: p < alpha gives
  `improved` / `regressed` by the sign of d, else `unchanged` (note "not significant").
  Zero variance on both sides with different means counts as significant (p reported as 0).
  With fewer than 2 values on a side the threshold alone decides.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench import store
from bench.config import LATER_FIELDS
from bench.errors import BenchError
from bench.metrics import catalog
from bench.metrics.catalog import Metric
from bench.provenance import executions

IMPROVED = "improved"
UNCHANGED = "unchanged"
REGRESSED = "regressed"
MISSING = "missing"
NOT_COMPARABLE = "not comparable"
VERDICTS = (REGRESSED, IMPROVED, UNCHANGED, MISSING, NOT_COMPARABLE)
# a rate measured over less wall time than this (mean per side) is not judged: a smoke run's
# 10 ms of training gave "regressed" and "unchanged" on two reruns of the same code
MIN_TIMED_SECONDS = 1.0

WELCH = "welch t-test"
THRESHOLD_ONLY = "threshold only (fewer than 2 seeds)"


def rules_for(columns: Iterable[str], *, machine: bool = True) -> tuple[Metric, ...]:
    """The catalog records of the judged metrics among `columns` (stored `metric_*` columns,
    patterns instantiated), in catalog order; `machine=False` leaves out the metrics that
    measure the machine. Columns without a record are not judged."""
    order = {m.name: i for i, m in enumerate(catalog.CATALOG)}
    found = []
    for column in columns:
        if not str(column).startswith("metric_") or (record := catalog.find(column)) is None:
            continue
        metric = catalog.lookup(column)
        if metric.judged and (machine or not metric.machine):
            found.append((order[record.name], metric.name, metric))
    return tuple(m for *_, m in sorted(found, key=lambda t: t[:2]))


@dataclass(frozen=True)
class Verdict:
    suite: str
    variant_key: str  # canonical JSON of the config without the seed
    label: str  # the readable `variant` column
    metric: str  # the rule's column, or "*" for a missing variant
    baseline_mean: float
    baseline_std: float
    baseline_n: int
    candidate_mean: float
    candidate_std: float
    candidate_n: int
    delta: float  # candidate - baseline (not oriented)
    verdict: str  # one of VERDICTS
    p_value: float | None
    test: str  # WELCH, THRESHOLD_ONLY, or why no test ran
    note: str


# ------------------------------------------------------------------------ classification
def variant_key(row: pd.Series | dict[str, Any]) -> str:
    """Canonical JSON (sorted keys) of a run's cfg_* values except the seed. Fields added to
    RunConfig later are left out at their default (as in the run_id), so results written
    before a field existed still match."""
    values = {}
    for column, value in dict(row).items():
        if not isinstance(column, str) or not column.startswith("cfg_") or column == "cfg_seed":
            continue
        plain = _plain(value)
        name = column[len("cfg_"):]
        if plain is None or (name in LATER_FIELDS and plain == LATER_FIELDS[name]):
            continue
        values[name] = plain
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


@dataclass
class _Group:
    suite: str
    key: str
    label: str
    rows: pd.DataFrame


def _groups(frame: pd.DataFrame) -> dict[tuple[str, str], _Group]:
    if frame is None or len(frame) == 0 or "status" not in frame.columns:
        return {}
    finished = frame[frame["status"] == "finished"]
    if len(finished) == 0:
        return {}
    keys = variant_keys(finished)
    finished = finished.assign(_variant_key=keys)
    groups: dict[tuple[str, str], _Group] = {}
    for (suite, key), rows in finished.groupby(["suite", "_variant_key"], sort=True):
        labels = rows["variant"].dropna().astype(str) if "variant" in rows.columns else []
        label = sorted(set(labels))[0] if len(labels) else key
        groups[(str(suite), str(key))] = _Group(str(suite), str(key), label, rows)
    return groups


def variant_keys(frame: pd.DataFrame) -> list[str]:
    """variant_key of every row, computed once per distinct combination of cfg_ values (a
    row at a time, 10^5 rows took a minute): rows whose values are equal column by column
    (lists compared by their repr; None and NaN alike, as variant_key takes them) share
    one."""
    columns = [c for c in frame.columns if isinstance(c, str) and c.startswith("cfg_")
               and c != "cfg_seed"]
    if not columns or len(frame) < 2:
        return [variant_key(row) for row in frame[columns].to_dict("records")]
    codes = np.empty((len(frame), len(columns)), dtype=np.int64)
    for j, column in enumerate(columns):
        values = frame[column]
        if values.dtype == object:  # lists are unhashable; a bool is not the int 1 here
            values = values.map(lambda v: v if isinstance(v, str) or _is_missing(v)
                                else f"{type(v).__name__}:{v!r}")
        codes[:, j] = pd.factorize(values, use_na_sentinel=True)[0]
    _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    keys = [variant_key(row) for row in frame[columns].iloc[first].to_dict("records")]
    return [keys[i] for i in inverse.ravel()]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _summary(values: pd.Series) -> tuple[np.ndarray, float, float, int]:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    array = array[np.isfinite(array)]
    n = len(array)
    mean = float(array.mean()) if n else math.nan
    std = float(array.std(ddof=1)) if n >= 2 else math.nan
    return array, mean, std, n


def _setups(rows: pd.DataFrame) -> list[str]:
    """The distinct machines and executions of rows, "device name (execution)": the
    execution (provenance.execution) says whether the step and the estimate ran compiled
    and whether the run trained in a stack."""
    names = rows["sys_device_name"] if "sys_device_name" in rows.columns else [None] * len(rows)
    return sorted({f"{'unknown' if _plain(name) is None else name} ({how})"
                   for name, how in zip(names, executions(rows), strict=True)})


def _shortest_timing(rule: Metric, *sides: pd.DataFrame) -> float | None:
    """The shorter of the two sides' mean wall times that `rule`'s rate was measured over
    (its catalog record's timed_by), or None when it has none or a side lacks the column."""
    if rule.timed_by is None:
        return None
    means = [_summary(rows[f"metric_{rule.timed_by}"])[1]
             for rows in sides if f"metric_{rule.timed_by}" in rows.columns]
    means = [m for m in means if math.isfinite(m)]
    return min(means) if len(means) == len(sides) else None


def _judge(rule: Metric, base: np.ndarray, cand: np.ndarray, alpha: float
           ) -> tuple[str, float | None, str, str]:
    """(verdict, p value, test, note) for two non-empty arrays of finite values."""
    base_mean, cand_mean = float(base.mean()), float(cand.mean())
    d = cand_mean - base_mean
    oriented = d if rule.better == catalog.HIGHER else -d
    limit = rule.threshold * abs(base_mean) if rule.relative else rule.threshold
    enough = len(base) >= 2 and len(cand) >= 2
    test = WELCH if enough else THRESHOLD_ONLY
    if abs(oriented) < limit or oriented == 0:
        kind = f"{rule.threshold:.0%} of baseline" if rule.relative else f"{rule.threshold:g}"
        return UNCHANGED, None, test, f"within threshold ({kind})"
    better = IMPROVED if oriented > 0 else REGRESSED
    if not enough:
        return better, None, test, "beyond threshold"
    if np.ptp(base) == 0 and np.ptp(cand) == 0:  # scipy's p would be nan: the gap is certain
        return better, 0.0, test, "zero variance on both sides"
    with warnings.catch_warnings():  # nearly-constant samples warn about precision
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(cand, base, equal_var=False).pvalue)
    if math.isnan(p):
        return better, 0.0, test, "zero variance on both sides"
    if p < alpha:
        return better, p, test, f"significant (p < {alpha:g})"
    return UNCHANGED, p, test, "not significant"


def compare(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    rules: Sequence[Metric] | None = None,
    alpha: float = 0.05,
    *,
    machine: bool = True,
) -> list[Verdict]:
    """One verdict per (suite, variant, rule); see the module docstring for the logic.
    `rules` default to every judged catalog metric stored on either side (`rules_for`;
    `machine=False` leaves out time and memory)."""
    base_groups, cand_groups = _groups(baseline), _groups(candidate)
    base_columns = set(baseline.columns) if baseline is not None else set()
    cand_columns = set(candidate.columns) if candidate is not None else set()
    if rules is None:
        rules = rules_for(base_columns | cand_columns, machine=machine)
    nan = math.nan
    verdicts: list[Verdict] = []
    for ident in sorted(set(base_groups) | set(cand_groups)):
        base, cand = base_groups.get(ident), cand_groups.get(ident)
        if base is None or cand is None:
            present = base or cand
            assert present is not None
            n = present.rows["run_id"].nunique() if "run_id" in present.rows else len(
                present.rows)
            lacking = "candidate" if cand is None else "baseline"
            verdicts.append(Verdict(
                suite=present.suite, variant_key=present.key, label=present.label, metric="*",
                baseline_mean=nan, baseline_std=nan, baseline_n=n if base else 0,
                candidate_mean=nan, candidate_std=nan, candidate_n=n if cand else 0,
                delta=nan, verdict=MISSING, p_value=None, test="none",
                note=f"variant not in the {lacking} ({n} finished run(s) on the other side)",
            ))
            continue
        for rule in rules:
            in_base, in_cand = rule.column in base_columns, rule.column in cand_columns
            if not in_base and not in_cand:
                continue
            common = dict(suite=base.suite, variant_key=base.key, label=base.label,
                          metric=rule.column)
            if not (in_base and in_cand):
                side = "candidate" if in_base else "baseline"
                verdicts.append(Verdict(
                    **common, baseline_mean=nan, baseline_std=nan, baseline_n=0,
                    candidate_mean=nan, candidate_std=nan, candidate_n=0, delta=nan,
                    verdict=NOT_COMPARABLE, p_value=None, test="none",
                    note=f"column {rule.column} absent from the {side}"))
                continue
            b_vals, b_mean, b_std, b_n = _summary(base.rows[rule.column])
            c_vals, c_mean, c_std, c_n = _summary(cand.rows[rule.column])
            stats_ = dict(baseline_mean=b_mean, baseline_std=b_std, baseline_n=b_n,
                          candidate_mean=c_mean, candidate_std=c_std, candidate_n=c_n,
                          delta=c_mean - b_mean)
            if b_n == 0 and c_n == 0:  # the metric does not apply to this variant
                continue
            if b_n == 0 or c_n == 0:
                side = " and ".join(s for s, n in (("baseline", b_n), ("candidate", c_n))
                                    if n == 0)
                verdicts.append(Verdict(**common, **stats_, verdict=NOT_COMPARABLE,
                                        p_value=None, test="none",
                                        note=f"no finite value in the {side}"))
                continue
            if rule.machine:
                b_setup, c_setup = _setups(base.rows), _setups(cand.rows)
                if b_setup != c_setup or len(b_setup) > 1:
                    kind = "different" if b_setup != c_setup else "mixed"
                    verdicts.append(Verdict(
                        **common, **stats_, verdict=NOT_COMPARABLE, p_value=None,
                        test="none (machine-bound)",
                        note=f"{kind} setups: {', '.join(b_setup)} vs {', '.join(c_setup)}"))
                    continue
            shortest = _shortest_timing(rule, base.rows, cand.rows)
            if shortest is not None and shortest < MIN_TIMED_SECONDS:
                verdicts.append(Verdict(
                    **common, **stats_, verdict=NOT_COMPARABLE, p_value=None,
                    test="none (machine-bound)",
                    note=f"timed over {shortest:.2g} s: too short to judge a speed "
                         f"(at least {MIN_TIMED_SECONDS:g} s)"))
                continue
            verdict, p, test, note = _judge(rule, b_vals, c_vals, alpha)
            verdicts.append(Verdict(**common, **stats_, verdict=verdict, p_value=p, test=test,
                                    note=note))
    return verdicts


def has_regression(verdicts: Iterable[Verdict]) -> bool:
    """Whether any verdict is `regressed` (`missing` and `not comparable` are not)."""
    return any(v.verdict == REGRESSED for v in verdicts)


def counts(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """How many verdicts of each kind, in VERDICTS order, zeros left out."""
    verdicts = list(verdicts)
    return {kind: n for kind in VERDICTS if (n := sum(v.verdict == kind for v in verdicts))}


# ----------------------------------------------------------------------------- rendering
def _num(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"


def _side(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "–"
    if math.isnan(mean):  # a missing variant: only the run count is known
        return f"{n} run(s)"
    spread = f" ± {_num(std)}" if n >= 2 else ""
    return f"{_num(mean)}{spread} (n={n})"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_line(verdicts: Sequence[Verdict]) -> str:
    parts = [f"{n} {kind}" for kind, n in counts(verdicts).items()]
    return "Summary: " + (", ".join(parts) if parts else "nothing to compare")


def render_markdown(verdicts: Sequence[Verdict]) -> str:
    """A Markdown table, one row per verdict, and a one-line count per verdict."""
    header = ("| suite | variant | metric | baseline | candidate | delta | verdict | test / p |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = list(header)
    for v in verdicts:
        if v.p_value is not None:
            test = f"{v.test}, p={v.p_value:.3g}"
        else:
            test = v.test
        if v.note:
            test = f"{test}; {v.note}"
        delta = "–" if math.isnan(v.delta) else f"{v.delta:+.4g}"
        metric = v.metric.removeprefix("metric_")
        verdict = f"**{v.verdict}**" if v.verdict == REGRESSED else v.verdict
        cells = (v.suite, v.label, metric, _side(v.baseline_mean, v.baseline_std, v.baseline_n),
                 _side(v.candidate_mean, v.candidate_std, v.candidate_n), delta, verdict, test)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + summary_line(verdicts) + "\n"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def render_json(verdicts: Sequence[Verdict]) -> str:
    """{"summary": {verdict: count}, "regression": bool, "verdicts": [...]}; NaN -> null."""
    payload = {
        "summary": counts(verdicts),
        "regression": has_regression(verdicts),
        "verdicts": [{k: _json_value(v) for k, v in asdict(verdict).items()}
                     for verdict in verdicts],
    }
    return json.dumps(payload, indent=2, allow_nan=False)


# -------------------------------------------------------------------------------- files
def load_side(path: str | Path, *, skip_corrupt: bool = False) -> pd.DataFrame:
    """The run rows of a results directory or of a single run .parquet file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BenchError(f"no results at {path} (a results directory or a .parquet file)")
    runs = store.load_runs(path, skip_corrupt=skip_corrupt)
    if runs.empty:  # a mistyped directory would compare as "all missing" and pass
        raise BenchError(f"no runs in {path}: nothing to compare")
    return runs


def select_rules(metrics: Sequence[str] | None) -> tuple[Metric, ...] | None:
    """The catalog records of `metrics` (names like `test_ll` or columns like
    `metric_test_ll`); None (all stored judged metrics) for None."""
    if metrics is None:
        return None
    chosen: list[Metric] = []
    for name in metrics:
        metric = catalog.lookup(str(name))
        if not metric.judged:
            raise BenchError(f"metric '{metric.name}' has no better direction: compare does "
                             "not judge it")
        if metric not in chosen:
            chosen.append(metric)
    return tuple(chosen)


def run_compare(
    baseline_path: str | Path,
    candidate_path: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    fmt: str = "md",
    skip_corrupt: bool = False,
) -> tuple[str, int]:
    """Compare two stores; returns (rendered text, exit code: 1 if anything regressed)."""
    renderers = {"md": render_markdown, "json": render_json}
    if fmt not in renderers:
        raise BenchError(f"unknown format '{fmt}' (known: {', '.join(renderers)})")
    rules = select_rules(metrics)
    baseline = load_side(baseline_path, skip_corrupt=skip_corrupt)
    candidate = load_side(candidate_path, skip_corrupt=skip_corrupt)
    verdicts = compare(baseline, candidate, rules)
    return renderers[fmt](verdicts), int(has_regression(verdicts))
