"""Steps over a metric's history (issue 26, part 2): where along the commits a series of seed
results moved, and whether the move is a regression, an improvement or a declared change.

A series is one (suite, variant, metric, machine, execution) of the history store
(bench.history): at each tracked commit, in history order, the metric's values over the seeds.
Change points are found by `ruptures` (Truong, Oudre & Vayatis 2020), PELT with the least
squares cost (its compiled KernelCPD, linear kernel) on the per-commit means scaled by their
noise: the mean of n seeds at a commit
has standard error s / sqrt(n), s the seed spread pooled over every commit of the series
(where the commits have one seed each, s comes from the median absolute difference of
successive commits). PELT minimises the sum of squared deviations from a piecewise-constant
fit plus PENALTY per change point, exactly (no greedy search), in linear time. ruptures over
asv's step_detect because it is a maintained library with the exact PELT search and several
costs, while asv's is code inside asv; its weighting by each point's uncertainty is ours: the
scaled series has unit noise, so one penalty serves every metric.

A change point is reported as a step only when it matters and is not noise, as `compare`
judges two stores: the mean of the seeds after it (up to the next change point) differs from
the mean before it (back to the previous one) by more than the metric's practical threshold
(bench.metrics.catalog), and, with at least 2 seeds a side, Welch's t-test on those seeds
gives p < ALPHA. The metric's direction makes it a regression or an improvement, unless the
commit changed what runs compute on purpose: a bump of bench.config.PROTOCOL or another torch
version between the two commits makes the step "declared", shown but never an alarm.

The penalty and ALPHA were chosen on simulated histories (tests/test_steps.py): 100 commits,
2 seeds each, the seed spread of the committed bench baseline per (variant, metric), 20
histories per (variant, metric): pure noise raised an alarm in 2 of 1,280 series (0.16 %;
penalty 9: 3.6 %); a step of twice the threshold at commit 50 is found (within 2 commits, as
a regression) in 96.2 % of the 1,000 series whose seed spread is at most 3x the threshold,
and in 78 % of all: where seeds spread 3-13x
the threshold (vae-beta0's log-likelihoods, iwae-k50's ELBO, active units), a move of twice
the threshold is within the noise of 100 commits x 2 seeds, and a lower penalty does not
find it either (it only adds false alarms). Track such series with more seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from bench.metrics import catalog

#: PELT's cost per change point on the noise-scaled series (BIC-like: ~2 log n for n = 100
#: is 9.2; a larger value keeps small noise bumps from becoming candidates at all)
PENALTY = 15.0
#: Welch's test on the seeds either side of a change point (as bench.compare)
ALPHA = 0.05
SERIES_KEY = ("variant", "metric", "hist_machine", "hist_execution")
VERDICTS = ("regressed", "improved", "declared")


@dataclass(frozen=True)
class Point:
    """One commit of a series: its seed values and what it ran with."""

    commit: str
    values: tuple[float, ...]
    protocol: int | None = None
    torch: str | None = None
    date: str = ""
    subject: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


@dataclass(frozen=True)
class Step:
    """A change point that passed the threshold and the test."""

    index: int  # position in the series of the first commit after the step
    commit: str  # that commit
    before: float  # mean of the seeds from the previous change point to the step
    after: float  # mean of the seeds from the step to the next change point
    p_value: float | None  # Welch's test (None with fewer than 2 seeds a side)
    verdict: str  # regressed, improved or declared
    reason: str = ""  # what was declared: "protocol 3 -> 4", "torch 2.12 -> 2.13"

    @property
    def delta(self) -> float:
        return self.after - self.before


def noise_scale(points: Sequence[Point]) -> float:
    """The seed spread s of a series: pooled over the commits with 2+ seeds, else from the
    median absolute successive difference of the per-commit values (s ~ MAD / 0.954 for the
    difference of two normals). 0 when every value is the same."""
    pooled = [(len(p.values) - 1, float(np.var(p.values, ddof=1)))
              for p in points if len(p.values) > 1]
    dof = sum(d for d, _ in pooled)
    if dof > 0:
        return math.sqrt(sum(d * v for d, v in pooled) / dof)
    means = np.array([p.mean for p in points])
    if len(means) < 3:
        return 0.0
    return float(np.median(np.abs(np.diff(means)))) / 0.954


def change_points(points: Sequence[Point], penalty: float = PENALTY) -> list[int]:
    """PELT's change points of the noise-scaled per-commit means: indices i where a new
    segment starts at points[i] (0 < i < len(points))."""
    import ruptures

    if len(points) < 2:
        return []
    means = np.array([p.mean for p in points])
    scale = noise_scale(points)
    if scale == 0.0:  # no noise at all: every change is a step
        return [i for i in range(1, len(means)) if means[i] != means[i - 1]]
    seeds = float(np.median([len(p.values) for p in points]))
    signal = (means - means.mean()) * math.sqrt(seeds) / scale  # unit noise per commit
    # the least-squares (l2) cost is KernelCPD's linear kernel, whose PELT is compiled:
    # the same change points as ruptures.Pelt(model="l2") (checked on 200 random series),
    # over 1,000x faster (0.1 ms against 0.1 s for 100 commits)
    ends = ruptures.KernelCPD(kernel="linear", min_size=1).fit(signal.reshape(-1, 1)).predict(
        pen=penalty)
    return [int(e) for e in ends if e < len(points)]


def judge(points: Sequence[Point], metric: str, penalty: float = PENALTY,
          alpha: float = ALPHA) -> list[Step]:
    """The steps of one series of `metric` (a catalog name; `judged` metrics only)."""
    record = catalog.lookup(metric)
    cuts = change_points(points, penalty)
    steps = []
    bounds = [0, *cuts, len(points)]
    for j, cut in enumerate(cuts):
        left = [v for p in points[bounds[j]:cut] for v in p.values]
        right = [v for p in points[cut:bounds[j + 2]] for v in p.values]
        before, after = float(np.mean(left)), float(np.mean(right))
        threshold = record.threshold * (abs(before) if record.relative else 1.0)
        if abs(after - before) <= threshold:
            continue
        p_value = None
        if len(left) >= 2 and len(right) >= 2:
            if np.var(left) == 0 and np.var(right) == 0:
                p_value = 0.0  # exact values either side, and they differ
            else:
                p_value = float(stats.ttest_ind(left, right, equal_var=False).pvalue)
            if not p_value < alpha:
                continue
        a, b = points[cut - 1], points[cut]
        reasons = []
        if a.protocol is not None and b.protocol is not None and a.protocol != b.protocol:
            reasons.append(f"protocol {a.protocol} -> {b.protocol}")
        if a.torch and b.torch and a.torch != b.torch:
            reasons.append(f"torch {a.torch} -> {b.torch}")
        better = (after > before) == (record.better == catalog.HIGHER)
        verdict = "declared" if reasons else ("improved" if better else "regressed")
        steps.append(Step(cut, b.commit, before, after, p_value, verdict, "; ".join(reasons)))
    return steps


def series(history: pd.DataFrame) -> Iterator[tuple[tuple, list[Point]]]:
    """(key, points) per series of a history frame (bench.history.load_history): key =
    (variant, metric, machine, execution) for each judged metric the rows hold; points in
    history order (commit date, then the order tracked), finished runs only."""
    if history.empty:
        return
    finished = history[history["status"] == "finished"]
    order = {c: i for i, c in enumerate(dict.fromkeys(finished["hist_commit"]))}
    judged = [c for c in finished.columns if c.startswith("metric_")
              and (r := catalog.find(c)) is not None and r.judged]
    for (variant, machine, execution), rows in finished.groupby(
            ["variant", "hist_machine", "hist_execution"], sort=False):
        meta = rows.groupby("hist_commit", sort=False).first()
        commits = sorted(meta.index, key=order.__getitem__)
        for column in judged:
            values = pd.to_numeric(rows[column], errors="coerce")
            by_commit = values.groupby(rows["hist_commit"], sort=False).agg(list)
            points = []
            for commit in commits:
                kept = tuple(float(v) for v in by_commit[commit] if not math.isnan(v))
                if not kept:
                    continue
                first = meta.loc[commit]
                points.append(Point(
                    commit, kept, protocol=_int_or_none(first.get("protocol")),
                    torch=first.get("sys_torch"), date=str(first.get("hist_commit_date", "")),
                    subject=str(first.get("hist_subject", ""))))
            if len(points) >= 2:
                yield (variant, column.removeprefix("metric_"), machine, execution), points


def declared_changes(history: pd.DataFrame) -> pd.DataFrame:
    """The commits of a history (bench.history.load_history) that changed what runs compute
    on purpose, per machine: a PROTOCOL bump or another torch version than the commit before
    it. Columns: machine, commit, date, subject, reason. Shown on the history page whether or
    not a metric moved there; a step at one is `declared`, never an alarm."""
    rows = []
    if history.empty:
        return pd.DataFrame(rows, columns=["machine", "commit", "date", "subject", "reason"])
    for machine, group in history.groupby("hist_machine", sort=False):
        firsts = group.groupby("hist_commit", sort=False).first()
        previous = None
        for commit, row in firsts.iterrows():
            if previous is not None:
                reasons = []
                a, b = _int_or_none(previous.get("protocol")), _int_or_none(row.get("protocol"))
                if a is not None and b is not None and a != b:
                    reasons.append(f"protocol {a} -> {b}")
                ta, tb = previous.get("sys_torch"), row.get("sys_torch")
                if isinstance(ta, str) and isinstance(tb, str) and ta != tb:
                    reasons.append(f"torch {ta} -> {tb}")
                if reasons:
                    rows.append({"machine": machine, "commit": commit,
                                 "date": str(row.get("hist_commit_date", "")),
                                 "subject": str(row.get("hist_subject", "")),
                                 "reason": "; ".join(reasons)})
            previous = row
    return pd.DataFrame(rows, columns=["machine", "commit", "date", "subject", "reason"])


def _int_or_none(value) -> int | None:
    try:
        return None if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def find_steps(history: pd.DataFrame) -> pd.DataFrame:
    """Every step of every series of a history frame, one row each: variant, metric, machine,
    execution, commit, index, before, after, delta, p_value, verdict, reason, date, subject."""
    rows = []
    for (variant, metric, machine, execution), points in series(history):
        for step in judge(points, metric):
            point = points[step.index]
            rows.append({"variant": variant, "metric": metric, "machine": machine,
                         "execution": execution, "commit": step.commit, "index": step.index,
                         "before": step.before, "after": step.after, "delta": step.delta,
                         "p_value": step.p_value, "verdict": step.verdict,
                         "reason": step.reason, "date": point.date, "subject": point.subject})
    return pd.DataFrame(rows, columns=["variant", "metric", "machine", "execution", "commit",
                                       "index", "before", "after", "delta", "p_value",
                                       "verdict", "reason", "date", "subject"])
