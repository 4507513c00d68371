"""The family registry (bench.families.registry): config validation, the runner's dispatch
and the report read it, so a family registered with one call runs end to end."""

from __future__ import annotations

import math
import random
import time

import pytest

from bench import compare as cmp
from bench import report, store
from bench.config import RunConfig, config_from_dict
from bench.errors import BenchError
from bench.families.registry import FAMILIES, Family
from bench.runner import RunOptions, run_suite
from bench.suite import load_suite


def coin_train(cfg: RunConfig) -> dict:
    """A toy with a known answer: estimate a coin's bias 0.3 from k * iterations seeded
    tosses (add-one-half smoothed), scored by the KL from the true coin."""
    start = time.perf_counter()
    n = cfg.k * cfg.iterations
    tosses = random.Random(cfg.seed)
    estimate = (sum(tosses.random() < 0.3 for _ in range(n)) + 0.5) / (n + 1)
    kl = 0.3 * math.log(0.3 / estimate) + 0.7 * math.log(0.7 / (1 - estimate))
    return {"posterior_kl": kl, "q_mean": estimate, "train_seconds": time.perf_counter() - start}


def check_coin(cfg: RunConfig) -> None:
    if cfg.iterations < 1:
        raise BenchError("the coin toy needs key 'iterations' >= 1")


COIN = Family("coin", "coin toss", coin_train, toy=True, owns=frozenset({"iterations"}),
              companions={"iterations": 1}, check=check_coin)

SUITE = """
[suite]
name = "coins"
description = "a toy family registered by a test"
seeds = [0, 1, 2]

[base]
dataset = "coin"

[[variant]]
name = "few"
k = 2
iterations = 5

[[variant]]
name = "many"
k = 20
iterations = 50
"""


def test_a_family_registered_with_one_call_runs_through_runner_store_compare_and_report(
        tmp_path):
    path = tmp_path / "coins.toml"
    path.write_text(SUITE)
    with pytest.raises(BenchError, match="unknown dataset 'coin'"):
        load_suite(path)
    with FAMILIES.registered(COIN):
        suite = load_suite(path)
        assert [v.name for v in suite.variants] == ["few"] * 3 + ["many"] * 3
        summary = run_suite(suite, RunOptions(results=tmp_path / "r", executor="local",
                                              show_progress=False))
        assert summary.statuses == {"finished": 6}
        runs = store.load_runs(tmp_path / "r")
        for _, row in runs.iterrows():  # each row is the family's trainer on its own config
            cfg = next(v.config for v in suite.variants if v.run_id == row["run_id"])
            assert row["metric_q_mean"] == coin_train(cfg)["q_mean"]
            assert row["metric_posterior_kl"] == coin_train(cfg)["posterior_kl"]
        # compare judges the toy's metric by its catalog record (lower is better)
        verdicts = cmp.compare(runs, runs)
        kl = [v for v in verdicts if v.metric == "metric_posterior_kl"]
        assert len(kl) == 2 and {v.verdict for v in kl} == {"unchanged"}
        md = report.build_report(tmp_path / "r", tmp_path / "out").suites["coins"] \
            .with_suffix(".md").read_text()
        assert "# Suite coins" in md and "KL(p(z\\|x)\\|\\|q) (nats)" in md
        assert "| few | 2 | 5 | 3 finished |" in md
        # the family's own rule and its keys
        with pytest.raises(BenchError, match="needs key 'iterations' >= 1"):
            RunConfig(dataset="coin")
    with pytest.raises(BenchError, match="unknown dataset 'coin'"):
        RunConfig(dataset="coin", iterations=5)


def test_a_key_moved_from_its_default_must_belong_to_the_runs_family():
    # Guards against: a family's key silently ignored by another family's run (a mixture
    # row with a beta-VAE capacity, an M2 row with a flow posterior).
    with pytest.raises(BenchError, match="key 'components' applies to model 'mixture' only"):
        config_from_dict({"components": 3})
    with pytest.raises(BenchError, match="key 'flow_steps' applies to model 'lvm' only"):
        config_from_dict({"model": "m2", "labelled": 10, "posterior": "iaf", "flow_steps": 1})
    with pytest.raises(BenchError, match="key 'kl_direction' applies to model 'lvm' and the "
                                         "toys 'gmm', 'snr_gaussian' and 'bimodal' only"):
        config_from_dict({"model": "cvae", "condition": "label", "kl_direction": "forward"})
    # the default of a key is allowed everywhere
    assert config_from_dict({"model": "mixture", "components": 2, "iterations": 1,
                             "posterior": "gaussian"}).model == "mixture"


def test_registering_a_name_twice_is_refused_and_registered_cleans_up():
    with pytest.raises(BenchError,
                       match=r"family 'mixture' already exists \(registered by vaebench\)"):
        FAMILIES.register(Family("mixture", "again", coin_train))
    with FAMILIES.registered(COIN):
        assert "coin" in FAMILIES.toys()
    assert "coin" not in FAMILIES.toys()
    assert FAMILIES.models() == ("lvm", "mixture", "cvae", "conditional_nn", "m2",
                                 "classifier")


def test_each_run_dispatches_to_its_familys_trainer():
    # Guards against: the dispatch keyed by the wrong field (a toy run sent to the lvm
    # trainer because its model is "lvm", a classifier run trained as M2).
    assert FAMILIES.of(RunConfig(dataset="gmm", objective="iwae", iterations=1)).name == "gmm"
    from bench.families import lvm, m2

    assert FAMILIES.of(RunConfig(model="classifier", labelled=10)).trainer() is m2.run
    assert FAMILIES.of(RunConfig()).trainer() is lvm.train
    assert "gmm" in FAMILIES and "coin" not in FAMILIES
    assert [f.name for f in FAMILIES] == [*FAMILIES.models(), *FAMILIES.toys()]
