"""The metric catalog (bench.metrics.catalog): every metric any family, toy or evaluator
stores has a record, and `compare` judges every family's metrics by the catalog's direction
and threshold."""

from __future__ import annotations

import pytest

from bench import compare as cmp
from bench import store
from bench.config import RunConfig
from bench.errors import BenchError
from bench.families.registry import FAMILIES
from bench.metrics import catalog
from bench.runner import RunTask, execute
from bench.suite import Variant

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="digits", train_size=100, test_size=20, hidden=((8,),), latent=(2,),
            k_eval=4, epochs=1, batch_size=50)
# the smallest run of every family, toy and optional evaluator
RUNS = {
    "lvm": RunConfig(**TINY),
    "lvm-2layer-inpainting": RunConfig(**{**TINY, "hidden": ((8,), (8,)), "latent": (2, 2)},
                                       eval_inpainting=True, input_dropout=0.25),
    "lvm-shapes": RunConfig(**{**TINY, "dataset": "shapes_small"}),
    "mixture": RunConfig(**TINY, model="mixture", components=3, iterations=2),
    "cvae-label": RunConfig(**TINY, model="cvae", condition="label"),
    "cvae-q1": RunConfig(**TINY, model="cvae", condition="quadrants", given_quadrants=1,
                         validation_size=20, patience=1),
    "conditional_nn": RunConfig(**TINY, model="conditional_nn", condition="quadrants",
                                given_quadrants=2),
    "m2": RunConfig(**TINY, model="m2", labelled=20),
    "classifier": RunConfig(**TINY, model="classifier", labelled=20),
    "gmm": RunConfig(dataset="gmm", objective="iwae", k=2, iterations=3),
    "bimodal": RunConfig(dataset="bimodal", objective="iwae", k=2, iterations=3),
    "snr_gaussian": RunConfig(dataset="snr_gaussian", objective="dreg", k=4,
                              params={"draws": 20}),
    "lvm-snr": RunConfig(**TINY, objective="stl", snr_draws=3),
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """{run: its stored metric names}, each run through the runner and the store."""
    results = tmp_path_factory.mktemp("catalog")
    out = {}
    for name, cfg in RUNS.items():
        [landed] = execute(RunTask("catalog", None, Variant(name, cfg), results, 1, 1),
                         device="cpu")
        assert landed.row["status"] == "finished", (name, landed.row["error"])
        path = store.write_run(results, landed.row, landed.curves)
        out[name] = [c for c in store.load_runs(path).columns if c.startswith("metric_")]
    return out


def test_the_runs_cover_every_family(stored):
    assert {FAMILIES.of(RUNS[name]).name for name in stored} == {*FAMILIES.models(),
                                                                 *FAMILIES.toys()}


def test_every_stored_metric_has_a_catalog_record(stored):
    # Guards against: a family emitting a metric that compare, the gate and the report
    # cannot know the direction, unit or machine-dependence of.
    loaded_columns = set().union(*stored.values())
    unknown = sorted(c for c in loaded_columns if catalog.find(c) is None)
    assert not unknown, f"metrics with no record in bench.metrics.catalog: {unknown}"


def test_each_run_stores_only_the_metrics_its_family_declares(stored):
    # Guards against: a family emitting a metric its registry record does not list (the
    # record is what a reader of the registry learns a family produces).
    for name, columns in stored.items():
        family = FAMILIES.of(RUNS[name])
        declared = {catalog.find(m) for m in family.metrics}
        assert None not in declared, f"{family.name} declares a metric with no catalog record"
        undeclared = sorted(c for c in columns if catalog.find(c) not in declared)
        assert not undeclared, f"{name} ({family.name}) stores undeclared {undeclared}"


def test_the_catalog_has_no_record_that_nothing_stores(stored):
    # a record for a metric no run stores is a stale entry (or a run missing from RUNS)
    names = {c.removeprefix("metric_") for c in set().union(*stored.values())}
    unused = [m.name for m in catalog.METRICS
              if not any(catalog.find(n) is m for n in names)]
    assert unused == []


def test_records_are_consistent():
    names = [m.name for m in catalog.METRICS]
    assert len(names) == len(set(names))
    for m in catalog.METRICS:
        assert m.better in (catalog.HIGHER, catalog.LOWER, catalog.NONE), m.name
        assert (m.threshold > 0) == m.judged, m.name  # judged means: has a threshold
        assert m.heading and (m.pattern is None) == ("<" not in m.name), m.name
    assert catalog.MACHINE_METRICS == {
        "train_seconds", "train_samples_per_s", "train_flops_per_s", "eval_seconds",
        "eval_samples_per_s", "peak_memory_bytes", "inpaint_seconds", "factor_seconds"}
    # every judged rate names the wall time it is measured over (a misspelt or missing one
    # would let compare judge a smoke run's 10 ms rate)
    timed = {m.name: m.timed_by for m in catalog.METRICS if m.timed_by is not None}
    assert timed == {"train_samples_per_s": "train_seconds", "train_flops_per_s":
                     "train_seconds", "eval_samples_per_s": "eval_seconds"}
    assert catalog.lookup("metric_prior_iwae_k100").name == "prior_iwae_k100"
    assert catalog.lookup("inpaint_top_half_matched_error").better == catalog.LOWER
    assert catalog.find("inpaint_top_half_matched_errors") is None
    # a pattern's own name is a record to find, not a metric to compare
    assert catalog.find("kl_unit_<j>").pattern is not None
    with pytest.raises(BenchError, match="metric 'kl_unit_<j>' names a family of metrics"):
        catalog.lookup("kl_unit_<j>")


# one metric per family, beyond the likelihood, moved the wrong way by about twice its
# threshold: (config, metric, baseline values over 3 seeds, shift)
PLANTED = {
    "m2 test error": (RUNS["m2"], "test_error", [11.9, 12.4, 12.1], +2.0),
    "cvae conditional LL": (RUNS["cvae-q1"], "test_cll", [70.4, 70.5, 70.3], +0.25),
    "mig": (RUNS["lvm-shapes"], "mig", [0.31, 0.30, 0.32], -0.05),
    "inpainting": (RUNS["lvm-2layer-inpainting"], "inpaint_rand50_matched_nll",
                   [40.1, 40.3, 40.2], +0.3),
    "mixture exact LL": (RUNS["mixture"], "test_ll", [-137.6, -137.4, -137.5], -0.3),
    "toy posterior KL": (RUNS["gmm"], "posterior_kl", [0.20, 0.21, 0.19], +0.03),
}


def rows(cfg: RunConfig, metric: str, values: list[float]) -> list[dict]:
    return [store.run_row(suite="s", variant=cfg.label, config=cfg.replace(seed=s),
                          status="finished", metrics={metric: v}, provenance={},
                          budget="smoke") for s, v in enumerate(values)]


@pytest.mark.parametrize("case", list(PLANTED))
def test_compare_flags_a_planted_regression_of_each_familys_metric(case, tmp_path):
    # Guards against: compare knowing only the likelihoods and throughputs, so a worse M2
    # error, CVAE conditional LL, MIG, inpainting score or toy KL passes as "unchanged".
    cfg, metric, values, shift = PLANTED[case]
    for name, vals in (("base", values), ("same", values),
                       ("worse", [v + shift for v in values])):
        for r in rows(cfg, metric, vals):
            store.write_run(tmp_path / name, r)
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "worse")
    assert code == 1, text
    (verdict,) = [v for v in cmp.compare(cmp.load_side(tmp_path / "base"),
                                         cmp.load_side(tmp_path / "worse"))
                  if v.metric == f"metric_{metric}"]
    assert verdict.verdict == "regressed" and verdict.test == cmp.WELCH
    text, code = cmp.run_compare(tmp_path / "base", tmp_path / "same")
    assert code == 0 and "regressed" not in text, text
