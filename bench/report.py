"""A report regenerated from the results store alone: Markdown, self-contained HTML and PNGs.

    build_report("results", "report")            -> report/report.md (+ report.html, *.png)
    summary_text("results", "bench")             -> the per-variant summary as fixed-width text

No training happens here: everything comes from the Parquet files (`bench.store`), so a
report of a cluster run can be made on a laptop from a copy of the results directory. The
suite file (`suites/<name>.toml`), when it can be found, adds the description, the variant
axes and the published references; without it the report says so and goes on.

The module is in three layers:

* loading (`load_suite_data`): the runs, curves and samples of one suite, and its file;
* pure data preparation (`summarize_variants`, `ll_vs_k_data`, `rate_distortion_data`,
  `sharpness_data`, `throughput_data`, `curve_data`, `sample_sets`, `reference_rows`,
  `failure_rows`, `provenance_items`): DataFrame in, DataFrame or records out;
* rendering: a small document model (headings, paragraphs, lists, tables, figures) written as
  GitHub-flavoured Markdown and as HTML; the matplotlib code lives in `bench.plots`.

Runs of different budgets are never pooled: every table and plot is per budget, and a
comparison with a published value is labelled a reproduction only at the reference's budget.
Every published value comes with its protocol card (`[card.<name>]` of the suite file): each
row of the paper-vs-ours table names its card, and the card (the known differences from the
paper's text and from the authors' code) follows the rows that name it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import store
from bench.config import LATER_FIELDS, RunConfig, config_from_dict
from bench.errors import BenchError
from bench.families.registry import FAMILIES, Family
from bench.metrics import catalog
from bench.suite import Card, Reference, Suite, load_suite, resolve_suite_path

UNSPECIFIED_BUDGET = "unspecified"
SAMPLE_KINDS = ("prior", "reconstruction", "original")


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
NEW_METRICS = {  # added in later versions of the store: absent from older results
    "metric_sharpness_prior": "sharpness", "metric_sharpness_recon": "sharpness",
    "metric_peak_memory_bytes": "peak memory", "metric_train_flops_per_s": "FLOP/s",
}
STATUS_COLUMNS = ("finished", "failed", "diverged")


# =============================================================================== loading
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
    curves = store.load_curves(results, suite=name, skip_corrupt=skip_corrupt)
    samples = store.load_samples(results, suite=name, skip_corrupt=skip_corrupt)
    stored_budgets = list(dict.fromkeys(runs["budget"]))
    suite, note = suite_file(name, stored_budgets)
    return SuiteData(name, runs, curves, samples, suite, note,
                     _budget_order(stored_budgets, suite))


def _budget_order(stored: Sequence[str], suite: Suite | None) -> list[str]:
    """The stored budgets: those of the suite file in its order, then the others sorted."""
    order = list(suite.budgets) if suite is not None else []
    return [b for b in order if b in stored] + sorted(b for b in stored if b not in order)


def suite_file(name: str, budgets: Sequence[str] = ()) -> tuple[Suite | None, str]:
    """The suite file of `name`, parsed, or None and why not (one line)."""
    try:
        path = resolve_suite_path(name)
    except BenchError:
        return None, "suite file not found"
    error: BenchError | None = None
    for budget in [None, *[b for b in budgets if b != UNSPECIFIED_BUDGET]]:
        try:
            return load_suite(path, budget=budget), ""
        except BenchError as err:
            error = error or err
    return None, f"suite file {path} could not be read: {_one_line(str(error))}"


# ================================================================== data preparation (pure)
def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table with a budget on every row, numeric metrics and derived columns."""
    runs = runs.copy()
    if "budget" not in runs.columns:
        runs["budget"] = UNSPECIFIED_BUDGET
    runs["budget"] = [UNSPECIFIED_BUDGET if _missing(b) else str(b) for b in runs["budget"]]
    for column in ("variant", "status"):
        if column not in runs.columns:
            runs[column] = None
    runs["variant"] = [str(v) if not _missing(v) else str(r)
                       for v, r in zip(runs["variant"], runs["run_id"], strict=True)]
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
        latent = row.get("cfg_latent")
        row["layers"] = len(latent) if isinstance(latent, list) else 1
        for spec in ALL_METRICS:
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


def _line_labels(table: pd.DataFrame, exclude: Iterable[str]) -> list[str]:
    """A label per row from the settings that vary among the rows (bar those excluded)."""
    exclude = {f"cfg_{name}" for name in exclude} | {"cfg_seed", "cfg_latent", "cfg_hidden"}
    varying = [c for c in table.columns if c.startswith("cfg_") and c not in exclude
               and len({_key(v) for v in table[c]}) > 1]
    layers_vary = table["layers"].nunique() > 1
    labels = []
    for _, row in table.iterrows():
        parts = []
        if "cfg_objective" not in exclude and "cfg_objective" in table.columns:
            parts.append(str(row["cfg_objective"]).upper())
        if layers_vary:
            parts.append(f"{row['layers']} stochastic layer{'s' * (row['layers'] != 1)}")
        parts += [f"{c[len('cfg_'):]}={_fmt_value(row[c])}" for c in varying
                  if c != "cfg_objective"]
        labels.append(", ".join(parts) or "all variants")
    return labels


def ll_vs_k_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Test LL against k per objective (and number of stochastic layers, where it varies).

    Only variants with beta = 1 (the VAE and IWAE objectives proper) and at least one
    finished run. None unless the runs of some objective differ in k. Columns: line,
    objective, layers, k, mean, std, seeds, variant; `mean`/`std` are the summary's
    `metric_test_ll_mean`/`_std`.
    """
    needed = {"cfg_objective", "cfg_k", "metric_test_ll_mean"}
    if summary.empty or not needed <= set(summary.columns):
        return None
    table = _lvm_rows(summary)
    table = table[table["metric_test_ll_mean"].notna()]
    if "cfg_beta" in table.columns:
        table = table[table["cfg_beta"].astype(float) == 1.0]
    if table.empty or table.groupby("cfg_objective")["cfg_k"].nunique().max() < 2:
        return None
    return pd.DataFrame({
        "line": _line_labels(table, exclude=("k", "beta")),
        "objective": table["cfg_objective"].to_numpy(),
        "layers": table["layers"].to_numpy(),
        "k": table["cfg_k"].astype(int).to_numpy(),
        "mean": table["metric_test_ll_mean"].to_numpy(dtype=float),
        "std": table["metric_test_ll_std"].to_numpy(dtype=float),
        "seeds": table["metric_test_ll_n"].to_numpy(),
        "variant": table["variant"].to_numpy(),
    })


def posterior_kl_vs_k_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """The mixture toy: exact KL(p(c|x) || q(c|x)) against the particles K, one line per
    kl_direction. Columns: line, k, mean, std, seeds, variant; None without such runs."""
    needed = {"cfg_k", "cfg_kl_direction", "metric_posterior_kl_mean"}
    if summary.empty or not needed <= set(summary.columns):
        return None
    table = summary[summary["metric_posterior_kl_mean"].notna()]
    if table.empty or table["cfg_k"].nunique() < 2:
        return None
    return pd.DataFrame({
        "line": [f"{d} KL" for d in table["cfg_kl_direction"]],
        "k": table["cfg_k"].astype(int).to_numpy(),
        "mean": table["metric_posterior_kl_mean"].to_numpy(dtype=float),
        "std": table["metric_posterior_kl_std"].to_numpy(dtype=float),
        "seeds": table["metric_posterior_kl_n"].to_numpy(),
        "variant": table["variant"].to_numpy(),
    })


def bimodal_fit_data(runs: pd.DataFrame) -> dict[str, tuple[float, float]] | None:
    """The bimodal toy: {label: (mean, std)} of the fitted q per kl_direction, from the
    lowest-seed finished run; None without such runs."""
    needed = {"cfg_dataset", "cfg_kl_direction", "metric_q_mean", "metric_q_std"}
    if runs.empty or not needed <= set(runs.columns):
        return None
    toy = runs[(runs["cfg_dataset"] == "bimodal") & (runs["status"] == "finished")]
    if toy.empty:
        return None
    fits = {}
    for direction, group in toy.sort_values("cfg_seed").groupby("cfg_kl_direction", sort=False):
        row = group.iloc[0]
        fits[f"{direction} KL: N({row['metric_q_mean']:.2f}, {row['metric_q_std']:.2f}^2), "
             f"mass {row['metric_mass_left']:.0%} / {row['metric_mass_right']:.0%} "
             f"(seed {int(row['cfg_seed'])})"] = (float(row["metric_q_mean"]),
                                                  float(row["metric_q_std"]))
    return fits


_PRIOR_IWAE = re.compile(r"metric_prior_iwae_k(\d+)")


def prior_iwae_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Mixture models (exact log p(x)): the gap between the exact test log-likelihood and the
    IWAE estimate with q = p(z), against k, one line per number of components. Columns: line,
    components, k, mean, std, seeds, variant (mean/std over the finished seeds of
    gap = exact - estimate)."""
    columns = {int(m.group(1)): c for c in runs.columns if (m := _PRIOR_IWAE.fullmatch(c))}
    if len(columns) < 2 or "metric_test_ll" not in runs.columns:
        return None
    finished = runs[runs["status"] == "finished"]
    records = []
    for variant, group in finished.groupby("variant", sort=False):
        exact = _numeric(group, "metric_test_ll")
        components = _py(group.iloc[0].get("cfg_components"))
        for k, column in sorted(columns.items()):
            mean, std, n = _mean_std(exact - _numeric(group, column))
            if n:
                records.append({"line": f"K = {components}" if components else str(variant),
                                "components": _num(components), "k": k, "mean": mean,
                                "std": std, "seeds": n, "variant": variant})
    table = pd.DataFrame(records)
    if table.empty or table["k"].nunique() < 2:
        return None
    return table.sort_values(["components", "k"], kind="stable").reset_index(drop=True)


def axis_metric_data(summary: pd.DataFrame, metric: str, axis: str,
                     rows: pd.Series | None = None) -> pd.DataFrame | None:
    """`metric` (a runs column) against the config key `axis`, one line per model family:
    columns line, x, mean, std, variant. `rows` selects summary rows (default: all). None
    unless at least two values of `axis` have a value."""
    mean, column = f"{metric}_mean", f"cfg_{axis}"
    if summary.empty or mean not in summary.columns or column not in summary.columns:
        return None
    table = summary if rows is None else summary[rows]
    table = table[table[mean].notna()]
    if table.empty or table[column].nunique() < 2:
        return None
    return pd.DataFrame({
        "line": [_family_label(row) for _, row in table.iterrows()],
        "x": table[column].astype(float).to_numpy(),
        "mean": table[mean].to_numpy(dtype=float),
        "std": table[f"{metric}_std"].to_numpy(dtype=float),
        "variant": table["variant"].to_numpy(),
    })


def axis_reference_data(summary: pd.DataFrame, references: Sequence[Reference], metric: str,
                        axis: str) -> pd.DataFrame | None:
    """The published values of `metric` placed like `axis_metric_data`'s points: one per
    reference and summary row it matches. Columns line, x, value."""
    records = []
    for ref in references:
        column, _sign = reference_value_column(ref.metric)
        if column != metric:
            continue
        for _, row in summary.iterrows():
            if reference_matches(ref, row.to_dict()) and not _missing(row.get(f"cfg_{axis}")):
                records.append({"line": _family_label(row), "x": float(row[f"cfg_{axis}"]),
                                "value": ref.value})
    table = pd.DataFrame(records).drop_duplicates() if records else None
    return table if table is not None and not table.empty else None


DISENTANGLEMENT_PANELS = (
    ("metric_mig", "MIG (higher = more disentangled)"),
    ("metric_dci_disentanglement", "DCI disentanglement"),
    ("metric_beta_vae_accuracy", "beta-VAE metric: accuracy (%)"),
    ("metric_distortion", "reconstruction: -E log p(x|z) (nats, lower is better)"),
)
_KL_UNIT = re.compile(r"metric_kl_unit_(\d+)")
# factor metric column -> (its name, key of bench.metrics.factors.metric_protocols)
FACTOR_METRIC_NAMES = {
    "metric_mig": ("MIG", "mig"),
    "metric_dci_disentanglement": ("DCI disentanglement", "dci"),
    "metric_beta_vae_accuracy": ("beta-VAE metric", "beta_vae"),
}


def factor_metric_protocols(runs: pd.DataFrame) -> dict[str, str]:
    """How each factor metric of `runs` was estimated, from the stored config (cfg_dataset,
    cfg_dci_estimator, cfg_dci_train, cfg_dci_test; runs stored before the dci keys existed
    lack them and get the defaults): metric column -> "random forest, 2:1 split of 6,144
    points" etc. (`bench.metrics.factors.metric_protocols`); runs with different protocols
    give every distinct one, joined by " | ". Only runs with factor metrics count when any
    has them."""
    from bench.metrics.factors import metric_protocols

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


def _objective_category(row: Mapping[str, Any]) -> str:
    capacity = _num(row.get("cfg_capacity_max"))
    if math.isfinite(capacity) and capacity > 0:
        return f"C={capacity:g}"
    return f"β={_num(row.get('cfg_beta')):g}"


def _category_order(frame: pd.DataFrame) -> list[str]:
    """Categories sorted by beta, capacity variants last."""
    keys = {}
    for _, row in frame.iterrows():
        category = _objective_category(row)
        capacity = _num(row.get("cfg_capacity_max"))
        keys[category] = (1 if math.isfinite(capacity) and capacity > 0 else 0,
                          capacity if math.isfinite(capacity) and capacity > 0
                          else _num(row.get("cfg_beta")))
    return sorted(keys, key=keys.__getitem__)


def disentanglement_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Every finished run's disentanglement metrics and reconstruction, one row per (metric,
    run): columns panel, category (beta or capacity), seed, value; None without such runs."""
    if "metric_mig" not in runs.columns:
        return None
    finished = runs[(runs["status"] == "finished") & _numeric(runs, "metric_mig").notna()]
    if finished.empty:
        return None
    order = {c: i for i, c in enumerate(_category_order(finished))}
    protocols = factor_metric_protocols(finished)
    records = []
    for column, panel in DISENTANGLEMENT_PANELS:
        if column not in finished.columns:
            continue
        if protocols.get(column):  # name the estimator under the panel's title
            panel = f"{panel}\n({protocols[column]})"
        for _, row in finished.iterrows():
            value = _num(row.get(column))
            if math.isfinite(value):
                records.append({"panel": panel, "category": _objective_category(row),
                                "seed": _py(row.get("cfg_seed")), "value": value})
    table = pd.DataFrame(records)
    return table.sort_values("category", key=lambda c: c.map(order), kind="stable") \
        .reset_index(drop=True)


def unit_kl_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Per beta / capacity: the KL of the most, second most, ... informative latent unit
    (each run's units sorted by KL, then mean and std over seeds). Columns line, x (rank,
    1 = most informative), mean, std."""
    columns = sorted((int(m.group(1)), c) for c in runs.columns
                     if (m := _KL_UNIT.fullmatch(c)))
    if not columns:
        return None
    finished = runs[runs["status"] == "finished"]
    profiles: dict[str, list[np.ndarray]] = {}
    for _, row in finished.iterrows():
        values = np.array([_num(row.get(c)) for _, c in columns])
        values = np.sort(values[np.isfinite(values)])[::-1]
        if len(values):
            profiles.setdefault(_objective_category(row), []).append(values)
    records = []
    for category in _category_order(finished):
        stacked = profiles.get(category)
        if not stacked or len({len(v) for v in stacked}) != 1:
            continue
        matrix = np.stack(stacked)
        for rank in range(matrix.shape[1]):
            records.append({"line": category, "x": rank + 1, "mean": matrix[:, rank].mean(),
                            "std": matrix[:, rank].std(ddof=1) if len(matrix) > 1
                            else math.nan})
    return pd.DataFrame(records) if records else None


def _family(row: pd.Series) -> Family | None:
    """The registry record of a stored row's family (its toy, else its model); None for a
    family this code does not know (results of a removed or not yet loaded family)."""
    dataset, model = _py(row.get("cfg_dataset")), _py(row.get("cfg_model")) or "lvm"
    name = str(dataset if dataset in FAMILIES.toys() else model)
    return FAMILIES.get(name) if name in (*FAMILIES.models(), *FAMILIES.toys()) else None


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


def dropout_ll_table(data: pd.DataFrame) -> Table:
    ess = MetricSpec("metric_ess", "", 4)  # dropout-trained models' ESS can be ~0.002
    rows = [[str(r["variant"]), f"{r['input_dropout']:g}",
             format_mean_std(r["ll_mean"], r["ll_std"], _NLL),
             format_mean_std(r["ess_mean"], r["ess_std"], ess),
             format_mean_std(r["elbo_mean"], r["elbo_std"], _NLL), str(r["seeds"])]
            for _, r in data.iterrows()]
    return Table(["variant", "input dropout p", "test LL (nats)", "ESS / k_eval",
                  "ELBO (nats)", "seeds"], rows, [False, True, True, True, True, True])


def inpainting_table(data: pd.DataFrame) -> Table:
    """Mask x method rows, one nll and one error column per input dropout."""
    dropouts = sorted(data["input_dropout"].unique())
    headers = ["mask", "method"]
    for p in dropouts:
        headers += [f"-log p(missing) p={p:g} (nats)", f"error p={p:g} (%)"]
    rows = []
    for (mask, method), group in data.groupby(["mask", "method"], sort=False):
        cells = [str(mask), str(method)]
        for p in dropouts:
            at = group[group["input_dropout"] == p]
            if at.empty:
                cells += ["-", "-"]
                continue
            r = at.iloc[0]
            cells += [format_mean_std(r["nll_mean"], r["nll_std"], _NLL),
                      format_mean_std(r["error_mean"], r["error_std"], _NLL)]
        rows.append(cells)
    return Table(headers, rows, [False, False] + [True] * (2 * len(dropouts)))


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


def semisupervised_table(data: pd.DataFrame) -> Table:
    spec = MetricSpec("metric_test_error", "", 2)
    rows = [[str(r["labelled"]), format_mean_std(r["m2_mean"], r["m2_std"], spec),
             format_mean_std(r["sup_mean"], r["sup_std"], spec), f"{r['diff']:+.2f}",
             f"{r['m2_seeds']} / {r['sup_seeds']}"] for _, r in data.iterrows()]
    return Table(["labelled N", "M2 test error (%)", "supervised only (%)",
                  "M2 - supervised (points)", "seeds (M2 / sup.)"], rows,
                 [True, True, True, True, True])


def _lvm_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the VAE family (model lvm; results from before model families existed
    have no cfg_model column and are all lvm): other families have no k, beta or posterior."""
    if "cfg_model" not in summary.columns:
        return summary
    return summary[[_missing(m) or m == "lvm" for m in summary["cfg_model"]]]


def _beta_table(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame | None:
    """VAE-objective variants with a value in one of `columns`, if beta varies among them."""
    summary = _lvm_rows(summary)
    needed = {"cfg_objective", "cfg_beta"}
    present = [c for c in columns if c in summary.columns]
    if summary.empty or not needed <= set(summary.columns) or not present:
        return None
    table = summary[(summary["cfg_objective"] == "vae")
                    & summary[present].notna().any(axis=1)]
    if table["cfg_beta"].nunique() < 2:
        return None
    return table


def rate_distortion_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Rate and distortion (mean, std over seeds) per beta, for the VAE-objective variants.

    None unless beta varies. Columns: line, beta, rate_mean, rate_std, distortion_mean,
    distortion_std, seeds, variant.
    """
    table = _beta_table(summary, ["metric_rate_mean"])
    if table is None or "metric_distortion_mean" not in table.columns:
        return None
    table = table[table["metric_rate_mean"].notna() & table["metric_distortion_mean"].notna()]
    if table["cfg_beta"].nunique() < 2:
        return None
    return pd.DataFrame({
        "line": _line_labels(table, exclude=("beta", "objective")),
        "beta": table["cfg_beta"].astype(float).to_numpy(),
        "rate_mean": table["metric_rate_mean"].to_numpy(dtype=float),
        "rate_std": table["metric_rate_std"].to_numpy(dtype=float),
        "distortion_mean": table["metric_distortion_mean"].to_numpy(dtype=float),
        "distortion_std": table["metric_distortion_std"].to_numpy(dtype=float),
        "seeds": table["metric_rate_n"].to_numpy(),
        "variant": table["variant"].to_numpy(),
    })


def sharpness_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Sharpness of prior samples and reconstructions per beta (VAE objective).

    None unless beta varies and some sharpness was recorded. Columns: line, beta,
    prior_mean, prior_std, recon_mean, recon_std, variant.
    """
    columns = ["metric_sharpness_prior_mean", "metric_sharpness_recon_mean"]
    table = _beta_table(summary, columns)
    if table is None:
        return None

    def get(name: str) -> np.ndarray:
        if name in table.columns:
            return table[name].to_numpy(dtype=float)
        return np.full(len(table), math.nan)

    return pd.DataFrame({
        "line": _line_labels(table, exclude=("beta", "objective")),
        "beta": table["cfg_beta"].astype(float).to_numpy(),
        "prior_mean": get("metric_sharpness_prior_mean"),
        "prior_std": get("metric_sharpness_prior_std"),
        "recon_mean": get("metric_sharpness_recon_mean"),
        "recon_std": get("metric_sharpness_recon_std"),
        "variant": table["variant"].to_numpy(),
    })


def throughput_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Training throughput per variant (summary order). Columns: variant, mean, std, seeds."""
    column = "metric_train_samples_per_s"
    if summary.empty or f"{column}_mean" not in summary.columns:
        return None
    table = summary[summary[f"{column}_mean"].notna()]
    if table.empty:
        return None
    return pd.DataFrame({
        "variant": table["variant"].to_numpy(),
        "mean": table[f"{column}_mean"].to_numpy(dtype=float),
        "std": table[f"{column}_std"].to_numpy(dtype=float),
        "seeds": table[f"{column}_n"].to_numpy(),
    })


def posterior_bounds_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Test LL and ELBO per variant when the posterior family varies (what a flow buys).
    Columns: variant, ll_mean, ll_std, elbo_mean, elbo_std; None otherwise."""
    needed = {"cfg_posterior", "metric_test_ll_mean", "metric_test_elbo_mean"}
    if summary.empty or not needed <= set(summary.columns):
        return None
    table = _lvm_rows(summary)
    table = table[table["metric_test_ll_mean"].notna()]
    if table["cfg_posterior"].nunique() < 2:
        return None
    return pd.DataFrame({
        "variant": table["variant"].to_numpy(),
        "ll_mean": table["metric_test_ll_mean"].to_numpy(dtype=float),
        "ll_std": table["metric_test_ll_std"].to_numpy(dtype=float),
        "elbo_mean": table["metric_test_elbo_mean"].to_numpy(dtype=float),
        "elbo_std": table["metric_test_elbo_std"].to_numpy(dtype=float),
    })


def curve_data(runs: pd.DataFrame, curves: pd.DataFrame,
               order: Sequence[str] = ()) -> pd.DataFrame | None:
    """Mean training bound over the finished seeds per variant and epoch.

    `runs` of one budget. Non-finite bounds (a diverging epoch) are left out. Columns:
    variant, epoch, mean, seeds. None without curves.
    """
    if curves is None or curves.empty or not {"run_id", "epoch", "train_bound"} <= set(
            curves.columns):
        return None
    finished = runs[runs["status"] == "finished"][["run_id", "variant"]]
    merged = curves.merge(finished, on="run_id", how="inner")
    merged = merged.assign(train_bound=pd.to_numeric(merged["train_bound"], errors="coerce"))
    merged = merged[np.isfinite(merged["train_bound"])]
    if merged.empty:
        return None
    table = (merged.groupby(["variant", "epoch"], sort=False)["train_bound"]
             .agg(mean="mean", seeds="count").reset_index())
    rank = {name: i for i, name in enumerate(order)}
    table["_rank"] = [rank.get(v, len(rank)) for v in table["variant"]]
    return table.sort_values(["_rank", "epoch"], kind="stable").drop(columns="_rank") \
        .reset_index(drop=True)


@dataclass
class SampleSet:
    """The images of one run: prior samples, test originals and their reconstructions."""

    variant: str
    run_id: str
    seed: int | None
    prior: np.ndarray  # (n, h, w) in [0, 1]
    original: np.ndarray
    reconstruction: np.ndarray


def _first_runs(runs: pd.DataFrame, run_ids: Iterable[str],
                order: Sequence[str]) -> list[tuple[str, pd.Series]]:
    """Per variant, its lowest-seed finished run among `run_ids`, variants in `order`."""
    candidates = runs[(runs["status"] == "finished") & runs["run_id"].isin(set(run_ids))]
    if "cfg_seed" in candidates.columns:
        candidates = candidates.sort_values("cfg_seed", kind="stable")
    rank = {name: i for i, name in enumerate(order)}
    firsts = [(str(variant), group.iloc[0])
              for variant, group in candidates.groupby("variant", sort=False)]
    return sorted(firsts, key=lambda vr: (rank.get(vr[0], len(rank)), vr[0]))


def _seed_of(run: pd.Series) -> int | None:
    seed = _py(run.get("cfg_seed"))
    return int(seed) if seed is not None else None


def sample_sets(runs: pd.DataFrame, samples: pd.DataFrame | None,
                order: Sequence[str] = ()) -> list[SampleSet]:
    """Per variant, the images of its lowest-seed finished run that has samples."""
    if samples is None or samples.empty:
        return []
    out = []
    for variant, run in _first_runs(runs, samples["run_id"], order):
        rows = samples[samples["run_id"] == run["run_id"]]
        images = {kind: _images(rows[rows["kind"] == kind]) for kind in SAMPLE_KINDS}
        if any(len(v) for v in images.values()):
            out.append(SampleSet(variant, str(run["run_id"]), _seed_of(run), images["prior"],
                                 images["original"], images["reconstruction"]))
    return out


@dataclass
class ImageRows:
    """A run's other images (conditional samples, completions, imputations): labelled rows."""

    variant: str
    run_id: str
    seed: int | None
    rows: list[tuple[str, np.ndarray]]  # (kind, (n, h, w) in [0, 1]) in stored order


def image_row_sets(runs: pd.DataFrame, samples: pd.DataFrame | None,
                   order: Sequence[str] = ()) -> list[ImageRows]:
    """Per variant, the image kinds beyond prior/original/reconstruction of its lowest-seed
    finished run, in the order the run stored them."""
    if samples is None or samples.empty:
        return []
    extra = samples[~samples["kind"].isin(SAMPLE_KINDS)]
    out = []
    for variant, run in _first_runs(runs, extra["run_id"], order):
        mine = extra[extra["run_id"] == run["run_id"]]
        rows = [(str(kind), _images(mine[mine["kind"] == kind]))
                for kind in dict.fromkeys(mine["kind"])]
        rows = [(kind, images) for kind, images in rows if len(images)]
        if rows:
            out.append(ImageRows(variant, str(run["run_id"]), _seed_of(run), rows))
    return out


def _images(rows: pd.DataFrame) -> np.ndarray:
    """(n, h, w) array from sample rows (sorted by index); malformed rows are left out."""
    images = []
    for _, row in rows.sort_values("index").iterrows():
        try:
            height, width = int(row["height"]), int(row["width"])
            pixels = np.asarray(row["pixels"], dtype=float)
        except (TypeError, ValueError):
            continue
        if height < 1 or width < 1 or pixels.size != height * width:
            continue
        images.append(np.clip(np.nan_to_num(pixels.reshape(height, width)), 0.0, 1.0))
    shapes = {im.shape for im in images}
    if not images or len(shapes) != 1:
        return np.zeros((0, 1, 1))
    return np.stack(images)


def reference_value_column(metric: str) -> tuple[str, float]:
    """(runs column, sign) giving a reference metric from our runs: test_nll is -test_ll,
    test_nelbo (a bound on -log p(x), as flow papers report) is -test_elbo."""
    if metric in ("test_nll", "nll"):
        return "metric_test_ll", -1.0
    if metric == "test_nelbo":
        return "metric_test_elbo", -1.0
    return (metric if metric.startswith("metric_") else f"metric_{metric}"), 1.0


def run_config(row: Mapping[str, Any]) -> RunConfig | None:
    """A stored run's RunConfig rebuilt from its cfg_ columns (None where it cannot be)."""
    known = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
    values: dict[str, Any] = {}
    for column, value in row.items():
        if not str(column).startswith("cfg_") or column[4:] not in known:
            continue
        key, value = column[4:], _py(value)
        if value is None:
            if key in ("train_size", "test_size"):
                values[key] = None
            continue
        if known[key].startswith("int") and isinstance(value, float) and value.is_integer():
            value = int(value)
        values[key] = value
    try:
        return config_from_dict(values)
    except BenchError:
        return None


def reference_matches(reference: Reference, row: Mapping[str, Any]) -> bool:
    """Whether a stored run (row of the runs table) is one `reference` applies to."""
    config = run_config(row)
    if config is not None:
        return reference.matches(config)
    return all(_key(_py(row.get(f"cfg_{k}"))) == _key(v) for k, v in reference.match.items())


def reproduction_label(budget: str, reference: Reference) -> str:
    """Whether ours at `budget` reproduces the published protocol (only at its budget)."""
    if budget == reference.budget:
        protocol = "paper" if reference.budget == "paper" else reference.budget
        return f"reproduction ({protocol} protocol)"
    return f"{budget} budget: not a reproduction"


def reference_rows(runs: pd.DataFrame, references: Sequence[Reference],
                   budgets: Sequence[str]) -> list[dict[str, Any]]:
    """One record per (reference, budget, matching variant): the published value beside the
    mean and std over our finished seeds, their difference (ours - paper) and the label
    saying whether the comparison is a reproduction; a reference nothing matches: "not run".
    """
    out = []
    matched_rows = {i: [bool(reference_matches(ref, row)) for _, row in runs.iterrows()]
                    for i, ref in enumerate(references)}
    for i, ref in enumerate(references):
        column, sign = reference_value_column(ref.metric)
        base = {"metric": ref.metric, "paper": ref.value, "source": ref.source,
                "reference_budget": ref.budget, "note": ref.note, "card": ref.card}
        matched = runs[pd.Series(matched_rows[i], index=runs.index, dtype=bool)] \
            if len(runs) else runs
        if matched.empty:
            out.append({**base, "budget": None, "variant": None, "mean": math.nan,
                        "std": math.nan, "diff": math.nan, "seeds": 0, "ours": "not run",
                        "verdict": f"not run (no run matches; a reproduction needs the "
                                   f"{ref.budget} budget)"})
            continue
        ordered = [b for b in budgets if b == ref.budget] + [b for b in budgets
                                                             if b != ref.budget]
        for budget in ordered:  # the reproduction (if it ran) first
            at = matched[matched["budget"] == budget]
            for variant, group in at.groupby("variant", sort=False):
                finished = group[group["status"] == "finished"]
                record = {**base, "budget": budget, "variant": variant,
                          "verdict": reproduction_label(budget, ref)}
                if column not in group.columns:
                    out.append({**record, "mean": math.nan, "std": math.nan, "diff": math.nan,
                                "seeds": 0, "ours": f"not recorded ({column})"})
                    continue
                mean, std, n = _mean_std(sign * _numeric(finished, column))
                out.append({**record, "mean": mean, "std": std, "diff": mean - ref.value,
                            "seeds": n, "ours": None if n else "no finished run"})
    return out


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


def provenance_items(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, text) pairs: commits, versions, devices, hosts, resources, time range."""
    n = len(runs)

    def counted(values: Iterable[Any]) -> str:
        values = ["unknown" if _missing(v) else str(v) for v in values]
        counts = pd.Series(values, dtype=object).value_counts(sort=False)
        if len(counts) == 1:
            return f"{counts.index[0]} (all {n} runs)"
        return "; ".join(f"{value} ({count} runs)" for value, count in counts.items())

    def column(name: str) -> pd.Series | None:
        return runs[name] if name in runs.columns else None

    items: list[tuple[str, str]] = []
    commits = column("sys_git_commit")
    if commits is not None:
        dirty = column("sys_git_dirty")
        labels = []
        for i, commit in enumerate(commits):
            text = "unknown" if _missing(commit) else str(commit)[:12]
            flag = None if dirty is None else _py(dirty.iloc[i])
            if flag in (True, "True", "true", 1):
                text += " (dirty: uncommitted changes)"
            labels.append(text)
        items.append(("git commit", counted(labels)))
    versions = []
    for name, label in (("sys_python", "Python"), ("sys_torch", "torch"),
                        ("sys_numpy", "numpy"), ("sys_ray", "Ray")):
        values = column(name)
        if values is not None:
            distinct = sorted({str(v) for v in values if not _missing(v)})
            versions.append(f"{label} {', '.join(distinct) or 'unknown'}")
    if versions:
        items.append(("versions", "; ".join(versions)))
    if column("sys_device_name") is not None or column("sys_device") is not None:
        device = column("sys_device")
        name = column("sys_device_name")
        labels = []
        for i in range(n):
            parts = [str(s.iloc[i]) for s in (device, name)
                     if s is not None and not _missing(s.iloc[i])]
            labels.append(": ".join(parts) if parts else "unknown")
        items.append(("devices", counted(labels)))
    for name, label in (("sys_hostname", "hosts"), ("sys_platform", "platforms")):
        if column(name) is not None:
            items.append((label, counted(column(name))))
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


# ==================================================================== document model
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str
    emphasis: bool = False  # a note, rendered in italics


@dataclass
class Bullets:
    items: list[tuple[str, str]]  # (bold label, text); label may be ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns


@dataclass
class Figure:
    filename: str  # the PNG, next to report.md
    caption: str
    number: int
    alt: str = ""  # short text for the image itself (the plot's title)


Block = Heading | Paragraph | Bullets | Table | Figure

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(text: str) -> str:
    """Text safe in Markdown (tables included): no emphasis, links, HTML or cell breaks."""
    text = " ".join(str(text).split())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Paragraph):
            text = md_escape(block.text)
            parts.append(f"*{text}*" if block.emphasis else text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(
                f"- **{md_escape(label)}:** {md_escape(text)}" if label else
                f"- {md_escape(text)}" for label, text in block.items))
        elif isinstance(block, Table):
            head = "| " + " | ".join(md_escape(h) for h in block.headers) + " |"
            rule = "| " + " | ".join("---:" if right else "---" for right in block.numeric) \
                + " |"
            rows = ["| " + " | ".join(md_escape(c) or " " for c in row) + " |"
                    for row in block.rows]
            parts.append("\n".join([head, rule, *rows]))
        elif isinstance(block, Figure):
            caption = md_escape(f"Figure {block.number}: {block.caption}")
            alt = md_escape(f"Figure {block.number}: {block.alt or block.caption}")
            parts.append(f"![{alt}]({block.filename})\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #1f2328;
       line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
.scroll { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
td:first-child { white-space: nowrap; }
th { background: #f6f8fa; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfcfd; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.9em; color: #57606a; margin-top: .3em; }
p.note { color: #57606a; font-style: italic; }
ul { padding-left: 1.4em; }
"""


def render_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str) -> str:
    """A self-contained page: inline CSS, every figure a data: URI from `images`."""
    esc = html.escape
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            cls = ' class="note"' if block.emphasis else ""
            body.append(f"<p{cls}>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(
                f"<li><strong>{esc(label)}:</strong> {esc(text)}</li>" if label else
                f"<li>{esc(text)}</li>" for label, text in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            def cell(tag: str, text: str, right: bool) -> str:
                cls = ' class="num"' if right else ""
                return f"<{tag}{cls}>{esc(text)}</{tag}>"

            head = "".join(cell("th", h, r) for h, r in zip(block.headers, block.numeric,
                                                           strict=True))
            rows = "".join(
                "<tr>" + "".join(cell("td", c, r) for c, r in zip(row, block.numeric,
                                                                  strict=True)) + "</tr>"
                for row in block.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                        f"<tbody>{rows}</tbody></table></div>")
        elif isinstance(block, Figure):
            caption = f"Figure {block.number}: {block.caption}"
            data = base64.b64encode(images[block.filename]).decode("ascii")
            alt = esc(f"Figure {block.number}: {block.alt or block.caption}")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ===================================================================== report sections
def format_mean_std(mean: float, std: float, spec: MetricSpec) -> str:
    """`mean ± std` in the metric's format; the std is left out with one seed."""
    if mean is None or not math.isfinite(mean):
        return "-"
    if std is None or not math.isfinite(std):
        return spec.format(mean)
    return f"{spec.format(mean)} ± {spec.format(std)}"


_NLL = MetricSpec("nll", "", 2)
# config keys a model family ignores, shown as "-" on its rows of the summary table
def summary_tables(summary: pd.DataFrame, axes: Sequence[str]) -> tuple[Table, Table | None]:
    """(quality table, cost table or None) of a `summarize_variants` frame."""
    quality = present_metrics(summary, QUALITY_METRICS)
    cost = present_metrics(summary, COST_METRICS)
    headers = ["variant", *axes, "seeds", *STATUS_COLUMNS, *metric_headings(summary, quality)]
    numeric = [False] * (1 + len(axes)) + [True] * (4 + len(quality))
    rows = []
    for _, row in summary.iterrows():
        family = _family(row)
        unused = family.unused if family is not None else frozenset()
        if not _num(row.get("cfg_capacity_max")) > 0:  # gamma etc. mean nothing without it
            unused = unused | {"gamma", "capacity_steps"}
        cells = [str(row["variant"]),
                 *("-" if a in unused else _fmt_value(row[a]) for a in axes),
                 str(row["seeds"]), *(str(row[s]) for s in STATUS_COLUMNS)]
        cells += [format_mean_std(row[f"{s.column}_mean"], row[f"{s.column}_std"], s)
                  for s in quality]
        rows.append(cells)
    first = Table(headers, rows, numeric)
    if not cost:
        return first, None
    rows = [[str(row["variant"])] + [format_mean_std(row[f"{s.column}_mean"],
                                                     row[f"{s.column}_std"], s) for s in cost]
            for _, row in summary.iterrows()]
    return first, Table(["variant", *(s.heading for s in cost)], rows,
                        [False] + [True] * len(cost))


def reference_table(records: Sequence[Mapping[str, Any]]) -> Table:
    headers = ["metric", "paper", "source", "budget", "variant", "ours", "ours - paper",
               "seeds", "comparison", "protocol card"]
    rows = []
    for r in records:
        ours = r["ours"] or format_mean_std(r["mean"], r["std"], _NLL)
        diff = f"{r['diff']:+.2f}" if math.isfinite(r["diff"]) else "-"
        card = r.get("card")
        rows.append([str(r["metric"]), f"{r['paper']:.2f}", str(r["source"]),
                     r["budget"] or "-", r["variant"] or "-", ours, diff, str(r["seeds"]),
                     r["verdict"], card.name if card is not None else "none"])
    return Table(headers, rows,
                 [False, True, False, False, False, True, True, True, False, False])


def card_blocks(card: Card | None, budgets: Sequence[str], rows: int) -> list[Block]:
    """A protocol card as a lead paragraph and one bullet per known difference: "vs paper"
    (the paper's text), "vs authors' code", and what code was read. `budgets`: the budgets
    of the references naming it (the protocol it describes); `rows`: table rows naming it."""
    if card is None:
        return [Paragraph(f"No protocol card for the {rows} row(s) above: their differences "
                          "from the published protocol are not checked.", emphasis=True)]
    where = ", ".join(dict.fromkeys(budgets)) or "its"
    lead = Paragraph(f"Protocol card {card.name} (named by the {rows} row(s) above): the known "
                     f"differences between our protocol at the {where} budget and the "
                     "published one.")
    items = [("vs paper", text) for text in card.paper]
    items += [("vs authors' code", text) for text in card.code]
    if card.source_code:
        items.append(("authors' code read", card.source_code))
    return [lead, Bullets(items)]


class _Report:
    """Accumulates blocks and figures for one report directory."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.blocks: list[Block] = []
        self.images: dict[str, bytes] = {}
        self._names: set[str] = set()

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, stem: str, caption: str, title: str, draw: Any) -> None:
        """Draw a PNG with `draw(path, title)` and add it as the next figure."""
        name = _safe_name(stem)
        candidate, i = name, 2
        while candidate in self._names:
            candidate, i = f"{name}-{i}", i + 1
        self._names.add(candidate)
        filename = f"{candidate}.png"
        path = self.out / filename
        draw(path, title)
        self.images[filename] = path.read_bytes()
        self.add(Figure(filename, caption, len(self.images), title))

    def plot(self, data: Any, stem: str, caption: str, title: str, draw: Any,
             **options: Any) -> bool:
        """Add the figure `draw(data, path, title=..., **options)`; nothing where `data` is
        None. Returns whether a figure was added."""
        if data is None:
            return False
        self.figure(stem, caption, title,
                    lambda path, title: draw(data, path, title=title, **options))
        return True


def _suite_section(report: _Report, data: SuiteData) -> None:
    runs, suite = data.runs, data.suite
    counts = {s: int((runs["status"] == s).sum()) for s in STATUS_COLUMNS}
    report.add(Heading(2, f"Suite {data.name}"))
    info = [("description", suite.description if suite is not None
             else f"unavailable ({data.suite_note})")]
    if suite is not None:
        info.append(("suite file", str(suite.path)))
    info.append(("budgets", ", ".join(
        f"{b} ({int((runs['budget'] == b).sum())} runs)" for b in data.budgets)))
    info.append(("runs", f"{len(runs)} ({', '.join(f'{v} {k}' for k, v in counts.items())})"))
    report.add(Bullets(info))
    if len(data.budgets) > 1:
        report.add(Paragraph("Several budgets are stored: each has its own tables and plots; "
                             "runs of different budgets are never averaged together.",
                             emphasis=True))

    order = [v.name for v in suite.variants] if suite is not None else []
    summaries = {}
    for budget in data.budgets:
        at = runs[runs["budget"] == budget]
        axes = variant_axes(at, suite)
        summary = summarize_variants(at, axes, order)
        summaries[budget] = summary
        _summary_section(report, data, budget, at, summary, axes)

    _reference_section(report, data)
    for budget in data.budgets:
        at = runs[runs["budget"] == budget]
        _plots_section(report, data, budget, at, summaries[budget], order)
    _provenance_section(report, data)


def _summary_section(report: _Report, data: SuiteData, budget: str, runs: pd.DataFrame,
                     summary: pd.DataFrame, axes: Sequence[str]) -> None:
    report.add(Heading(3, f"Summary: budget {budget}"))
    report.add(Paragraph(
        "Mean ± standard deviation over the finished seeds of each variant (the std is "
        "omitted with one seed). Log-likelihoods, ELBO, KL and distortion are in nats per "
        "test example; test LL is the IWAE estimate of log p(x) (higher is better). "
        "Sharpness is the Laplacian variance of the model's images divided by that of the "
        "test images (1 = as sharp as the data; lower = blurrier)."))
    quality, cost = summary_tables(summary, axes)
    report.add(quality)
    if cost is not None:
        report.add(Paragraph("Throughput and cost (mean ± std over seeds):"), cost)
    notes = _missing_metric_notes(runs, summary)
    if notes:
        report.add(Paragraph(" ".join(notes), emphasis=True))


def _missing_metric_notes(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    missing = sorted({label for column, label in NEW_METRICS.items()
                      if f"{column}_mean" not in summary.columns
                      or not summary[f"{column}_mean"].notna().any()})
    notes = []
    if missing:
        notes.append(f"Not recorded by these runs: {', '.join(missing)} (results written "
                     "before these metrics existed, or not measurable here).")
    if "metric_blur_reason" in runs.columns:
        reasons = sorted({str(r) for r in runs["metric_blur_reason"] if not _missing(r)
                          and str(r).strip()})
        if reasons:
            notes.append(f"Blur/sharpness not computed: {'; '.join(reasons)}.")
    return notes


def _reference_section(report: _Report, data: SuiteData) -> None:
    report.add(Heading(3, "Paper vs ours"))
    if data.suite is None:
        report.add(Paragraph(f"References unavailable ({data.suite_note}).", emphasis=True))
        return
    if not data.suite.references:
        report.add(Paragraph("The suite lists no published references.", emphasis=True))
        return
    report.add(Paragraph(
        "Published values beside ours (mean ± std over finished seeds of the matching runs, "
        "at each budget that ran). test_nll is -log p(x) in nats (lower is better; ours is "
        "-test LL), so a positive difference means ours is worse; the same holds for "
        "test_cll (-log p(missing | given)) and test_error (%), while for test_ll and "
        "accuracies a positive difference means ours is better. Only runs at the "
        "reference's own budget reproduce the published protocol; other budgets are shown "
        "for orientation and are not reproductions."))
    records = reference_rows(data.runs, data.suite.references, data.budgets)
    # one table per run of consecutive rows sharing a protocol card, each followed by its card
    # (in full the first time; a card shared by rows further down is referred back to)
    shown: set[str] = set()
    for _, group in itertools.groupby(records, key=lambda r: _card_name(r.get("card"))):
        group = list(group)
        card = group[0].get("card")
        report.add(reference_table(group))
        if card is not None and card.name in shown:
            report.add(Paragraph(f"Protocol card {card.name}: as listed above.", emphasis=True))
            continue
        report.add(*card_blocks(card, [r["reference_budget"] for r in group], len(group)))
        if card is not None:
            shown.add(card.name)
    budgets = {r.budget for r in data.suite.references}
    missing = sorted(b for b in budgets if b not in data.budgets)
    if missing:
        report.add(Paragraph(
            f"No run at the {', '.join(missing)} budget is stored, so no row above is a "
            "reproduction of the published protocol.", emphasis=True))
    notes = sorted({f"{r.source}: {r.note}" for r in data.suite.references if r.note})
    if notes:
        report.add(Bullets([("note", n) for n in notes]))


def _plot_bimodal_fits(*args, **kwargs):
    """bench.toys.bimodal.plot_fits, imported (with torch) only when a report draws it."""
    from bench.toys import bimodal

    return bimodal.plot_fits(*args, **kwargs)


def _plots_section(report: _Report, data: SuiteData, budget: str, runs: pd.DataFrame,
                   summary: pd.DataFrame, order: Sequence[str]) -> None:
    from bench import plots

    name = data.name
    stem = f"{name}-{budget}"
    where = f"suite {name}, budget {budget}"
    report.add(Heading(3, f"Plots: budget {budget}"))
    made = len(report.images)
    seeds = "error bars: std over seeds"

    report.plot(
        ll_vs_k_data(summary), f"{stem}-ll-vs-k",
        f"Test log-likelihood (nats, higher is better) against the number of samples k "
        f"in the training objective, VAE vs IWAE ({where}; {seeds}; variants with "
        "beta = 1).",
        f"Test log-likelihood vs k ({name}, {budget})", plots.ll_vs_k)
    report.plot(
        posterior_kl_vs_k_data(summary), f"{stem}-posterior-kl-vs-k",
        "Gaussian mixture of Le et al. 2019: exact KL(p(c|x) || q(c|x)) of the learned "
        f"inference network against the particles K, reverse (IWAE) vs forward (RWS) "
        f"({where}; {seeds}). Lower is a better inference network.",
        f"Inference network quality vs K ({name}, {budget})", plots.ll_vs_k,
        ylabel="KL(p(c|x) || q(c|x)) (nats, lower is better)",
        xlabel="K (particles, log scale)")
    report.plot(
        bimodal_fit_data(runs), f"{stem}-bimodal",
        "Bimodal toy: one Gaussian q fitted to a target with two well-separated modes by "
        "reverse KL(q||p) (mode-seeking) and forward KL(p||q) (mass-covering), drawn over "
        f"the target density ({where}).",
        f"One Gaussian fitted to two modes ({name}, {budget})", _plot_bimodal_fits)

    _family_figures(report, data, summary, runs, stem, where, seeds)

    if report.plot(
            rate_distortion_data(summary), f"{stem}-rate-distortion",
            f"Rate-distortion: rate KL(q(z|x) || p(z)) against distortion, nats per example, "
            f"one point per beta ({where}; {seeds}). Lower-left is better; beta trades one "
            "for the other.",
            f"Rate vs distortion ({name}, {budget})", plots.rate_distortion) \
            and not report.plot(
                sharpness_data(summary), f"{stem}-sharpness",
                f"Sharpness of prior samples and reconstructions against beta ({where}; "
                f"{seeds}): Laplacian variance of the model's images / of the test images; "
                "1.0 (dotted) = as sharp as the data, lower = blurrier.",
                f"Sharpness vs beta ({name}, {budget})", plots.sharpness_vs_beta):
        report.add(Paragraph("Sharpness vs beta: no sharpness recorded by these runs.",
                             emphasis=True))
    report.plot(
        posterior_bounds_data(summary), f"{stem}-posteriors",
        f"Test log-likelihood (IWAE estimate) and ELBO per posterior ({where}; {seeds}): "
        "a richer q closes the gap between the ELBO and log p(x).",
        f"What the posterior buys ({name}, {budget})", plots.posterior_bounds)
    report.plot(
        throughput_data(summary), f"{stem}-throughput",
        f"Training throughput per variant, examples per second (median over epochs after "
        f"the first; {where}; {seeds}).",
        f"Training throughput ({name}, {budget})", plots.throughput)
    if not report.plot(
            curve_data(runs, data.curves, order), f"{stem}-learning-curves",
            f"Learning curves: the training bound (nats per example, higher is better) per "
            f"epoch, mean over the finished seeds of each variant ({where}).",
            f"Training bound per epoch ({name}, {budget})", plots.learning_curves):
        report.add(Paragraph("Learning curves: no per-epoch curves stored.", emphasis=True))
    if len(report.images) == made:
        report.add(Paragraph("No plot: no finished run with metrics at this budget.",
                             emphasis=True))

    sets = sample_sets(runs, data.samples, order)
    extra = image_row_sets(runs, data.samples, order)
    if not sets and not extra:
        report.add(Paragraph("Samples: no sample images stored for these runs (results "
                             "written before samples were stored).", emphasis=True))
        return
    report.add(Heading(4, f"Samples: budget {budget}"))
    for rows in extra:
        seed = f"seed {rows.seed}" if rows.seed is not None else "one seed"
        report.plot(
            rows.rows, f"{stem}-images-{rows.variant}",
            f"{rows.variant} ({seed}, run {rows.run_id}): one row per kind of image, as "
            "labelled on the left (grayscale; 0.5 gray marks hidden pixels in masked inputs).",
            f"{rows.variant}: suite {name}, budget {budget}, {seed}",
            plots.image_rows)
    for images in sets:
        seed = f"seed {images.seed}" if images.seed is not None else "one seed"
        report.figure(
            f"{stem}-samples-{images.variant}",
            f"{images.variant} ({seed}, run {images.run_id}): samples from the prior (left) "
            "and test images, each row of originals above the row of their reconstructions "
            "(right); grayscale.",
            f"{images.variant}: suite {name}, budget {budget}, {seed}",
            lambda path, title, images=images: plots.sample_grid(
                images.prior, images.original, images.reconstruction, path, title=title))


def _family_figures(report: _Report, data: SuiteData, summary: pd.DataFrame,
                    runs: pd.DataFrame, stem: str, where: str, seeds: str) -> None:
    """The model families' own plots: EM mixture estimator convergence, CVAE quadrant
    completion and M2 error against their published values, inpainting scores."""
    from bench import plots

    name = data.name
    references = data.suite.references if data.suite is not None else ()
    report.plot(
        prior_iwae_data(runs), f"{stem}-prior-iwae",
        "Mixture of Bernoullis fitted by EM, where log p(x) is exact: the gap between the "
        "exact test log-likelihood and the IWAE estimate with q = p(z), against the number "
        f"of samples k ({where}; {seeds}). The estimate is a stochastic lower bound and "
        "converges to the exact value as k grows; q = p(z) is the worst proposal, so it "
        "needs many samples.",
        f"IWAE estimate with q = p(z) vs exact log p(x) ({name})", plots.ll_vs_k,
        log_y=True, ylabel="exact log p(x) - IWAE estimate (nats, log scale)",
        xlabel="k (samples from the prior, log scale)")

    panels = (
        ("metric_test_error", "labelled", summary["cfg_model"].isin(["m2", "classifier"])
         if "cfg_model" in summary.columns else None,
         "Semi-supervised M2: test error against the number of labelled examples, beside "
         "M2's classifier trained on the labelled examples alone (supervised only)",
         "labelled training examples N (log scale)", "test error (%, lower is better)", True),
        ("metric_test_cll", "given_quadrants", summary.get("cfg_condition") == "quadrants"
         if "cfg_condition" in summary.columns else None,
         "Quadrant completion: -log p(missing quadrants | given) against the quadrants given",
         "quadrants given", "-log p(missing | given) (nats per image, lower is better)",
         False),
    )
    for metric, axis, rows, caption, xlabel, ylabel, log_x in panels:
        if rows is None:
            continue
        table = axis_metric_data(summary, metric, axis, rows)
        if table is None:
            continue
        refs = axis_reference_data(summary[rows], references, metric, axis)
        report.figure(
            f"{stem}-{metric[len('metric_'):]}-vs-{axis}",
            f"{caption} ({where}; {seeds}); open diamonds: the published values (a "
            "reproduction only at their own budget).",
            f"{caption.split(':')[0]} ({name})",
            lambda path, title, table=table, refs=refs, xlabel=xlabel, ylabel=ylabel,
            log_x=log_x: plots.metric_vs_axis(table, refs, path, title=title, xlabel=xlabel,
                                              ylabel=ylabel, log_x=log_x))

    gain = semisupervised_data(summary)
    if gain is not None:
        report.add(Paragraph(
            f"What the unlabelled images buy ({where}): M2's test error beside the supervised-"
            "only baseline, M2's own classifier q(y|x) trained on the labelled cross-entropy "
            "alone from the same initial weights, on the same labelled images, with the same "
            "optimiser and number of steps (mean ± std over seeds; percentage points, "
            "negative = M2 better)."))
        report.add(semisupervised_table(gain))

    report.plot(
        disentanglement_data(runs), f"{stem}-disentanglement",
        "Disentanglement against beta (and the controlled-capacity objective, C = its "
        f"final capacity in nats): each dot one seed, bars the mean ± std ({where}). MIG and "
        "DCI are 0 for codes that mix the factors and 1 for codes that are the factors; the "
        "beta-VAE metric's chance level is 100 / (factors) %. Reconstruction shows what the "
        f"disentanglement costs. {factor_metric_sentence(runs)}",
        f"Disentanglement and reconstruction vs beta ({name})", plots.per_seed_panels,
        xlabel="objective")
    report.plot(
        unit_kl_data(runs), f"{stem}-unit-kl",
        "KL(q(z_j|x) || N(0, 1)) of each latent unit, averaged over the test set, units "
        f"sorted from most to least informative in each run, mean ± std over seeds ({where})"
        ". A unit near 0 carries no information; larger beta switches units off.",
        f"KL per latent unit ({name})", plots.profile_lines,
        xlabel="latent unit, by decreasing KL", ylabel="KL per unit (nats)")

    table = inpainting_data(runs)
    if table is not None:
        report.add(Paragraph(
            "Inpainting: -log p(missing pixels | observed) in nats per test image (summed over "
            "its missing pixels, averaged over images) and the % of missing pixels predicted "
            "wrongly, per mask and imputation method, for each input-dropout rate p used in "
            "training (mean ± std over seeds). One-pass: z ~ q(z | image with missing pixels "
            "zeroed); iterative: alternate z ~ q(z | filled image) and x_missing ~ p(x | z); "
            "matched: the iterative chain with the encoder shown the filled image with "
            "training-style pixel dropout at the model's own p (what a dropout-trained encoder "
            "saw in training). At p = 0 the matched chain is the iterative chain: its numbers "
            "are the iterative ones, not rerun, and it has no bar of its own."))
        report.add(inpainting_table(table))
        lls = dropout_ll_data(runs)
        if lls is not None:
            report.add(Paragraph(
                "Test log-likelihood beside the effective sample size of its importance weights "
                "(ESS / k_eval, mean ± std over seeds): the test LL is an importance-sampling "
                "estimate with q(z|x) as the proposal, and a dropout-trained encoder is scored "
                "here on complete test images, off the distribution it was trained on, so a "
                "small ESS warns that its estimate may be looser (further below log p(x)) "
                "than the plain VAE's, and part of its lower test LL may be the estimator, not "
                "the model."))
            report.add(dropout_ll_table(lls))
        table = table[~((table["method"] == INPAINT_METHODS["matched"])
                        & (table["input_dropout"] == 0))]  # p = 0: the iterative bar again
        table = table.sort_values("input_dropout", kind="stable")  # bars in order of p
        bars = table.assign(group=table["mask"],
                            bar=[f"p={p:g}, {m}" for p, m in
                                 zip(table["input_dropout"], table["method"], strict=True)],
                            mean=table["nll_mean"], std=table["nll_std"])
        report.plot(
            bars, f"{stem}-inpainting",
            f"Inpainting: -log p(missing | observed) per mask, training input dropout p and "
            f"imputation method ({where}; {seeds}). Lower is better.",
            f"Imputation of missing pixels ({name})",
            plots.grouped_bars, ylabel="-log p(missing | observed) (nats per image)")


def _provenance_section(report: _Report, data: SuiteData) -> None:
    report.add(Heading(3, "Provenance"))
    items = provenance_items(data.runs)
    report.add(Bullets(items) if items else Paragraph("No provenance recorded.",
                                                      emphasis=True))
    report.add(Heading(3, "Failed and diverged runs"))
    failures = failure_rows(data.runs)
    if not failures:
        report.add(Paragraph("None: every run finished."))
        return
    rows = [[str(f["variant"]), "-" if f["seed"] is None else str(f["seed"]), f["budget"],
             f["status"], f["error"] or "-",
             "-" if f["diverged_epoch"] is None else str(f["diverged_epoch"])]
            for f in failures]
    report.add(Table(["variant", "seed", "budget", "status", "error", "diverged at epoch"],
                     rows, [False, True, False, False, False, True]))


# ============================================================================ public API
def build_report(results: str | Path, out: str | Path, *, suites: Sequence[str] | None = None,
                 skip_corrupt: bool = False) -> Path:
    """Write report.md, a self-contained report.html and the PNGs into `out`.

    `suites`: the suites to report (default: every suite in the store). Nothing is trained:
    the report is a function of the Parquet files (and the suite files, where found).
    Returns the path of report.md. An empty store or a suite without runs is a BenchError.
    """
    root = store.results_dir(results)
    runs = store.load_runs(root, skip_corrupt=skip_corrupt)
    if runs.empty:
        raise BenchError(f"no runs in results directory {root}: nothing to report")
    present = sorted({str(s) for s in runs["suite"].dropna()})
    chosen = list(dict.fromkeys(suites)) if suites else present
    for name in chosen:
        if name not in present:
            raise BenchError(f"suite '{name}' has no runs in {root} (suites with runs: "
                             f"{', '.join(present)})")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create report directory {out}: "
                         f"{err.strerror or err}") from None

    report = _Report(out)
    report.add(Heading(1, f"vaebench report: {', '.join(chosen)}"))
    report.add(Bullets([
        ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("results", str(root)),
        ("suites", ", ".join(chosen)),
    ]))
    for name in chosen:
        data = load_suite_data(root, name, skip_corrupt=skip_corrupt,
                               runs=runs[runs["suite"] == name])
        _suite_section(report, data)

    md_path = out / "report.md"
    md_path.write_text(render_markdown(report.blocks), encoding="utf-8")
    title = f"vaebench report: {', '.join(chosen)}"
    (out / "report.html").write_text(render_html(report.blocks, report.images, title),
                                     encoding="utf-8")
    return md_path


def summary_text(results: str | Path, suite: str, *, budget: str | None = None,
                 skip_corrupt: bool = False) -> str:
    """The per-variant summary of `suite` as fixed-width text, one table per budget (or only
    `budget`)."""
    root = store.results_dir(results)
    runs = store.load_runs(root, suite=suite, skip_corrupt=skip_corrupt)
    if budget is not None and not runs.empty:
        runs = runs[runs["budget"] == budget]
    if runs.empty:
        raise BenchError(f"suite '{suite}' has no runs in {root}")
    runs = prepare_runs(runs)
    stored = list(dict.fromkeys(runs["budget"]))
    suite_obj, _ = suite_file(suite, stored)
    order = [v.name for v in suite_obj.variants] if suite_obj is not None else []
    parts = []
    for budget in _budget_order(stored, suite_obj):
        at = runs[runs["budget"] == budget]
        axes = variant_axes(at, suite_obj)
        quality, cost = summary_tables(summarize_variants(at, axes, order), axes)
        parts.append(f"{suite}, budget {budget} (mean ± std over seeds; nats per example)")
        parts.append(format_text_table(quality))
        if cost is not None:
            parts.append(format_text_table(cost))
    return "\n\n".join(parts)


def format_text_table(table: Table) -> str:
    """A Table as aligned plain text (for the terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) if table.rows else len(h)
              for i, h in enumerate(table.headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(cells, widths, table.numeric, strict=True))

    return "\n".join([line(table.headers), line(["-" * w for w in widths]),
                      *(line(r) for r in table.rows)]).rstrip()


# ============================================================================== helpers
def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _py(value: Any) -> Any:
    """numpy scalars/arrays -> Python values and lists; NaN/NA -> None."""
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if _missing(value):
        return None
    return value


def _key(value: Any) -> Any:
    """A hashable, comparable form of a config value (lists -> tuples, NaN -> None)."""
    value = _py(value)
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    return value


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _mean_std(values: Any) -> tuple[float, float, int]:
    """Mean, std (ddof=1; NaN with fewer than two) and count of the finite `values`."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = len(array)
    return (float(array.mean()) if n else math.nan,
            float(array.std(ddof=1)) if n > 1 else math.nan, n)


def _num(value: Any) -> float:
    value = _py(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else math.inf


def _fmt_value(value: Any) -> str:
    value = _py(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def _when(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "figure"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _card_name(card: Card | None) -> str | None:
    return None if card is None else card.name
