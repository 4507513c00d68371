"""Paper vs ours: which stored runs a published reference applies to, and one record per
(reference, budget, matching variant) with our mean and std over seeds, the difference and
whether the comparison is a reproduction (only at the reference's own budget)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bench.config import PARAMS_PREFIX, RunConfig, config_from_dict
from bench.errors import BenchError
from bench.report.values import _key, _mean_std, _missing, _numeric, _py
from bench.suite import Reference


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
        if str(column).startswith(f"cfg_{PARAMS_PREFIX}") and not _missing(_py(value)):
            value = _py(value)  # "params.<name>": config_from_dict folds them into params
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # a column with NaN stores an int param as a float
            values[column[4:]] = value
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
