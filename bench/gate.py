"""The merge gate: suites/gate.toml (every model family on digits, trained enough to learn)
checked metric by metric against pinned values, each with its own threshold.

`tools/gate_spread.py` measures the spread the thresholds come from and writes the pinned
file (tests/gate_pinned.toml); `tests/test_gate.py` runs the gate. This module is what both
share: which metrics are pinned (every one the catalog does not mark as measuring the
machine), how the pinned file reads, and the check itself, whose threshold for a metric is
its pinned one capped by the catalog's practical threshold, and whose messages say from the
catalog's direction whether a metric moved for the better or the worse.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import tomllib

from bench import store
from bench.errors import BenchError
from bench.metrics import catalog
from bench.metrics.catalog import MACHINE_METRICS

SUITE = "gate"
BUDGET = "cpu"

@dataclass(frozen=True)
class Pin:
    value: float
    tol: float  # |measured - value| <= tol passes


def pinned_metrics(results: str | Path) -> dict[str, dict[str, float]]:
    """{variant: {metric: value}} of the gate's runs under `results`: every finite scalar
    metric except those that measure the machine (catalog.MACHINE_METRICS). A run that did
    not finish is an error."""
    out: dict[str, dict[str, float]] = {}
    for _, row in store.load_runs(results, suite=SUITE).iterrows():
        if row["status"] != "finished":
            raise BenchError(f"gate run {row['variant']} is {row['status']}: {row['error']}")
        out[row["variant"]] = {
            col.removeprefix("metric_"): float(v) for col, v in row.items()
            if col.startswith("metric_") and col.removeprefix("metric_") not in MACHINE_METRICS
            and isinstance(v, numbers.Number) and math.isfinite(v)
        }
    return out


def load_pins(path: str | Path) -> dict[str, dict[str, Pin]]:
    """The pinned file: a table per variant, `metric = { value = .., tol = .. }` in each."""
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    return {variant: {metric: Pin(float(p["value"]), float(p["tol"]))
                      for metric, p in metrics.items()}
            for variant, metrics in raw.items()}


def check(got: dict[str, dict[str, float]], pins: dict[str, dict[str, Pin]]) -> list[str]:
    """One line per violation: a value outside its threshold, a variant or metric measured
    but not pinned (so a new metric cannot slip past the gate), or pinned but not measured."""
    problems = []
    for variant in sorted(set(got) | set(pins)):
        if variant not in pins:
            problems.append(f"{variant}: ran but is not pinned")
            continue
        if variant not in got:
            problems.append(f"{variant}: pinned but did not run")
            continue
        measured, pinned = got[variant], pins[variant]
        for metric in sorted(set(measured) | set(pinned)):
            if metric not in pinned:
                problems.append(f"{variant}.{metric}: measured ({measured[metric]:.6g}) but not "
                                "pinned")
            elif metric not in measured:
                problems.append(f"{variant}.{metric}: pinned but not measured")
            else:
                pin, value = pinned[metric], measured[metric]
                tol = tolerance(metric, pin)
                if not abs(value - pin.value) <= tol:
                    problems.append(f"{variant}.{metric}: {value:.6g}, pinned {pin.value:.6g} "
                                    f"+- {tol:.3g} (off by {value - pin.value:+.3g}"
                                    f"{_which_way(metric, value - pin.value)})")
    return problems


def tolerance(metric: str, pin: Pin) -> float:
    """The pinned threshold (from measured spread), never looser than the catalog's practical
    threshold of a judged metric: the gate passes nothing `compare` would call a change."""
    record = catalog.find(metric)
    if record is None or not record.judged:
        return pin.tol
    practical = record.threshold * (abs(pin.value) if record.relative else 1.0)
    return min(pin.tol, practical)


def _which_way(metric: str, delta: float) -> str:
    """', worse' / ', better' by the catalog's direction of `metric`; '' if it has none."""
    record = catalog.find(metric)
    if record is None or not record.judged:
        return ""
    better = (delta > 0) == (record.better == catalog.HIGHER)
    return ", better" if better else ", worse"
