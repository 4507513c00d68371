"""Which commit moved a metric (issue 26, part 4): a noise-aware bisection over a commit
range, each probe run with that commit's own code (bench.history.track_commit: a temporary
worktree) and recorded in the history, so a second bisection reuses it.

The two ends are measured first (the good end's mean over seeds is the "good" value, the bad
end's the "bad" one); their difference must exceed the metric's practical threshold
(bench.metrics.catalog), else there is nothing to find. A probe's mean m over its n seeds
has standard error se (its seeds' spread, pooled with both ends', over sqrt(n)); the probe
is called good (bad) only when m is nearer the good (bad) value by more than 2 x Z x se and
no farther from it than the metric's threshold (the same code on the same seeds repeats its
value exactly on a CPU, so a probe of either end's code lands on it): a probe between the
ends (a commit that moved the metric halfway) is neither. Otherwise it is measured again with
twice the seeds, up to `max_seeds`; if it still cannot be told, the answer is "undecided
between X and Y", never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import history
from bench.errors import BenchError
from bench.metrics import catalog

Z = 2.0  # half-width of the interval a probe must clear the midpoint with, in standard errors


@dataclass(frozen=True)
class Probe:
    commit: history.Commit
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


@dataclass(frozen=True)
class Bisection:
    first_bad: history.Commit | None  # None: undecided (or nothing moved)
    last_good: history.Commit | None
    good: Probe
    bad: Probe
    probes: tuple[Probe, ...]
    verdict: str  # "found", "undecided", "no change"
    undecided: tuple[history.Commit, history.Commit] | None = None


def _values(results: Path, suite: str, variant: str, metric: str, commit: history.Commit,
            machine: str) -> tuple[float, ...]:
    rows = history.load_history(results, suite)
    if rows.empty:
        return ()
    mine = rows[(rows["hist_commit"] == commit.sha) & (rows["variant"] == variant)
                & (rows["hist_machine"] == machine) & (rows["status"] == "finished")]
    column = f"metric_{metric}"
    if column not in mine.columns:
        return ()
    return tuple(float(v) for v in mine[column].dropna())


def bisect(repo: Path, results: Path, suite: str, variant: str, metric: str, good: str,
           bad: str, *, budget: str | None = None, machine: str | None = None,
           executor: str = "ray", max_seeds: int = 8,
           say: Callable[[str], None] = print) -> Bisection:
    """Bisect `good`..`bad` of `repo` for the commit that moved `metric` of `variant`."""
    record = catalog.lookup(metric)
    if not record.judged:
        raise BenchError(f"metric '{metric}' has no direction in the catalog: nothing to "
                         "bisect for")
    machine = machine or history.machine_name()
    chain = [history.current_commit(repo, good)] + [
        history.current_commit(repo, sha) for sha in history.commits_in(repo, f"{good}..{bad}")]
    if len(chain) < 2:
        raise BenchError(f"{bad} is not a descendant of {good}: no commits to bisect")

    def probe(commit: history.Commit, seeds: int | None = None) -> Probe:
        values = _values(results, suite, variant, metric, commit, machine)
        if not values or (seeds is not None and len(values) < seeds):
            done = history.track_commit(suite, budget, commit.sha, results, repo,
                                        machine=machine, executor=executor, variant=variant,
                                        seeds=seeds)
            values = _values(results, suite, variant, metric, commit, machine)
            say(f"  ran {commit.short} with {len(values)} seeds in {done.seconds:.1f} s")
        if not values:
            raise BenchError(f"no finished run of variant '{variant}' with metric '{metric}' "
                             f"at {commit.short} (is it a variant of suite '{suite}' there?)")
        found = Probe(commit, values)
        say(f"  {commit.short} \"{commit.subject[:60]}\": {metric} {found.mean:.4g} over "
            f"{len(values)} seeds")
        return found

    ends = probe(chain[0]), probe(chain[-1])
    threshold = record.threshold * (abs(ends[0].mean) if record.relative else 1.0)
    if abs(ends[1].mean - ends[0].mean) <= threshold:
        say(f"no change: {ends[0].mean:.4g} -> {ends[1].mean:.4g} is within the threshold "
            f"{threshold:g} of {metric}")
        return Bisection(None, None, ends[0], ends[1], ends, "no change")
    spread = [np.var(p.values, ddof=1) for p in ends if len(p.values) > 1]
    lo, hi, probes = 0, len(chain) - 1, list(ends)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        seeds = None
        while True:
            found = probe(chain[mid], seeds)
            probes.append(found)
            variances = spread + ([np.var(found.values, ddof=1)] if len(found.values) > 1
                                  else [])
            se = math.sqrt(np.mean(variances) / len(found.values)) if variances else 0.0
            to_good, to_bad = (abs(found.mean - e.mean) for e in ends)
            near_good = to_good < to_bad
            near, far = (to_good, to_bad) if near_good else (to_bad, to_good)
            # clearly nearer one end, and within the metric's threshold of it
            if near + Z * se < far - Z * se and near <= threshold:
                break
            n = len(found.values)
            if n >= max_seeds or (seeds is not None and n < seeds):  # or no more seeds ran
                say(f"undecided between {chain[lo].short} and {chain[hi].short}: "
                    f"{chain[mid].short} measures {found.mean:.4g} +- {se:.2g} with {n} seeds, "
                    f"not within the threshold {threshold:g} of either end ({ends[0].mean:.4g}"
                    f", {ends[1].mean:.4g})")
                return Bisection(None, None, ends[0], ends[1], tuple(probes), "undecided",
                                 (chain[lo], chain[hi]))
            seeds = min(max_seeds, 2 * n)
        if near_good:
            lo = mid
        else:
            hi = mid
    last = {p.commit.sha: p for p in probes}  # each commit's latest (most seeds) probe
    before, after = last[chain[lo].sha], last[chain[hi].sha]
    say(f"first bad commit: {chain[hi].sha} \"{chain[hi].subject}\" ({chain[hi].date[:10]}): "
        f"{metric} {before.mean:.4g} over {len(before.values)} seeds at {chain[lo].short} "
        f"(last good) -> {after.mean:.4g} over {len(after.values)} seeds")
    return Bisection(chain[hi], chain[lo], ends[0], ends[1], tuple(probes), "found")
