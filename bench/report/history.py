"""The history part of a report (issue 26, part 3): per suite, what `vaebench track` kept and
where `bench.steps` finds the series moved, as a table of steps (regressions that nothing
after them undid first) and one graph per series that moved; the series that never moved are
counted, not drawn, so 1,000 commits of 16 variants stay a page, not a wall of graphs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.document import Bullets, Heading, Paragraph, Table

#: the most series a report draws (those with steps; regressions first)
MAX_GRAPHS = 24


def open_regressions(found: pd.DataFrame) -> pd.DataFrame:
    """The regressions no later step of the same series moved back (an improvement after a
    regression closes it; a declared step does not)."""
    if found.empty:
        return found
    keep = []
    for _, steps in found.groupby(["variant", "metric", "machine", "execution"], sort=False):
        steps = steps.sort_values("index")
        for i, step in enumerate(steps.itertuples()):
            later = steps.iloc[i + 1:]
            if step.verdict == "regressed" and not (later["verdict"] == "improved").any():
                keep.append(step.Index)
    return found.loc[keep]


def _step_rows(found: pd.DataFrame) -> list[list[str]]:
    rows = []
    for s in found.itertuples():
        p = "-" if s.p_value is None or (isinstance(s.p_value, float) and math.isnan(s.p_value)) \
            else f"{s.p_value:.2g}"
        rows.append([s.verdict, s.commit[:12], str(s.date)[:10], str(s.subject)[:60],
                     str(s.variant), str(s.metric), f"{s.machine}, {s.execution}",
                     f"{s.before:.4g} -> {s.after:.4g}", f"{s.delta:+.4g}", p, s.reason or ""])
    return rows


_STEP_HEADERS = ["verdict", "commit", "date", "subject", "variant", "metric",
                 "machine, execution", "before -> after", "delta", "p", "declared"]


def history_section(report: Any, results: Path, suite: str, level: int = 3) -> bool:
    """Add the history of `suite` to `report` (bench.report.sections._Report); False, adding
    nothing, where the suite has no history."""
    from bench import history

    rows = history.load_history(results, suite)
    if rows.empty:
        return False
    from bench import plots, steps  # scipy and ruptures: a second, only for a history

    found = steps.find_steps(rows)
    commits = rows.drop_duplicates("hist_commit")
    series = list(steps.series(rows))
    counts = found["verdict"].value_counts().to_dict() if not found.empty else {}
    report.add(Heading(level, f"History: suite {suite}"))
    report.add(Bullets([
        ("commits tracked", f"{len(commits)}, {str(commits['hist_commit_date'].iloc[0])[:10]}"
                            f" to {str(commits['hist_commit_date'].iloc[-1])[:10]}"),
        ("machines", ", ".join(sorted(map(str, rows["hist_machine"].unique())))),
        ("series", f"{len(series)} (variant x judged metric x machine x execution)"),
        ("steps", ", ".join(f"{counts.get(v, 0)} {v}" for v in steps.VERDICTS)),
    ]))
    report.add(Paragraph(
        "Steps: change points of each series (ruptures' PELT on the per-commit means scaled "
        "by the seeds' spread), kept beyond the metric's practical threshold and with "
        f"Welch's t-test p < {steps.ALPHA:g} on the seeds either side; a step at a PROTOCOL "
        "bump or a torch change is declared, never an alarm (bench/steps.py)."))
    opened = open_regressions(found)
    report.add(Heading(level + 1, "Open regressions"))
    if opened.empty:
        report.add(Paragraph("None.", emphasis=True))
    else:
        report.add(Table(_STEP_HEADERS, _step_rows(opened), [False] * 7 + [True] * 3 + [False]))
    declared = steps.declared_changes(rows)
    report.add(Heading(level + 1, "Declared changes"))
    if declared.empty:
        report.add(Paragraph("None: no PROTOCOL bump or torch change in the history.",
                             emphasis=True))
    else:
        report.add(Table(["commit", "date", "subject", "machine", "declared"],
                         [[d.commit[:12], str(d.date)[:10], str(d.subject)[:60], str(d.machine),
                           d.reason] for d in declared.itertuples()], [False] * 5))
    if not found.empty:
        report.add(Heading(level + 1, "Every step"))
        report.add(Table(_STEP_HEADERS, _step_rows(found), [False] * 7 + [True] * 3 + [False]))
    moved = {(s.variant, s.metric, s.machine, s.execution) for s in found.itertuples()}
    ranked = sorted((key for key, _ in series if key in moved),
                    key=lambda k: not ((found["variant"] == k[0]) & (found["metric"] == k[1])
                                       & (found["verdict"] == "regressed")).any())
    drawn = set(ranked[:MAX_GRAPHS])
    for key, points in series:
        if key not in drawn:
            continue
        variant, metric, machine, execution = key
        mine = found[(found["variant"] == variant) & (found["metric"] == metric)
                     & (found["machine"] == machine) & (found["execution"] == execution)]
        report.figure(f"history-{suite}-{variant}-{metric}-{machine}",
                      f"{metric} of {variant} on {machine} ({execution}) over {len(points)} "
                      "tracked commits: mean over seeds, band = lowest to highest seed, "
                      "steps marked (red regressed, green improved, grey declared).",
                      f"{variant}: {metric} ({machine})",
                      lambda path, title, p=points, m=mine,
                      d=set(declared.loc[declared["machine"] == machine, "commit"]):
                      plots.history_series(p, m, path, title=title, declared=d))
    quiet = len(series) - len(moved)
    report.add(Paragraph(
        f"{quiet} series did not move and are not drawn"
        + (f"; {len(moved) - len(drawn)} more that moved are in the table only"
           if len(moved) > len(drawn) else "") + ".", emphasis=True))
    return True
