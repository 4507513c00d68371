"""What the report knows about a suite, loaded from the results store, and the pure
preparation of its tables.

* the report's metric columns (`MetricSpec`, `QUALITY_METRICS`, `COST_METRICS`): catalog
  records as the tables show them;
* loading (`load_suite_data`, `suite_file`): the runs, curves and samples of one suite, and
  its file;
* preparation (`prepare_runs`, `variant_axes`, `summarize_variants`, `present_metrics`, the
  factor metrics' estimators, the model families' table data `inpainting_data`,
  `dropout_ll_data` and `semisupervised_data`, `failure_rows`, `provenance_items`): DataFrame
  in, DataFrame or records out.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import store
from bench.config import LATER_FIELDS
from bench.errors import BenchError
from bench.families.registry import FAMILIES, Family
from bench.metrics import catalog
from bench.plugins import describe
from bench.provenance import executions
from bench.report.values import _key, _mean_std, _missing, _num, _numeric, _py
from bench.suite import Suite, load_suite, resolve_suite_path

UNSPECIFIED_BUDGET = "unspecified"


@dataclass(frozen=True)
class MetricSpec:
    """A column of the runs table as shown in the report."""

    column: str
    heading: str
    digits: int
    thousands: bool = False  # integers with thousands separators (throughputs, memory)
    scale: float = 1.0  # shown value = stored value * scale (bytes -> MB)

    def format(self, value: float) -> str:
        if value is None or not math.isfinite(value):
            return "-"
        value = value * self.scale
        return f"{value:,.{self.digits}f}" if self.thousands else f"{value:.{self.digits}f}"


def catalog_spec(name: str) -> MetricSpec:
    """The report column of a stored metric, as its catalog record describes it."""
    m = catalog.lookup(name)
    return MetricSpec(m.column, m.heading, m.digits, m.thousands, m.scale)


#: what the model achieves, in the summary table's order (headings from the catalog)
QUALITY_METRICS: tuple[MetricSpec, ...] = tuple(catalog_spec(name) for name in (
    "test_ll", "test_elbo", "rate", "distortion", "active_units", "ess", "sharpness_prior",
    "sharpness_recon",
    # estimators (issue 25): the IWAE bound at the training k, log p - that bound, and the
    # gradient SNR (MNIST runs that measure it; the snr_gaussian toy)
    "test_iwae_k", "kl_gap_k", "snr_encoder", "snr_decoder",
    # toys (bench.toys): how well q matches the exact posterior / which modes it covers
    "posterior_kl", "mixture_weight_error", "mass_dominant_mode", "kl_reverse", "kl_forward",
    # model families (bench.families): the mixture's exact training log-likelihood, the
    # conditional models' -log p(missing | given), the semi-supervised classifier's error
    "train_ll", "test_cll", "test_cll_is", "test_error", "test_unlabelled_bound",
    # disentanglement on data with known factors (bench.metrics.factors)
    "mig", "dci_disentanglement", "beta_vae_accuracy", "active_kl_units",
))
#: what it costs
COST_METRICS: tuple[MetricSpec, ...] = tuple(catalog_spec(name) for name in (
    "train_samples_per_s", "eval_samples_per_s", "train_seconds", "peak_memory_bytes",
    "train_flops_per_s",
))
ALL_METRICS = QUALITY_METRICS + COST_METRICS


def plugin_metrics(columns: Iterable[str], *, machine: bool | None = None) -> list[MetricSpec]:
    """The report columns of the stored metrics (metric_<name>, or a summary's
    metric_<name>_mean) that plugins registered catalog records for, in column order;
    `machine` True / False keeps only the cost / quality ones."""
    out: dict[str, MetricSpec] = {}
    for column in columns:
        name = str(column).removeprefix("metric_").removesuffix("_mean")
        record = catalog.find(name) if str(column).startswith("metric_") else None
        if record is None or record in catalog.METRICS or name in out:
            continue
        if machine is None or record.machine == machine:
            out[name] = catalog_spec(name)
    return list(out.values())
NEW_METRICS = {  # added in later versions of the store: absent from older results
    "metric_sharpness_prior": "sharpness", "metric_sharpness_recon": "sharpness",
    "metric_peak_memory_bytes": "peak memory", "metric_train_flops_per_s": "FLOP/s",
}
STATUS_COLUMNS = ("finished", "failed", "diverged")


@dataclass
class SuiteData:
    """Everything the report shows about one suite."""

    name: str
    runs: pd.DataFrame  # prepared (`prepare_runs`)
    curves: pd.DataFrame
    samples: pd.DataFrame  # empty: the store has no samples for this suite
    suite: Suite | None  # None: the suite file could not be found or read
    suite_note: str = ""  # why `suite` is None
    budgets: list[str] = field(default_factory=list)


def load_suite_data(results: str | Path, name: str, *, skip_corrupt: bool = False,
                    runs: pd.DataFrame | None = None) -> SuiteData:
    """Runs (or the given frame of them), curves, samples and suite file of suite `name`."""
    if runs is None:
        runs = store.load_runs(results, suite=name, skip_corrupt=skip_corrupt)
    runs = prepare_runs(runs)
    curves = store.load_curves(results, suite=name, skip_corrupt=skip_corrupt,
                               columns=CURVE_COLUMNS)
    samples = shown_samples(results, name, runs, skip_corrupt=skip_corrupt)
    stored_budgets = list(dict.fromkeys(runs["budget"]))
    recorded = [str(p) for p in runs.get("sys_suite_file", pd.Series(dtype=object))
                if isinstance(p, str) and p]
    suite, note = suite_file(name, stored_budgets, recorded[-1] if recorded else None)
    return SuiteData(name, runs, curves, samples, suite, note,
                     _budget_order(stored_budgets, suite))


#: the per-epoch columns the report draws (bench.report.figures.curve_data); a suite of 10^5
#: runs stores millions of curve rows of a dozen columns
CURVE_COLUMNS = ("epoch", "train_bound")


#: the image kinds every run stores (bench.report.figures.sample_sets); others are extra
SAMPLE_KINDS = ("prior", "reconstruction", "original")


def shown_samples(results: str | Path, name: str, runs: pd.DataFrame, *,
                  skip_corrupt: bool = False) -> pd.DataFrame:
    """The stored images of the runs whose images the report can show, not of every run: per
    budget and variant, the lowest-seed finished runs among those with images (of any kind,
    and of the extra kinds: figures.sample_sets and image_row_sets choose among them). First
    which runs stored which kinds (two columns), then only the chosen runs' pixels: a suite
    of 10^5 runs stores gigabytes of images."""
    kinds = store.load_samples(results, suite=name, skip_corrupt=skip_corrupt,
                               columns=["kind"])
    if kinds.empty or runs.empty:
        return kinds
    finished = runs[runs["status"] == "finished"]
    extra = kinds.loc[~kinds["kind"].isin(SAMPLE_KINDS), "run_id"]
    chosen: set[str] = set()
    for with_images in (kinds["run_id"].unique(), extra.unique()):
        candidates = finished[finished["run_id"].isin(with_images)]
        if "cfg_seed" not in candidates.columns:
            chosen.update(candidates["run_id"])
            continue
        seeds = pd.to_numeric(candidates["cfg_seed"], errors="coerce")
        lowest = seeds.groupby([candidates["budget"], candidates["variant"]]).transform("min")
        chosen.update(candidates.loc[(seeds == lowest) | lowest.isna(), "run_id"])
    return store.load_samples(results, suite=name, skip_corrupt=skip_corrupt, run_ids=chosen)


def _budget_order(stored: Sequence[str], suite: Suite | None) -> list[str]:
    """The stored budgets: those of the suite file in its order, then the others sorted."""
    order = list(suite.budgets) if suite is not None else []
    return [b for b in order if b in stored] + sorted(b for b in stored if b not in order)


def suite_file(name: str, budgets: Sequence[str] = (), recorded: str | None = None
               ) -> tuple[Suite | None, str]:
    """The suite file of `name` (looked up by name, else the file its runs were run from,
    `recorded`), parsed, or None and why not (one line)."""
    try:
        path = resolve_suite_path(name)
    except BenchError:
        if recorded is None or not Path(recorded).is_file():
            return None, "suite file not found"
        path = Path(recorded)  # a suite of the user's own, run by its path
    error: BenchError | None = None
    for budget in [None, *[b for b in budgets if b != UNSPECIFIED_BUDGET]]:
        try:
            return load_suite(path, budget=budget), ""
        except BenchError as err:
            error = error or err
    return None, f"suite file {path} could not be read: {_one_line(str(error))}"


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table with a budget on every row, numeric metrics and derived columns."""
    runs = runs.copy()
    if "budget" not in runs.columns:
        runs["budget"] = UNSPECIFIED_BUDGET
    budget = runs["budget"].astype(object)
    runs["budget"] = budget.where(budget.notna(), UNSPECIFIED_BUDGET).astype(str)
    for column in ("variant", "status"):
        if column not in runs.columns:
            runs[column] = None
    variant = runs["variant"].astype(object)
    runs["variant"] = variant.where(variant.notna(), runs["run_id"]).astype(str)
    return runs


def variant_axes(runs: pd.DataFrame, suite: Suite | None = None) -> list[str]:
    """The settings that tell the variants apart: the suite's grid axes, else the cfg_
    columns that vary within `runs` (the seed excepted)."""
    if suite is not None and suite.grid_axes:
        return [a for a in suite.grid_axes if f"cfg_{a}" in runs.columns]
    axes = []
    for column in runs.columns:
        if column.startswith("cfg_") and column != "cfg_seed":
            if len({_key(v) for v in runs[column]}) > 1:
                axes.append(column[len("cfg_"):])
    return axes


def summarize_variants(runs: pd.DataFrame, axes: Sequence[str] = (),
                       order: Sequence[str] = ()) -> pd.DataFrame:
    """One row per variant of `runs` (which must be of ONE budget).

    Columns: variant; each axis (its value); seeds; finished, failed, diverged (counts);
    layers (stochastic layers); cfg_<field> of the variant's first run; and for each metric
    of ALL_METRICS present in `runs`, `<column>_mean`, `<column>_std` (NaN with one seed)
    and `<column>_n` over the FINISHED runs. Rows follow `order` (variant names), then the
    configs' objective, layers, k and beta.
    """
    if len(set(runs["budget"])) > 1:
        raise ValueError("summarize_variants: runs of several budgets must not be pooled")
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        first = group.iloc[0]
        finished = group[group["status"] == "finished"]
        row: dict[str, Any] = {"variant": variant}
        for axis in axes:
            row[axis] = _py(first.get(f"cfg_{axis}"))
        seeds = group["cfg_seed"] if "cfg_seed" in group.columns else pd.Series(range(len(group)))
        row["seeds"] = int(seeds.nunique())
        for status in STATUS_COLUMNS:
            row[status] = int((group["status"] == status).sum())
        for column in group.columns:
            if column.startswith("cfg_"):
                row[column] = _py(first[column])
        row["plugin"] = plugin_label(first.get("sys_plugins"))
        latent = row.get("cfg_latent")
        row["layers"] = len(latent) if isinstance(latent, list) else 1
        for spec in ALL_METRICS + tuple(plugin_metrics(runs.columns)):
            if spec.column not in runs.columns:
                continue
            (row[f"{spec.column}_mean"], row[f"{spec.column}_std"],
             row[f"{spec.column}_n"]) = _mean_std(_numeric(finished, spec.column))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    rank = {name: i for i, name in enumerate(order)}

    def sort_key(row: pd.Series) -> tuple:
        return (rank.get(row["variant"], len(rank)), str(row.get("cfg_objective", "")),
                row["layers"], _num(row.get("cfg_k")), _num(row.get("cfg_beta")),
                str(row["variant"]))

    keys = [sort_key(row) for _, row in table.iterrows()]
    return table.iloc[sorted(range(len(table)), key=keys.__getitem__)].reset_index(drop=True)


def present_metrics(summary: pd.DataFrame, specs: Sequence[MetricSpec]) -> list[MetricSpec]:
    """The metrics with at least one value in `summary` (older results lack the new ones)."""
    return [s for s in specs if f"{s.column}_mean" in summary.columns
            and summary[f"{s.column}_mean"].notna().any()]


# factor metric column -> (its name, key of bench.metrics.factor_protocols.metric_protocols)
FACTOR_METRIC_NAMES = {
    "metric_mig": ("MIG", "mig"),
    "metric_dci_disentanglement": ("DCI disentanglement", "dci"),
    "metric_beta_vae_accuracy": ("beta-VAE metric", "beta_vae"),
}


def factor_metric_protocols(runs: pd.DataFrame) -> dict[str, str]:
    """How each factor metric of `runs` was estimated, from the stored config (cfg_dataset,
    cfg_dci_estimator, cfg_dci_train, cfg_dci_test; runs stored before the dci keys existed
    lack them and get the defaults): metric column -> "random forest, 2:1 split of 6,144
    points" etc. (`bench.metrics.factor_protocols.metric_protocols`); runs with different
    protocols give every distinct one, joined by " | ". Only runs with factor metrics count
    when any has them."""
    from bench.metrics.factor_protocols import metric_protocols

    rows = runs  # a runs table (metric_mig) or a summary (metric_mig_mean)
    mig = next((c for c in ("metric_mig", "metric_mig_mean") if c in runs.columns), None)
    if mig is not None and _numeric(runs, mig).notna().any():
        rows = runs[_numeric(runs, mig).notna()]
    found: dict[str, list[str]] = {column: [] for column in FACTOR_METRIC_NAMES}
    for _, row in rows.iterrows():
        dataset = row.get("cfg_dataset")
        estimator = row.get("cfg_dci_estimator")
        n_train, n_test = _num(row.get("cfg_dci_train")), _num(row.get("cfg_dci_test"))
        described = metric_protocols(
            None if _missing(dataset) else str(dataset),
            LATER_FIELDS["dci_estimator"] if _missing(estimator) else str(estimator),
            int(n_train) if math.isfinite(n_train) else 0,
            int(n_test) if math.isfinite(n_test) else 0)
        for column, (_name, key) in FACTOR_METRIC_NAMES.items():
            if described[key] not in found[column]:
                found[column].append(described[key])
    return {column: " | ".join(values) for column, values in found.items() if values}


def metric_headings(frame: pd.DataFrame, specs: Sequence[MetricSpec]) -> list[str]:
    """Table headings of `specs` for the runs or summary `frame`: a factor metric's names
    its estimator ("DCI disentanglement (random forest, 2:1 split of 6,144 points)",
    "beta-VAE metric (%; logistic regression, ...)", see `factor_metric_protocols`); every
    other metric keeps its heading."""
    factor = any(s.column in FACTOR_METRIC_NAMES for s in specs)
    protocols = factor_metric_protocols(frame) if factor else {}
    headings = []
    for spec in specs:
        if not protocols.get(spec.column):
            headings.append(spec.heading)
            continue
        unit = "%; " if spec.column == "metric_beta_vae_accuracy" else ""
        headings.append(f"{FACTOR_METRIC_NAMES[spec.column][0]} ({unit}"
                        f"{protocols[spec.column]})")
    return headings


def factor_metric_sentence(runs: pd.DataFrame) -> str:
    """"Estimators: MIG: 20-bin histogram, ...; DCI: ...; beta-VAE metric: ...." for a
    caption; "" without factor metrics."""
    protocols = factor_metric_protocols(runs) if "metric_mig" in runs.columns else {}
    parts = [f"{name.split(' disentanglement')[0]}: {protocols[column]}"
             for column, (name, _key) in FACTOR_METRIC_NAMES.items() if protocols.get(column)]
    return f"Estimators: {'; '.join(parts)}." if parts else ""


def _family(row: pd.Series) -> Family | None:
    """The registry record of a stored row's family (its toy, else its model); None for a
    family this code does not know (results of a removed or not yet loaded family)."""
    dataset, model = _py(row.get("cfg_dataset")), _py(row.get("cfg_model")) or "lvm"
    name = str(dataset if dataset in FAMILIES.toys() else model)
    return FAMILIES.get(name) if name in FAMILIES else None


def _family_label(row: pd.Series) -> str:
    family = _family(row)
    if family is not None and family.label:
        return family.label
    return str(row.get("cfg_objective", _py(row.get("cfg_model")))).upper()


INPAINT_MASKS = {"rand25": "random 25%", "rand50": "random 50%", "rand75": "random 75%",
                 "top_half": "top half", "quadrant": "one quadrant"}
INPAINT_METHODS = {"onepass": "one-pass", "iterative": "iterative", "matched": "matched"}


def inpainting_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Imputation scores of the finished runs that evaluated inpainting: one row per
    (variant, input_dropout, mask, method) with nll/error mean and std over seeds."""
    finished = runs[runs["status"] == "finished"]
    records = []
    for variant, group in finished.groupby("variant", sort=False):
        dropout = _py(group.iloc[0].get("cfg_input_dropout"))
        for mask, mask_label in INPAINT_MASKS.items():
            for method, method_label in INPAINT_METHODS.items():
                stem = f"metric_inpaint_{mask}_{method}"
                if f"{stem}_nll" not in group.columns:
                    continue
                record = {"variant": variant, "input_dropout": float(dropout or 0.0),
                          "mask": mask_label, "method": method_label}
                for score in ("nll", "error"):
                    record[f"{score}_mean"], record[f"{score}_std"], record["seeds"] = \
                        _mean_std(_numeric(group, f"{stem}_{score}"))
                if record["seeds"]:
                    records.append(record)
    return pd.DataFrame(records) if records else None


def dropout_ll_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Test LL beside the ESS of its importance weights for each input-dropout rate of the
    finished VAE-family runs, when some were trained with input dropout: one row per variant
    with input_dropout, ll_mean/_std, ess_mean/_std (ESS / k_eval), elbo_mean/_std, seeds."""
    if "cfg_input_dropout" not in runs.columns or "metric_test_ll" not in runs.columns:
        return None
    finished = runs[runs["status"] == "finished"]
    if not (_numeric(finished, "cfg_input_dropout") > 0).any():
        return None
    records = []
    for variant, group in finished.groupby("variant", sort=False):
        record = {"variant": variant,
                  "input_dropout": float(_py(group.iloc[0]["cfg_input_dropout"]) or 0.0)}
        for name, column in (("ll", "metric_test_ll"), ("ess", "metric_ess"),
                             ("elbo", "metric_test_elbo")):
            record[f"{name}_mean"], record[f"{name}_std"], n = (
                _mean_std(_numeric(group, column)) if column in group.columns
                else (math.nan, math.nan, 0))
            if name == "ll":
                record["seeds"] = n
        if record["seeds"]:
            records.append(record)
    if not records:
        return None
    return pd.DataFrame(records).sort_values("input_dropout", kind="stable") \
        .reset_index(drop=True)


# config keys of an M2 run that its supervised-only baseline (model classifier) does not share
_M2_ONLY_KEYS = frozenset({"cfg_model", "cfg_alpha", "cfg_k", "cfg_latent", "cfg_analytic_kl",
                           "cfg_k_eval", "cfg_objective", "cfg_beta"})


def semisupervised_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Each M2 row of a (one-budget) summary beside its supervised-only baseline: the model
    "classifier" row with the same training settings (labelled, data, epochs, optimiser, ...).
    Columns: labelled, m2_variant, m2_mean, m2_std, m2_seeds, sup_variant, sup_mean, sup_std,
    sup_seeds, diff (M2 - supervised only, percentage points). None without such a pair."""
    mean = "metric_test_error_mean"
    if summary.empty or "cfg_model" not in summary.columns or mean not in summary.columns:
        return None
    shared = [c for c in summary.columns if c.startswith("cfg_") and c not in _M2_ONLY_KEYS
              and c != "cfg_seed"]
    baselines = summary[(summary["cfg_model"] == "classifier") & summary[mean].notna()]
    records = []
    for _, row in summary[(summary["cfg_model"] == "m2") & summary[mean].notna()].iterrows():
        same = [b for _, b in baselines.iterrows()
                if all(_key(b[c]) == _key(row[c]) for c in shared)]
        if not same:
            continue
        base = same[0]
        records.append({
            "labelled": int(row["cfg_labelled"]), "m2_variant": row["variant"],
            "m2_mean": row[mean], "m2_std": row["metric_test_error_std"],
            "m2_seeds": int(row["metric_test_error_n"]), "sup_variant": base["variant"],
            "sup_mean": base[mean], "sup_std": base["metric_test_error_std"],
            "sup_seeds": int(base["metric_test_error_n"]),
            "diff": row[mean] - base[mean]})
    if not records:
        return None
    return pd.DataFrame(records).sort_values("labelled", kind="stable").reset_index(drop=True)


def failure_rows(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Failed and diverged runs: variant, seed, budget, status, error (first line), epoch."""
    bad = runs[runs["status"].isin(["failed", "diverged"])]
    out = []
    for _, row in bad.iterrows():
        error = row.get("error")
        first = "" if _missing(error) else next(iter(str(error).strip().splitlines()), "")
        seed = _py(row.get("cfg_seed"))
        epoch = _py(row.get("metric_diverged_epoch"))
        out.append({
            "variant": row["variant"], "seed": int(seed) if seed is not None else None,
            "budget": row["budget"], "status": row["status"],
            "error": first[:300] + ("..." if len(first) > 300 else ""),
            "diverged_epoch": int(epoch) if isinstance(epoch, (int, float)) else None,
            "run_id": row.get("run_id"),
        })
    out.sort(key=lambda r: (r["budget"], str(r["variant"]), _num(r["seed"])))
    return out


@dataclass(frozen=True)
class SuiteOverview:
    """One suite at a glance, a row of the report's index."""

    name: str
    description: str  # the suite file's, or why it is unavailable
    budgets: tuple[tuple[str, int], ...]  # (budget, runs) in the suite file's order
    runs: int
    status: tuple[tuple[str, int], ...]  # (status, runs) for each of STATUS_COLUMNS
    last_run: pd.Timestamp | None  # when the newest run ended (UTC); None: not recorded


def suite_overview(data: SuiteData) -> SuiteOverview:
    """The index row of a suite: runs per budget and per status, and when its last run
    ended: the newest stored end_time (provenance), else the newest start_time (rows that
    recorded no end), else None."""
    runs = data.runs
    last = None
    for column in ("sys_end_time", "sys_start_time"):
        if column in runs.columns:
            stamps = pd.to_datetime(runs[column], errors="coerce", utc=True).dropna()
            if len(stamps):
                last = stamps.max()
                break
    description = (_one_line(data.suite.description) if data.suite is not None
                   else f"suite file unavailable ({data.suite_note})")
    return SuiteOverview(
        data.name, description,
        tuple((b, int((runs["budget"] == b).sum())) for b in data.budgets), len(runs),
        tuple((s, int((runs["status"] == s).sum())) for s in STATUS_COLUMNS), last)


def plugin_label(stored: Any) -> str:
    """A row's plugins (its sys_plugins JSON) as "vaebench-vr 0.1.0 (code 1a2b3c4d5e6f)";
    "" for vaebench's own code."""
    if not isinstance(stored, str) or not stored:
        return ""
    return ", ".join(describe(name, identity) for name, identity in json.loads(stored).items())


def provenance_items(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, text) pairs: commits, versions, devices, executions (compiled, stacked),
    hosts, resources, time range."""
    n = len(runs)

    def column(name: str) -> pd.Series | None:
        return runs[name] if name in runs.columns else None

    def counted(label: Any, *columns: pd.Series | None) -> str:
        """Runs per label(*a row's values), in order of first appearance; each distinct row
        labelled once (a suite of 10^5 runs has a handful)."""
        counts = _tally(label, n, *columns)
        if len(counts) == 1:
            return f"{next(iter(counts))} (all {n} runs)"
        return "; ".join(f"{value} ({count} runs)" for value, count in counts.items())

    def known(value: Any) -> str:
        return "unknown" if value is None else str(value)

    def commit_label(commit: Any, dirty: Any) -> str:
        dirty = _py(dirty) in (True, "True", "true", 1)
        return known(commit)[:12] + (" (dirty: uncommitted changes)" if dirty else "")

    def device_label(device: Any, name: Any) -> str:
        return ": ".join(str(v) for v in (device, name) if v is not None) or "unknown"

    items: list[tuple[str, str]] = []
    if column("sys_git_commit") is not None:
        items.append(("git commit", counted(commit_label, column("sys_git_commit"),
                                            column("sys_git_dirty"))))
    versions = []
    for name, label in (("sys_python", "Python"), ("sys_torch", "torch"),
                        ("sys_numpy", "numpy"), ("sys_ray", "Ray")):
        values = column(name)
        if values is not None:
            distinct = sorted({str(v) for v in values.dropna().unique()})
            versions.append(f"{label} {', '.join(distinct) or 'unknown'}")
    if versions:
        items.append(("versions", "; ".join(versions)))
    if column("sys_device_name") is not None or column("sys_device") is not None:
        items.append(("devices", counted(device_label, column("sys_device"),
                                         column("sys_device_name"))))
    items.append(("execution", counted(known, pd.Series(executions(runs), dtype=object))))
    plugins = column("sys_plugins")
    if plugins is not None and plugins.notna().any():
        items.append(("plugins", counted(lambda v: plugin_label(v) or
                                         "none (vaebench's own code)", plugins)))
    for name, label in (("sys_hostname", "hosts"), ("sys_platform", "platforms")):
        if column(name) is not None:
            items.append((label, counted(known, column(name))))
    resources = []
    for name, label in (("sys_cpu_count", "CPUs"), ("sys_gpu_count", "GPUs"),
                        ("sys_torch_threads", "torch threads")):
        if column(name) is not None:
            distinct = sorted({int(v) for v in _numeric(runs, name) if math.isfinite(v)})
            resources.append(f"{label} {', '.join(map(str, distinct)) or 'unknown'}")
    if resources:
        items.append(("resources per run", "; ".join(resources)))
    nodes = column("sys_ray_node_id")
    if nodes is not None and nodes.notna().any():
        items.append(("Ray nodes", str(nodes.dropna().nunique())))
    start, end = column("sys_start_time"), column("sys_end_time")
    if start is not None:
        starts = pd.to_datetime(start, errors="coerce", utc=True).dropna()
        ends = pd.to_datetime(end, errors="coerce", utc=True).dropna() if end is not None \
            else starts
        if len(starts):
            last = ends.max() if len(ends) else starts.max()
            text = f"{_when(starts.min())} to {_when(last)}"
            if "sys_wall_seconds" in runs.columns:
                total = _numeric(runs, "sys_wall_seconds")
                total = total[np.isfinite(total)].sum()
                text += f" ({total / 60:,.1f} run-minutes in all)"
            items.append(("ran", text))
    return items


def _tally(label: Any, n: int, *columns: pd.Series | None) -> dict[str, int]:
    """{label(*values): number of rows} over the rows of `columns` (None: a column of None;
    missing values as None), label called once per distinct row."""
    lists = [[None] * n if c is None else c.astype(object).where(c.notna(), None).tolist()
             for c in columns]
    counts: dict[str, int] = {}
    for values, count in Counter(zip(*lists, strict=True)).items():
        text = label(*values)
        counts[text] = counts.get(text, 0) + count
    return counts


def _when(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _one_line(text: str) -> str:
    return " ".join(text.split())
