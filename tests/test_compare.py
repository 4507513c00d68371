"""bench.compare: verdicts per variant and metric between a baseline and a candidate store."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench import compare as cmp
from bench import store
from bench.config import RunConfig
from bench.errors import BenchError

VAE = RunConfig(epochs=1, k_eval=10)
IWAE = RunConfig(epochs=1, k_eval=10, objective="iwae", k=5)
NOISE = (0.0, 0.03, -0.02)


def row(cfg: RunConfig, seed: int, *, test_ll: float, suite: str = "s1",
        device: str = "cpu", status: str = "finished", prov: dict | None = None,
        **metrics) -> dict:
    cfg = cfg.replace(seed=seed)
    return store.run_row(suite=suite, variant=cfg.label, config=cfg, status=status,
                         metrics={"test_ll": test_ll, **metrics},
                         provenance={"device_name": device, **(prov or {})}, budget="smoke")


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def side(cfg: RunConfig = VAE, ll: float = -90.0, seeds: int = 3, **kw) -> list[dict]:
    return [row(cfg, s, test_ll=ll + NOISE[s % 3], **kw) for s in range(seeds)]


def write(results, rows: list[dict]) -> None:
    for r in rows:
        store.write_run(results, r)


def by_metric(verdicts, metric: str) -> list[cmp.Verdict]:
    return [v for v in verdicts if v.metric == metric]


def test_planted_regression_exits_1(tmp_path):
    write(tmp_path / "base", side(VAE, -90.0) + side(IWAE, -88.0))
    write(tmp_path / "cand", side(VAE, -91.0) + side(IWAE, -88.0))
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "cand")
    assert code == 1
    verdicts = cmp.compare(cmp.load_side(tmp_path / "base"), cmp.load_side(tmp_path / "cand"))
    ll = {v.label: v for v in by_metric(verdicts, "metric_test_ll")}
    assert ll["vae"].verdict == "regressed"
    assert ll["vae"].test == cmp.WELCH and ll["vae"].p_value < 0.05
    assert ll["vae"].delta == pytest.approx(-1.0, abs=1e-9)
    assert (ll["vae"].baseline_n, ll["vae"].candidate_n) == (3, 3)
    assert ll["iwae-k5"].verdict == "unchanged"
    assert "regressed" in text and "Summary: 1 regressed" in text


def test_identical_candidate_is_unchanged(tmp_path):
    rows = side(VAE, -90.0, train_samples_per_s=1000.0) + side(IWAE, -88.0)
    write(tmp_path / "base", rows)
    write(tmp_path / "cand", rows)
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "cand")
    assert code == 0
    verdicts = cmp.compare(frame(rows), frame(rows))
    assert verdicts and {v.verdict for v in verdicts} == {"unchanged"}
    # columns absent on both sides (test_elbo, eval throughput) give no verdict at all
    assert {v.metric for v in verdicts} == {"metric_test_ll", "metric_train_samples_per_s"}


def test_improvement():
    verdicts = cmp.compare(frame(side(VAE, -90.0)), frame(side(VAE, -89.0)))
    (ll,) = by_metric(verdicts, "metric_test_ll")
    assert ll.verdict == "improved" and ll.delta == pytest.approx(1.0)
    assert not cmp.has_regression(verdicts)


def test_small_difference_within_threshold_is_unchanged():
    verdicts = cmp.compare(frame(side(VAE, -90.0)), frame(side(VAE, -90.05)))
    assert by_metric(verdicts, "metric_test_ll")[0].verdict == "unchanged"


def test_beyond_threshold_but_noisy_is_not_significant():
    base = [row(VAE, s, test_ll=v) for s, v in enumerate((-90.0, -85.0, -95.0))]
    cand = [row(VAE, s, test_ll=v) for s, v in enumerate((-90.5, -85.5, -95.5))]
    (ll,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_test_ll")
    assert ll.verdict == "unchanged" and ll.note == "not significant" and ll.p_value > 0.05


def test_missing_variant_is_reported_not_a_regression(tmp_path):
    write(tmp_path / "base", side(VAE, -90.0) + side(IWAE, -88.0))
    write(tmp_path / "cand", side(VAE, -90.0))
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "cand")
    assert code == 0
    verdicts = cmp.compare(cmp.load_side(tmp_path / "base"), cmp.load_side(tmp_path / "cand"))
    (missing,) = [v for v in verdicts if v.verdict == "missing"]
    assert missing.label == "iwae-k5" and missing.metric == "*"
    assert "candidate" in missing.note and missing.baseline_n == 3
    assert "missing" in text
    # the other way round: new in the candidate
    (new,) = [v for v in cmp.compare(frame(side(VAE)), frame(side(VAE) + side(IWAE)))
              if v.verdict == "missing"]
    assert "baseline" in new.note and new.candidate_n == 3


def test_unfinished_runs_do_not_count():
    base = side(VAE, -90.0)
    cand = side(VAE, -90.0) + [row(VAE, 7, test_ll=-200.0, status="diverged")]
    (ll,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_test_ll")
    assert ll.verdict == "unchanged" and ll.candidate_n == 3


def test_one_seed_threshold_alone_decides():
    verdicts = cmp.compare(frame(side(VAE, -90.0, seeds=1)), frame(side(VAE, -90.5, seeds=1)))
    (ll,) = by_metric(verdicts, "metric_test_ll")
    assert ll.verdict == "regressed"
    assert ll.test == cmp.THRESHOLD_ONLY == "threshold only (fewer than 2 seeds)"
    assert ll.p_value is None and math.isnan(ll.baseline_std)
    assert "threshold only" in cmp.render_markdown(verdicts)


def test_seed_is_not_part_of_the_match():
    base = [row(VAE, 0, test_ll=-90.0)]
    cand = [row(VAE, 5, test_ll=-90.0)]
    (ll,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_test_ll")
    assert ll.verdict == "unchanged"
    assert '"seed"' not in ll.variant_key and '"objective":"vae"' in ll.variant_key


def test_throughput_on_different_devices_is_not_comparable():
    base = side(VAE, train_samples_per_s=1000.0, device="cpu-a")
    cand = side(VAE, train_samples_per_s=500.0, device="cpu-b")
    verdicts = cmp.compare(frame(base), frame(cand))
    (tp,) = by_metric(verdicts, "metric_train_samples_per_s")
    assert tp.verdict == "not comparable"
    assert tp.note == "different setups: cpu-a (eager) vs cpu-b (eager)"
    assert not cmp.has_regression(verdicts)
    # several devices on one side is not comparable either
    mixed = [row(VAE, s, test_ll=-90.0, train_samples_per_s=1000.0, device=d)
             for s, d in enumerate(("cpu-a", "cpu-b", "cpu-a"))]
    (tp,) = by_metric(cmp.compare(frame(mixed), frame(mixed)), "metric_train_samples_per_s")
    assert (tp.verdict, tp.note) == ("not comparable", "mixed setups: cpu-a (eager), "
                                     "cpu-b (eager) vs cpu-a (eager), cpu-b (eager)")


EAGER = {"compiled": False, "eval_compiled": False, "stack_size": 1}


@pytest.mark.parametrize("execution, label", [
    ({**EAGER, "compiled": True}, "compiled step"),
    ({**EAGER, "eval_compiled": True}, "compiled estimate"),
    ({**EAGER, "stack_size": 4}, "eager, stack of 4"),
])
def test_speed_of_another_execution_is_not_comparable(tmp_path, execution, label):
    # Guards against: a run with --compile on or in a stack judged against an eager solo
    # baseline on the same CPU, its speed-up reported as an improvement of the code (or a
    # stack's per-run share as a regression), while its model metrics still count.
    write(tmp_path / "base", side(VAE, train_samples_per_s=1000.0, prov=EAGER))
    write(tmp_path / "cand", side(VAE, train_samples_per_s=1600.0, prov=execution))
    verdicts = cmp.compare(cmp.load_side(tmp_path / "base"), cmp.load_side(tmp_path / "cand"))
    (tp,) = by_metric(verdicts, "metric_train_samples_per_s")
    assert (tp.verdict, tp.note) == ("not comparable",
                                     f"different setups: cpu (eager) vs cpu ({label})")
    (ll,) = by_metric(verdicts, "metric_test_ll")
    assert ll.verdict == "unchanged"


def test_rows_older_than_the_execution_columns_ran_eager_and_solo(tmp_path):
    # Guards against: the committed baselines (written before sys_compiled existed; a store
    # mixing them reads the column as null) counting as another setup, which would switch
    # off the speed gate of `make regress`.
    base = [row(VAE, s, test_ll=-90.0, train_samples_per_s=1000.0 + 10 * s) for s in range(3)]
    cand = [row(VAE, s, test_ll=-90.0, train_samples_per_s=800.0 + 10 * s, prov=EAGER)
            for s in range(3)]
    write(tmp_path / "base", base)
    write(tmp_path / "mixed", base[:1] + cand[1:])
    write(tmp_path / "cand", cand)
    verdicts = cmp.compare(cmp.load_side(tmp_path / "base"), cmp.load_side(tmp_path / "cand"))
    (tp,) = by_metric(verdicts, "metric_train_samples_per_s")
    assert tp.verdict == "regressed"
    assert cmp._setups(cmp.load_side(tmp_path / "mixed")) == ["cpu (eager)"]


@pytest.mark.parametrize("seconds, verdict", [(0.01, "not comparable"), (2.0, "regressed")])
def test_a_rate_timed_too_briefly_is_not_judged(seconds, verdict):
    # Guards against: `make regress SUITE=smoke` failing on a throughput timed over 10 ms of
    # training (two reruns of the same code gave "regressed" and "unchanged"), and the
    # floor switching off the gate of runs timed for seconds.
    base = [row(VAE, s, test_ll=-90.0, train_samples_per_s=1000.0 + 10 * s,
                train_seconds=seconds) for s in range(3)]
    cand = [row(VAE, s, test_ll=-90.0, train_samples_per_s=800.0 + 10 * s,
                train_seconds=seconds * 1.25) for s in range(3)]
    (tp,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_train_samples_per_s")
    assert tp.verdict == verdict
    if verdict == "not comparable":
        assert tp.note == "timed over 0.01 s: too short to judge a speed (at least 1 s)"


def test_throughput_same_device_20_percent_slower_regresses():
    base = [row(VAE, s, test_ll=-90.0, train_samples_per_s=1000.0 + 10 * s) for s in range(3)]
    cand = [row(VAE, s, test_ll=-90.0, train_samples_per_s=800.0 + 10 * s) for s in range(3)]
    verdicts = cmp.compare(frame(base), frame(cand))
    (tp,) = by_metric(verdicts, "metric_train_samples_per_s")
    assert tp.verdict == "regressed" and tp.test == cmp.WELCH
    # 3% slower is within the 5% relative threshold
    cand = [row(VAE, s, test_ll=-90.0, train_samples_per_s=970.0 + 10 * s) for s in range(3)]
    (tp,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_train_samples_per_s")
    assert tp.verdict == "unchanged"


def test_zero_variance_different_means_is_significant():
    base = [row(VAE, s, test_ll=-90.0) for s in range(3)]
    cand = [row(VAE, s, test_ll=-91.0) for s in range(3)]
    (ll,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_test_ll")
    assert ll.verdict == "regressed" and ll.p_value == 0.0


def test_lower_is_better_orientation():
    # the catalog's direction of posterior_kl (lower is better) turns the sign of the verdict
    base = [row(VAE, s, test_ll=-90.0, posterior_kl=0.5 + 0.01 * s) for s in range(3)]
    lower = [row(VAE, s, test_ll=-90.0, posterior_kl=0.3 + 0.01 * s) for s in range(3)]
    (v,) = by_metric(cmp.compare(frame(base), frame(lower)), "metric_posterior_kl")
    assert v.verdict == "improved" and v.delta == pytest.approx(-0.2)
    (v,) = by_metric(cmp.compare(frame(lower), frame(base)), "metric_posterior_kl")
    assert v.verdict == "regressed"


def test_metric_missing_on_one_side_is_not_comparable():
    base = side(VAE, test_elbo=-95.0)
    cand = side(VAE)
    (elbo,) = by_metric(cmp.compare(frame(base), frame(cand)), "metric_test_elbo")
    assert elbo.verdict == "not comparable" and "candidate" in elbo.note
    nan_cand = side(VAE, test_elbo=float("nan"))
    (elbo,) = by_metric(cmp.compare(frame(base), frame(nan_cand)), "metric_test_elbo")
    assert elbo.verdict == "not comparable" and "no finite value" in elbo.note


def test_json_output_parses(tmp_path):
    write(tmp_path / "base", side(VAE, -90.0) + side(IWAE, -88.0, seeds=1))
    write(tmp_path / "cand", side(VAE, -91.0))
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "cand", fmt="json")
    assert code == 1
    data = json.loads(text)
    assert data["regression"] is True
    assert data["summary"] == {"regressed": 1, "missing": 1}
    kinds = sorted(v["verdict"] for v in data["verdicts"])
    assert kinds == ["missing", "regressed"]
    missing = next(v for v in data["verdicts"] if v["verdict"] == "missing")
    assert missing["baseline_mean"] is None  # NaN becomes null


def test_markdown_has_header_and_a_row_per_verdict():
    base = side(VAE, -90.0, train_samples_per_s=1000.0) + side(IWAE, -88.0)
    cand = side(VAE, -91.0, train_samples_per_s=1000.0)
    verdicts = cmp.compare(frame(base), frame(cand))
    text = cmp.render_markdown(verdicts)
    lines = text.splitlines()
    assert lines[0].startswith("| suite | variant | metric | baseline | candidate | delta")
    assert set(lines[1].replace("|", "").split()) == {"---"}
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(verdicts) == 2 + 3
    assert lines[-1] == "Summary: 1 regressed, 1 unchanged, 1 missing"
    assert "± " in text and "(n=3)" in text


def test_metrics_filter_and_unknown_metric(tmp_path):
    rows = side(VAE, -90.0, train_samples_per_s=1000.0)
    cand = side(VAE, -90.0, train_samples_per_s=500.0)
    write(tmp_path / "base", rows)
    write(tmp_path / "cand", cand)
    assert cmp.run_compare(tmp_path / "base", tmp_path / "cand")[1] == 1
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "cand",
                                 metrics=["test_ll", "test_elbo"], fmt="json")
    assert code == 0
    assert {v["metric"] for v in json.loads(text)["verdicts"]} == {"metric_test_ll"}
    with pytest.raises(BenchError, match="metric 'bogus' has no record in bench.metrics.catalog"):
        cmp.run_compare(tmp_path / "base", tmp_path / "cand", metrics=["bogus"])
    with pytest.raises(BenchError, match="metric 'rate' has no better direction"):
        cmp.run_compare(tmp_path / "base", tmp_path / "cand", metrics=["rate"])
    with pytest.raises(BenchError, match="no results"):
        cmp.run_compare(tmp_path / "nowhere", tmp_path / "cand")
    # a mistyped but existing directory compared as "all missing" and exited 0 (make
    # regress passing against nothing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no runs in .*empty: nothing to compare"):
        cmp.run_compare(tmp_path / "empty", tmp_path / "cand")


def test_single_parquet_file_as_a_side(tmp_path):
    path = store.write_run(tmp_path / "base", row(VAE, 0, test_ll=-90.0))
    write(tmp_path / "cand", [row(VAE, 0, test_ll=-90.0)])
    text, code = cmp.run_compare(path, tmp_path / "cand")
    assert code == 0 and "unchanged" in text


def test_rules_come_from_the_catalog_for_the_stored_columns():
    columns = ["metric_train_samples_per_s", "metric_rate", "metric_test_ll", "metric_bogus",
               "metric_inpaint_rand25_matched_nll", "metric_test_error", "cfg_k"]
    rules = cmp.rules_for(columns)
    assert [r.name for r in rules] == ["test_ll", "train_samples_per_s", "test_error",
                                       "inpaint_rand25_matched_nll"]
    assert rules[1].relative and rules[1].machine and rules[1].threshold == 0.05
    assert rules[3].better == "lower" and rules[3].column == "metric_inpaint_rand25_matched_nll"
    assert [r.name for r in cmp.rules_for(columns, machine=False)] == [
        "test_ll", "test_error", "inpaint_rand25_matched_nll"]
    assert cmp.compare(frame([]), frame([])) == []
    assert np.isnan(cmp.compare(frame(side(VAE)), frame([]))[0].candidate_mean)


def test_a_field_added_later_at_its_default_still_matches_older_results():
    from bench.compare import variant_key

    old = {"cfg_dataset": "mnist", "cfg_k": 5, "cfg_seed": 0}
    new = {**old, "cfg_iterations": 0, "cfg_seed": 1}
    assert variant_key(old) == variant_key(new)
    assert variant_key({**new, "cfg_iterations": 10}) != variant_key(old)


def test_variant_keys_of_a_frame_are_each_rows_variant_key():
    """The keys computed once per distinct config (bench.compare.variant_keys) are the ones
    variant_key gives row by row: lists, None beside NaN, a later field absent or at its
    default, a bool beside the int 1, a float 3.0 beside the int 3 in one column; a value
    of another type (the text "1") is another key."""
    frame = pd.DataFrame({
        "cfg_hidden": [[[20]], [[20]], [[30]], [[20]], [[20]], [[20]]],
        "cfg_k": [3, 3, 3, 3, 3, 3],
        "cfg_snr_draws": [None, 0, math.nan, 0, None, 0],
        "cfg_flag": [True, 1, 1, True, 1.0, "1"],
        "cfg_lr": [1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3],
        "cfg_seed": [0, 1, 2, 3, 4, 5],
    })
    keys = cmp.variant_keys(frame)
    assert keys == [cmp.variant_key(r) for r in frame.to_dict("records")]
    assert keys[0] == keys[3] != keys[1] == keys[4] != keys[5] and len(set(keys)) == 4
