"""Aggregate stored runs over seeds: one row per variant, mean and std of each metric.

Pure functions of the runs DataFrame (`bench.store.load_runs`); rendering is separate.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

# (column in the runs table, heading, digits); log-likelihoods in nats per example
SUMMARY_METRICS: tuple[tuple[str, str, int], ...] = (
    ("metric_test_ll", "test LL", 2),
    ("metric_test_elbo", "ELBO", 2),
    ("metric_rate", "KL", 2),
    ("metric_distortion", "distortion", 2),
    ("metric_active_units", "active", 1),
    ("metric_train_samples_per_s", "train ex/s", 0),
)


def summarize(
    runs: pd.DataFrame, axes: Sequence[str] = (), order: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per variant (config without the seed): its distinguishing settings `axes`
    (RunConfig field names), seed and status counts, and mean/std over finished seeds of
    every summary metric (columns `<metric>_mean`, `<metric>_std`). Variants named in
    `order` come first, in that order (a suite's order), the rest as they appear."""
    if runs.empty:
        return pd.DataFrame(columns=["variant", "seeds", "finished", "failed"])
    rank = {name: i for i, name in enumerate(dict.fromkeys(order))}
    groups = sorted(runs.groupby("variant", sort=False),
                    key=lambda item: rank.get(item[0], len(rank)))
    rows = []
    for variant, group in groups:
        finished = group[group["status"] == "finished"]
        row = {"variant": variant}
        for axis in axes:
            value = group[f"cfg_{axis}"].iloc[0]
            row[axis] = value.tolist() if hasattr(value, "tolist") else value
        row["seeds"] = int(group["cfg_seed"].nunique())
        row["finished"] = len(finished)
        row["failed"] = int((group["status"] != "finished").sum())
        for column, _, _ in SUMMARY_METRICS:
            values = pd.to_numeric(finished.get(column, pd.Series(dtype=float)), errors="coerce")
            row[f"{column}_mean"] = values.mean()
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(table: pd.DataFrame, axes: Sequence[str] = ()) -> str:
    """Fixed-width text table, `mean ± std` per metric (std omitted with one seed)."""
    if table.empty:
        return "(no runs)"
    headings = ["variant", *axes, "seeds", "ok/fail"] + [h for _, h, _ in SUMMARY_METRICS]
    lines = []
    for _, row in table.iterrows():
        cells = [str(row["variant"]), *(_cell(row[a]) for a in axes), str(row["seeds"]),
                 f"{row['finished']}/{row['failed']}"]
        for column, _, digits in SUMMARY_METRICS:
            cells.append(mean_std(row[f"{column}_mean"], row[f"{column}_std"], digits))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headings)]
    render = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([render(headings), render(["-" * w for w in widths])]
                     + [render(c) for c in lines])


def mean_std(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "-"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(value) -> str:
    return str(value)
