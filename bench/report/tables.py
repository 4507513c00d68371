"""The report's tables: prepared data in, `Table` blocks out, every number as mean ± std in
its metric's format."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bench.report.data import (
    COST_METRICS,
    QUALITY_METRICS,
    STATUS_COLUMNS,
    MetricSpec,
    _family,
    metric_headings,
    present_metrics,
)
from bench.report.document import Table
from bench.report.values import _fmt_value, _num


def format_mean_std(mean: float, std: float, spec: MetricSpec) -> str:
    """`mean ± std` in the metric's format; the std is left out with one seed."""
    if mean is None or not math.isfinite(mean):
        return "-"
    if std is None or not math.isfinite(std):
        return spec.format(mean)
    return f"{spec.format(mean)} ± {spec.format(std)}"


_NLL = MetricSpec("nll", "", 2)

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
