"""The report's tables: prepared data in, `Table` blocks out, every number as mean ± std in
its metric's format."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bench.config import RunConfig
from bench.families.registry import FAMILIES, Family
from bench.report.data import (
    COST_METRICS,
    QUALITY_METRICS,
    STATUS_COLUMNS,
    MetricSpec,
    SuiteOverview,
    _family,
    metric_headings,
    plugin_metrics,
    present_metrics,
)
from bench.report.document import Link, Table
from bench.report.values import _fmt_value, _key, _num

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _unused(family: Family | None) -> frozenset[str]:
    """The config keys a family's rows leave unused: its registry record's `unused`, and
    every key another family owns and it does not."""
    if family is None:
        return frozenset()
    return family.unused | (FAMILIES.owned_keys() - family.owns)


def format_mean_std(mean: float, std: float, spec: MetricSpec) -> str:
    """`mean ± std` in the metric's format; the std is left out with one seed."""
    if mean is None or not math.isfinite(mean):
        return "-"
    if std is None or not math.isfinite(std):
        return spec.format(mean)
    return f"{spec.format(mean)} ± {spec.format(std)}"


_NLL = MetricSpec("nll", "", 2)

def runs_cell(row: pd.Series) -> str:
    """The runs of a variant in one cell: "3 finished", or "2 of 3 finished, 1 failed"."""
    seeds, finished = int(row["seeds"]), int(row["finished"])
    others = [f"{int(row[s])} {s}" for s in STATUS_COLUMNS[1:] if int(row[s])]
    if finished == seeds and not others:
        return f"{finished} finished"
    return ", ".join([f"{finished} of {seeds} finished", *others])


def family_summary_tables(summary: pd.DataFrame, axes: Sequence[str]
                          ) -> list[tuple[str, Table]]:
    """One (family heading, quality table) per model family in `summary`, in order of first
    appearance: each with the axes its family uses (not in its registry record's `unused`,
    and varying within its rows when it has several; `model` is the heading) and the metrics
    its rows record, so a suite mixing families gives tables that fit the page."""
    families = [_family(row) for _, row in summary.iterrows()]
    names = [f.name if f is not None else "unknown" for f in families]
    out = []
    for name in dict.fromkeys(names):
        rows = summary[[n == name for n in names]]
        family = families[names.index(name)]
        unused = _unused(family) | {"model"}
        kept = [a for a in axes if a not in unused and (
            len({_key(v) for v in rows[a]}) > 1 if len(rows) > 1  # tells the rows apart
            else _key(rows[a].iloc[0]) != _key(_DEFAULTS.get(a)))]  # one row: set by it
        heading = (family.label or "VAE family") if family is not None else name
        if family is not None and family.toy:
            heading = f"toy {family.name}"
        out.append((heading, summary_tables(rows, kept)[0]))
    return out


def summary_tables(summary: pd.DataFrame, axes: Sequence[str]) -> tuple[Table, Table | None]:
    """(quality table, cost table or None) of a `summarize_variants` frame."""
    quality = present_metrics(summary, QUALITY_METRICS
                              + tuple(plugin_metrics(summary.columns, machine=False)))
    cost = present_metrics(summary, COST_METRICS
                           + tuple(plugin_metrics(summary.columns, machine=True)))
    # rows of a plugin's code say whose (name, version, code hash) beside the variant
    plugins = ["plugin"] if "plugin" in summary.columns and summary["plugin"].any() else []
    headers = ["variant", *plugins, *axes, "runs", *metric_headings(summary, quality)]
    numeric = [False] * (1 + len(plugins) + len(axes)) + [True] * (1 + len(quality))
    rows = []
    for _, row in summary.iterrows():
        unused = _unused(_family(row))
        if not _num(row.get("cfg_capacity_max")) > 0:  # gamma etc. mean nothing without it
            unused = unused | {"gamma", "capacity_steps"}
        cells = [str(row["variant"]), *(row[p] or "-" for p in plugins),
                 *("-" if a in unused else _fmt_value(row[a]) for a in axes),
                 runs_cell(row)]
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


def semisupervised_table(data: pd.DataFrame) -> Table:
    spec = MetricSpec("metric_test_error", "", 2)
    rows = [[str(r["labelled"]), format_mean_std(r["m2_mean"], r["m2_std"], spec),
             format_mean_std(r["sup_mean"], r["sup_std"], spec), f"{r['diff']:+.2f}",
             f"{r['m2_seeds']} / {r['sup_seeds']}"] for _, r in data.iterrows()]
    return Table(["labelled N", "M2 test error (%)", "supervised only (%)",
                  "M2 - supervised (points)", "seeds (M2 / sup.)"], rows,
                 [True, True, True, True, True])


def index_table(rows: Sequence[SuiteOverview], pages: Mapping[str, str]) -> Table:
    """The report's index: one row per suite, its name linking to its page (`pages`: suite ->
    the page's stem), with its budgets, runs per status and when its last run ended."""
    cells: list[list[str | Link]] = []
    for row in rows:
        cells.append([
            Link(row.name, pages[row.name]), row.description,
            ", ".join(f"{b} ({n})" for b, n in row.budgets), f"{row.runs:,}",
            *(f"{n:,}" for _, n in row.status),
            row.last_run.strftime("%Y-%m-%d %H:%M UTC") if row.last_run is not None
            else "not recorded"])
    return Table(["suite", "description", "budgets (runs)", "runs", *STATUS_COLUMNS,
                  "last run ended"], cells, [False, False, False, True, True, True, True, True])
