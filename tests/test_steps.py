"""Steps over history (issue 26, part 2): detection measured on simulated histories with the
catalog's thresholds and the seed noise of the committed bench baseline, and the verdicts
(direction, declared changes) on small exact series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import steps
from bench.metrics import catalog
from bench.steps import Point, judge

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "bench.parquet"
COMMITS, SEEDS, REPEATS = 100, 2, 20


def noise_specs() -> list[tuple[str, str, float, float, float]]:
    """(variant, metric, mean, seed sd, threshold) of every judged model metric of every
    variant of the committed bench baseline (2 seeds each)."""
    base = pd.read_parquet(BASELINE)
    base = base[base["status"] == "finished"]
    specs = []
    for variant, rows in base.groupby("variant"):
        for column in rows.columns:
            record = catalog.find(column) if column.startswith("metric_") else None
            if record is None or not record.judged or record.machine:
                continue
            values = pd.to_numeric(rows[column], errors="coerce").dropna()
            if len(values) < 2:
                continue
            mean, sd = float(values.mean()), float(values.std(ddof=1))
            threshold = record.threshold * (abs(mean) if record.relative else 1.0)
            specs.append((variant, column.removeprefix("metric_"), mean, sd, threshold))
    return specs


@pytest.fixture(scope="module")
def simulated():
    """Per simulated series: (sd / threshold, any alarm on pure noise, a planted step of twice
    the threshold found) over REPEATS histories of COMMITS commits x SEEDS seeds per spec."""
    rng = np.random.default_rng(25)
    out = []
    for _, metric, mean, sd, threshold in noise_specs():
        worse = -1.0 if catalog.lookup(metric).better == catalog.HIGHER else 1.0
        for _ in range(REPEATS):
            values = rng.normal(mean, sd, size=(COMMITS, SEEDS))
            noise = judge([Point(str(i), tuple(v)) for i, v in enumerate(values)], metric)
            values[COMMITS // 2:] += worse * 2 * threshold
            planted = judge([Point(str(i), tuple(v)) for i, v in enumerate(values)], metric)
            out.append((sd / threshold,
                        any(s.verdict in ("regressed", "improved") for s in noise),
                        any(s.verdict == "regressed" and abs(s.index - COMMITS // 2) <= 2
                            for s in planted)))
    return np.array(out, dtype=float)


def test_pure_noise_raises_at_most_one_alarm_in_a_hundred_series(simulated):
    # Guards against: a change-point search that takes seed noise for steps (a penalty too
    # low, no threshold or no Welch test behind it): CI would cry wolf on every push.
    assert len(simulated) >= 1000
    assert simulated[:, 1].mean() <= 0.01


def test_a_step_of_twice_the_threshold_is_found_where_the_seeds_allow(simulated):
    # Guards against: steps lost to a penalty too high, the wrong direction or a threshold
    # taken relative where it is absolute. Where the seed spread is at most 3x the threshold
    # a step of 2x the threshold is 3.3+ standard errors of a 50/50 split of 100 commits x 2
    # seeds; beyond that no method finds it in 100 commits (the note gives the overall rate).
    measurable = simulated[simulated[:, 0] <= 3.0]
    assert len(measurable) >= 0.7 * len(simulated)
    assert measurable[:, 2].mean() >= 0.95


def series_of(values, metric="test_ll", **kw) -> list[Point]:
    return [Point(f"c{i}", tuple(v), **{k: w[i] for k, w in kw.items()})
            for i, v in enumerate(values)]


def test_a_step_is_judged_by_the_metrics_direction_and_the_protocol_is_declared():
    flat = [[-90.0, -90.2]] * 10
    worse = [[-91.0, -91.2]] * 10
    [step] = judge(series_of(flat + worse), "test_ll")  # log-likelihood down: worse
    assert (step.index, step.commit, step.verdict) == (10, "c10", "regressed")
    assert step.delta == pytest.approx(-1.0)
    [step] = judge(series_of(worse + flat), "test_ll")
    assert step.verdict == "improved"
    [step] = judge(series_of([[30.0, 31.0]] * 10 + [[25.0, 26.0]] * 10), "test_error")
    assert step.verdict == "improved"  # an error rate (%) down is better
    protocols = [3] * 10 + [4] * 10
    [step] = judge(series_of(flat + worse, protocol=protocols), "test_ll")
    assert (step.verdict, step.reason) == ("declared", "protocol 3 -> 4")
    torches = ["2.12.0"] * 10 + ["2.13.0"] * 10
    [step] = judge(series_of(flat + worse, torch=torches), "test_ll")
    assert (step.verdict, step.reason) == ("declared", "torch 2.12.0 -> 2.13.0")


def test_a_move_inside_the_threshold_or_the_noise_is_no_step():
    small = [[-90.0, -90.02]] * 10 + [[-90.05, -90.07]] * 10  # 0.05 nats: under 0.1
    assert judge(series_of(small), "test_ll") == []
    rng = np.random.default_rng(0)
    noisy = rng.normal(-90, 3.0, size=(40, 2))  # 3 nats of seed noise, nothing moved
    assert [s for s in judge(series_of(noisy), "test_ll") if s.verdict != "declared"] == []


def test_series_come_from_the_history_in_commit_order_per_machine_and_execution():
    rows = []
    for i, (commit, value) in enumerate([("a", -90.0), ("b", -90.0), ("c", -92.0),
                                         ("d", -92.0)]):
        for seed in (0, 1):
            rows.append({"variant": "v", "status": "finished", "hist_commit": commit,
                         "hist_machine": "box", "hist_execution": "eager",
                         "hist_commit_date": f"2026-01-0{i + 1}", "hist_subject": commit,
                         "protocol": 3, "sys_torch": "2.13.0",
                         "metric_test_ll": value + 0.01 * seed, "metric_train_seconds": 1.0})
    history = pd.DataFrame(rows)
    found = steps.find_steps(history)
    assert found[["variant", "metric", "commit", "verdict"]].values.tolist() == [
        ["v", "test_ll", "c", "regressed"]]  # train_seconds is recorded, never judged
    assert dict(steps.series(history)).keys() == {("v", "test_ll", "box", "eager")}


def test_the_steps_command_reads_the_history_and_fails_ci_on_a_new_regression(tmp_path,
                                                                               capsys):
    # Guards against: a CI job that passes with a regression at the commit it just tracked
    # (the recipe's purpose), or fails on an old one that was already reported.
    from bench import history
    from bench.cli import main

    def track(i: int, value: float) -> None:
        commit = history.Commit(f"{i:040x}", f"2026-01-{i + 1:02d}T00:00:00+00:00",
                                f"commit {i}", False)
        runs = pd.DataFrame([{"run_id": f"r{seed}", "variant": "vae", "status": "finished",
                              "protocol": 3, "sys_torch": "2.13.0", "cfg_seed": seed,
                              "metric_test_ll": value + 0.01 * seed} for seed in (0, 1)])
        history.append(tmp_path, "smoke", commit, "box", runs)

    for i in range(12):
        track(i, -90.0)
    assert main(["steps", "smoke", "--results", str(tmp_path), "--fail-on-new"]) == 0
    track(12, -91.0)  # the newest commit loses a nat
    assert main(["steps", "smoke", "--results", str(tmp_path), "--fail-on-new"]) == 1
    out = capsys.readouterr().out
    assert "regressed" in out and f"{12:040x}"[:12] in out and "commit 12" in out
    assert main(["steps", "smoke", "--results", str(tmp_path)]) == 0  # reported, no alarm
    track(13, -91.0)  # no longer new: an older commit's regression fails no later job
    assert main(["steps", "smoke", "--results", str(tmp_path), "--fail-on-new"]) == 0
    assert main(["steps", "nothing", "--results", str(tmp_path)]) == 2


def test_the_history_page_lists_open_regressions_and_draws_only_series_that_moved(tmp_path):
    # Guards against: a page of one graph per series at 1,000 commits (unreadable), an old
    # regression a later improvement undid still listed as open, a declared step as open.
    from bench import history
    from bench.report import build_history_report
    from bench.report.history import open_regressions

    for i in range(30):
        commit = history.Commit(f"{i + 1:x}" * 40, f"2026-02-{i // 24 + 1:02d}T{i % 24:02d}:00:00"
                                "+00:00", f"commit {i}", False)
        rows = []
        for variant, value in (("vae", -90.0 - (0.5 if 10 <= i < 20 else 0.0)),
                               ("iwae", -88.0 - (0.5 if i >= 20 else 0.0)), ("flat", -80.0)):
            rows += [{"run_id": f"{variant}{seed}", "variant": variant, "status": "finished",
                      "protocol": 3, "sys_torch": "2.13.0", "metric_test_ll": value + 0.01 * seed}
                     for seed in (0, 1)]
        history.append(tmp_path, "s", commit, "box", pd.DataFrame(rows))
    found = steps.find_steps(history.load_history(tmp_path, "s"))
    assert sorted(zip(found["variant"], found["verdict"], strict=True)) == [
        ("iwae", "regressed"), ("vae", "improved"), ("vae", "regressed")]
    assert open_regressions(found)["variant"].tolist() == ["iwae"]  # vae's was undone
    page = build_history_report(tmp_path, tmp_path / "page", "s")
    text = page.read_text()
    assert "Open regressions" in text and "1 series did not move" in text
    assert sorted(p.name for p in (tmp_path / "page").glob("*.png")) == [
        "history-s-iwae-test_ll-box.png", "history-s-vae-test_ll-box.png"]
