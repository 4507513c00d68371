"""The model families and the disentanglement sweep in the report: each new suite runs at its
smoke budget from its own file, lands in the store, and its report shows the family's own
tables and figures, built from the stored numbers (checked against them)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from bench import report, store
from bench.config import RunConfig
from bench.runner import RunOptions, run_suite
from bench.suite import Reference, load_suite, resolve_suite_path

# suite -> filters keeping its smoke run small (every family still exercised)
SMOKE_RUNS = {
    "mixture": (),
    "cvae": (),
    "inpainting": ("input_dropout=0.5",),
    "disentangle": ("name=beta4",),
}


@pytest.fixture(scope="module")
def family_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for name, filters in SMOKE_RUNS.items():
        suite = load_suite(resolve_suite_path(name), budget="smoke")
        summary = run_suite(suite, RunOptions(results=root, executor="local",
                                              show_progress=False), filters)
        assert summary.failed == 0 and summary.total > 0, name
    out = tmp_path_factory.mktemp("family-report")
    pages = report.build_report(root, out)
    return root, out, {name: page.with_suffix(".md").read_text(encoding="utf-8")
                       for name, page in pages.suites.items()}


def test_every_family_suite_runs_at_smoke_and_is_reported(family_results):
    root, out, md = family_results
    for name in SMOKE_RUNS:
        assert f"\n# Suite {name}\n" in md[name]
    pngs = {p.name for p in out.glob("*/*.png")}  # each suite's in its folder
    # the family figures, each drawn only where its data exist
    assert "mixture-smoke-prior-iwae.png" in pngs
    assert "cvae-smoke-test_cll-vs-given_quadrants.png" in pngs
    assert "inpainting-smoke-inpainting.png" in pngs
    assert "disentangle-smoke-disentanglement.png" in pngs
    assert "disentangle-smoke-unit-kl.png" in pngs
    assert not any(p.startswith("mixture-smoke-test_cll") for p in pngs)
    # image rows beyond prior/reconstruction: component means, class grids, completions
    assert any(p.startswith("mixture-smoke-images-") for p in pngs)
    assert any(p.startswith("cvae-smoke-images-") for p in pngs)
    assert any(p.startswith("inpainting-smoke-images-") for p in pngs)


def test_mixture_gap_plot_data_are_the_stored_numbers(family_results):
    root = family_results[0]
    runs = store.load_runs(root, suite="mixture")
    table = report.prior_iwae_data(report.prepare_runs(runs))
    assert table is not None and set(table["k"]) == {1, 10, 100, 1000, 10000, 100000}
    row = table[(table["k"] == 10)].iloc[0]
    mine = runs[runs["variant"] == row["variant"]]
    gap = mine["metric_test_ll"] - mine["metric_prior_iwae_k10"]
    assert row["mean"] == pytest.approx(gap.mean())
    # the estimator is a lower bound that tightens with k: the mean gap shrinks
    for _, group in table.groupby("line"):
        gaps = group.sort_values("k")["mean"].to_numpy()
        assert gaps[0] > gaps[-1] >= -0.05


def test_inpainting_table_has_each_mask_and_method(family_results):
    section = family_results[2]["inpainting"]
    for mask in report.INPAINT_MASKS.values():
        for method in report.INPAINT_METHODS.values():
            assert re.search(rf"\| {re.escape(mask)} \| {method} \| [0-9.]+", section), \
                (mask, method)


def test_metric_vs_axis_places_published_values_at_their_runs():
    summary = pd.DataFrame({
        "variant": ["cvae-q1", "cvae-q2", "nn-q1", "nn-q2"],
        "cfg_model": ["cvae", "cvae", "conditional_nn", "conditional_nn"],
        "cfg_condition": ["quadrants"] * 4,
        "cfg_given_quadrants": [1, 2, 1, 2],
        "metric_test_cll_mean": [75.0, 50.0, 110.0, 68.0],
        "metric_test_cll_std": [0.2, 0.1, math.nan, 0.3],
    })
    table = report.axis_metric_data(summary, "metric_test_cll", "given_quadrants")
    assert list(table["line"]) == ["CVAE", "CVAE", "deterministic NN", "deterministic NN"]
    assert list(table["x"]) == [1.0, 2.0, 1.0, 2.0]
    refs = [Reference("test_cll", 71.8, "Pyro", "paper",
                      {"model": "cvae", "condition": "quadrants", "given_quadrants": 1}, ""),
            Reference("test_cll", 61.9, "Pyro", "paper",
                      {"model": "conditional_nn", "condition": "quadrants",
                       "given_quadrants": 2}, "")]
    placed = report.axis_reference_data(summary, refs, "metric_test_cll", "given_quadrants")
    assert placed.to_dict("records") == [
        {"line": "CVAE", "x": 1.0, "value": 71.8},
        {"line": "deterministic NN", "x": 2.0, "value": 61.9}]


def _run_row(beta: float, seed: int, capacity: float = 0.0, **metrics) -> dict:
    return {"variant": f"b{beta}-c{capacity}", "status": "finished", "cfg_beta": beta,
            "cfg_capacity_max": capacity, "cfg_seed": seed, "run_id": f"{beta}{capacity}{seed}",
            **{f"metric_{k}": v for k, v in metrics.items()}}


def test_disentanglement_data_keep_every_seed_and_order_beta_then_capacity():
    runs = pd.DataFrame([
        _run_row(8.0, 0, mig=0.3, distortion=90.0),
        _run_row(1.0, 0, mig=0.1, distortion=60.0),
        _run_row(1.0, 0, capacity=20.0, mig=0.2, distortion=70.0),
        _run_row(1.0, 1, mig=0.05, distortion=61.0),
    ])
    table = report.disentanglement_data(runs)
    mig = table[table["panel"].str.startswith("MIG")]
    assert list(dict.fromkeys(mig["category"])) == ["β=1", "β=8", "C=20"]
    assert sorted(mig[mig["category"] == "β=1"]["value"]) == [0.05, 0.1]  # both seeds


def test_unit_kl_profile_sorts_units_within_each_run():
    runs = pd.DataFrame([
        _run_row(4.0, 0, kl_unit_0=0.0, kl_unit_1=3.0, kl_unit_2=1.0),
        _run_row(4.0, 1, kl_unit_0=2.0, kl_unit_1=0.0, kl_unit_2=4.0),
    ])
    table = report.unit_kl_data(runs)
    assert list(table["x"]) == [1, 2, 3]
    np.testing.assert_allclose(table["mean"], [3.5, 1.5, 0.0])


def test_a_family_config_rebuilds_from_its_stored_row(family_results):
    root = family_results[0]
    runs = store.load_runs(root, suite="cvae")
    for _, row in runs.iterrows():
        cfg = report.run_config(row.to_dict())
        assert isinstance(cfg, RunConfig) and cfg.run_id == row["run_id"]


def test_summary_rows_blank_the_keys_a_family_does_not_use():
    summary = pd.DataFrame({
        "variant": ["vae", "mixture-k200", "nn-q1"], "seeds": [1, 1, 1],
        "finished": [1, 1, 1], "failed": [0, 0, 0], "diverged": [0, 0, 0],
        "cfg_model": ["lvm", "mixture", "conditional_nn"],
        "objective": ["vae", "vae", "vae"], "k": [1, 1, 1], "components": [0, 200, 0],
        "metric_test_ll_mean": [-90.0, -130.0, math.nan],
        "metric_test_ll_std": [math.nan] * 3,
    })
    table, _ = report.summary_tables(summary, ["objective", "k", "components"])
    assert table.rows[0][1:4] == ["vae", "1", "-"]
    assert table.rows[1][1:4] == ["-", "-", "200"]
    assert table.rows[2][1:4] == ["-", "-", "-"]


def test_a_suite_mixing_families_gets_one_summary_table_per_family():
    # Guards against: one summary table with every family's settings and metrics side by
    # side (the gate suite's was 30 columns wide), or a family's table with another
    # family's keys.
    summary = pd.DataFrame({
        "variant": ["vae", "iwae-k5", "mixture-k200", "gmm"], "seeds": [2, 2, 2, 1],
        "finished": [2, 1, 2, 1], "failed": [0, 1, 0, 0], "diverged": [0, 0, 0, 0],
        "cfg_model": ["lvm", "lvm", "mixture", "lvm"],
        "cfg_dataset": ["digits", "digits", "digits", "gmm"],
        "objective": ["vae", "iwae", "vae", "iwae"], "k": [1, 5, 1, 5],
        "hidden": [[[200, 200]]] * 4, "components": [0, 0, 200, 0],
        "iterations": [0, 0, 30, 100], "model": ["lvm", "lvm", "mixture", "lvm"],
        "metric_test_ll_mean": [-90.0, -88.0, -130.0, math.nan],
        "metric_test_ll_std": [math.nan] * 4,
        "metric_posterior_kl_mean": [math.nan] * 3 + [0.5],
        "metric_posterior_kl_std": [math.nan] * 4,
    })
    axes = ["objective", "k", "hidden", "components", "iterations", "model"]
    tables = dict(report.family_summary_tables(summary, axes))
    assert list(tables) == ["VAE family", "mixture (EM)", "toy gmm"]
    # the rows' varying settings of the family (hidden is the same: not an axis here)
    assert tables["VAE family"].headers == ["variant", "objective", "k", "runs",
                                            "test LL (nats)"]
    assert tables["VAE family"].rows[1] == ["iwae-k5", "iwae", "5", "1 of 2 finished, 1 failed",
                                            "-88.00"]
    # one row: the settings it moved from their defaults, never another family's keys
    assert tables["mixture (EM)"].headers == ["variant", "components", "iterations", "runs",
                                              "test LL (nats)"]
    assert tables["toy gmm"].headers == ["variant", "objective", "k", "iterations", "runs",
                                         "KL(p(z|x)||q) (nats)"]


def test_the_cvae_suites_report_has_a_table_for_each_of_its_two_families(family_results):
    cvae = family_results[2]["cvae"]
    cvae = cvae[:cvae.index("Throughput and cost")]
    assert "### CVAE" in cvae and "### deterministic NN" in cvae
    nn = cvae[cvae.index("### deterministic NN"):]
    assert "| variant | given_quadrants | runs |" in nn  # no objective, k, beta columns


def test_em_iterations_are_not_drawn_on_the_epoch_axis():
    # Guards against: a mixture's EM iterations plotted as epochs beside the neural models.
    runs = pd.DataFrame({"run_id": ["a", "b"], "variant": ["vae", "mixture"],
                         "status": ["finished", "finished"], "cfg_model": ["lvm", "mixture"],
                         "cfg_dataset": ["digits", "digits"]})
    curves = pd.DataFrame({"run_id": ["a", "a", "b", "b", "b"], "epoch": [1, 2, 1, 2, 3],
                           "train_bound": [-100.0, -95.0, -140.0, -135.0, -134.0]})
    epochs = report.curve_data(runs, curves)
    assert list(epochs["variant"].unique()) == ["vae"]
    em = report.curve_data(runs, curves, unit="EM iteration")
    assert list(em["variant"].unique()) == ["mixture"] and list(em["epoch"]) == [1, 2, 3]


def test_m2_is_shown_beside_its_supervised_only_baseline_at_each_n():
    """The M2 figure has a supervised-only line, and the table pairs each M2 row with the
    classifier row of the same training settings (never one of another budget's settings)."""
    def row(model, n, mean, std, epochs=8):
        return {"variant": f"model={model},labelled={n}", "cfg_model": model,
                "cfg_labelled": n, "cfg_epochs": epochs, "cfg_alpha": 0.1,
                "cfg_k": 1, "cfg_latent": [50], "cfg_hidden": [[500]], "cfg_seed": 0,
                "metric_test_error_mean": mean, "metric_test_error_std": std,
                "metric_test_error_n": 2}
    summary = pd.DataFrame([
        row("m2", 100, 30.0, 1.0), row("m2", 600, 18.0, 0.5),
        row("classifier", 100, 27.0, 0.8), row("classifier", 600, 15.0, 0.6),
        row("classifier", 1000, 12.0, 0.4),  # no M2 row at 1000: no pair
        row("classifier", 600, 99.0, 0.0, epochs=3),  # other settings: never paired
    ])
    table = report.semisupervised_data(summary)
    assert list(table["labelled"]) == [100, 600]
    assert list(table["diff"]) == pytest.approx([3.0, 3.0])
    assert list(table["sup_mean"]) == [27.0, 15.0]
    rendered = report.semisupervised_table(table)
    assert rendered.rows[0] == ["100", "30.00 ± 1.00", "27.00 ± 0.80", "+3.00", "2 / 2"]
    lines = report.axis_metric_data(summary, "metric_test_error", "labelled",
                                    summary["cfg_model"].isin(["m2", "classifier"]))
    assert set(lines["line"]) == {"M2", "supervised only"}
    assert report.semisupervised_data(summary[summary["cfg_model"] == "m2"]) is None
    # the summary table blanks alpha and k for the baseline, not for M2
    table, _ = report.summary_tables(
        summary.assign(seeds=1, finished=1, failed=0, diverged=0,
                       alpha=0.1, k=1, labelled=summary["cfg_labelled"]),
        ["labelled", "alpha", "k"])
    assert table.rows[0][1:4] == ["100", "0.1", "1"]
    assert table.rows[2][1:4] == ["100", "-", "-"]


def test_dropout_models_show_the_ess_beside_their_test_ll():
    runs = pd.DataFrame([
        {"variant": f"input_dropout={p}", "status": "finished", "cfg_input_dropout": p,
         "cfg_seed": seed, "metric_test_ll": ll, "metric_ess": ess, "metric_test_elbo": ll - 2}
        for p, seed, ll, ess in ((0.5, 0, -117.0, 0.01), (0.5, 1, -118.0, 0.03),
                                 (0.0, 0, -104.0, 0.2), (0.0, 1, -104.0, 0.2))])
    table = report.dropout_ll_data(runs)
    assert list(table["input_dropout"]) == [0.0, 0.5]
    assert table.iloc[1]["ess_mean"] == pytest.approx(0.02)
    assert table.iloc[1]["ll_mean"] == pytest.approx(-117.5)
    rendered = report.dropout_ll_table(table)
    assert rendered.headers[2:4] == ["test LL (nats)", "ESS / k_eval"]
    assert rendered.rows[1][3] == "0.0200 ± 0.0141"
    # no dropout-trained model: no table
    assert report.dropout_ll_data(runs.assign(cfg_input_dropout=0.0)) is None


def test_inpainting_section_shows_the_matched_chain_and_the_ess(family_results):
    section = family_results[2]["inpainting"]
    assert "matched: the iterative chain" in section
    assert re.search(r"\| input_dropout=0\.5 \| 0\.5 \| -[0-9.]+( ± [0-9.]+)? \| "
                     r"[0-9.]+( ± [0-9.]+)? \|", section)  # test LL, then its ESS
