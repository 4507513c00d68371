"""Variant identity and validation: what defines an experiment, and what is rejected."""

from __future__ import annotations

import pytest

from bench.config import RunConfig, config_from_dict
from bench.errors import BenchError


def test_run_id_is_content_derived_and_order_independent():
    a = config_from_dict({"objective": "iwae", "k": 5, "dataset": "mnist"})
    b = config_from_dict({"dataset": "mnist", "k": 5, "objective": "iwae"})
    assert a.run_id == b.run_id and len(a.run_id) == 16
    assert a.config_hash.startswith(a.run_id) and len(a.config_hash) == 64
    assert a.replace(seed=1).run_id != a.run_id
    # defaults are part of the identity: spelling one out does not change the id
    assert config_from_dict({"objective": "iwae", "k": 5, "dataset": "mnist", "beta": 1.0}) == a


def test_run_id_is_stable_across_machines_and_versions():
    # Pinned: if this changes, every stored result's identity changed with it (a schema
    # change needing a migration), not a refactoring detail.
    cfg = RunConfig()
    assert cfg.canonical_json().startswith('{"adam_beta1":0.9,"adam_beta2":0.999,"adam_eps":0.0001')
    assert cfg.run_id == RunConfig().run_id
    assert cfg.run_id == "a9aa99b6761ad534"  # protocol 3 (tests/test_protocol.py pins 1 too)


def test_int_where_float_expected_hashes_the_same():
    assert config_from_dict({"beta": 2}).run_id == config_from_dict({"beta": 2.0}).run_id


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"epoch": 3}, "unknown key 'epoch'"),
        ({"objective": "iwea"}, "unknown objective 'iwea'"),
        ({"k": 0}, "'k' must be >= 1"),
        ({"k": 2.5}, "'k' must be an integer"),
        ({"k": True}, "'k' must be an integer"),
        ({"beta": -1}, "'beta' must be >= 0"),
        ({"beta": "high"}, "'beta' must be a number"),
        ({"epochs": 0}, "'epochs' must be >= 1"),
        ({"latent": [50, 20]}, "one entry per stochastic layer"),
        ({"hidden": [200, 200]}, "list of lists"),
        ({"schedule": "burda", "epochs": 10}, "conflicts with schedule 'burda'"),
        ({"lr": 0}, "'lr'"),
    ],
)
def test_invalid_values_name_the_key(values, fragment):
    with pytest.raises(BenchError) as info:
        config_from_dict(values, where="suites/x.toml")
    message = str(info.value)
    assert message.startswith("suites/x.toml: ") and fragment in message
    assert "\n" not in message


def test_labels_are_readable():
    assert RunConfig().label == "vae"
    assert RunConfig(objective="iwae", k=50).label == "iwae-k50"
    assert RunConfig(beta=4.0).label == "vae-beta4"
    assert RunConfig(hidden=((200, 200), (100, 100)), latent=(100, 50)).label == "vae-2layer"


def test_a_field_added_later_does_not_change_existing_run_ids(monkeypatch):
    import hashlib
    import json

    import bench.config as config

    cfg = RunConfig(objective="iwae", k=5)
    # `iterations` (the toys) really did arrive later: absent from the JSON at its default
    assert '"iterations"' not in cfg.canonical_json()
    toy = RunConfig(dataset="gmm", objective="iwae", iterations=10)
    assert '"iterations":10' in toy.canonical_json()
    later = set(config.LATER_FIELDS) | {"flow_steps"}
    without = {k: v for k, v in cfg.to_dict().items() if k not in later}
    without["protocol"] = config.PROTOCOL
    old_hash = hashlib.sha256(
        json.dumps(without, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    # pretend flow_steps arrived in a later release, defaulting to the old behaviour
    monkeypatch.setitem(config.LATER_FIELDS, "flow_steps", 0)
    assert cfg.config_hash == old_hash


@pytest.mark.parametrize(
    "values, fragment",
    [({"flow_steps": 4}, "needs a flow posterior"), ({"kl_direction": "sideways"}, "sideways")],
)
def test_posterior_and_kl_direction_are_validated(values, fragment):
    with pytest.raises(BenchError, match=fragment):
        config_from_dict(values)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"dataset": "gmm", "objective": "iwae"}, "needs key 'iterations' >= 1"),
        ({"dataset": "gmm", "iterations": 10}, "objective 'iwae'"),
        ({"dataset": "mnist", "iterations": 10},
         "key 'iterations' applies to model 'mixture' and the toys 'gmm' and 'bimodal' only"),
    ],
)
def test_toy_datasets_are_validated(values, fragment):
    with pytest.raises(BenchError, match=fragment):
        config_from_dict(values)


def test_model_family_keys_keep_old_run_ids_and_hash_when_set():
    # the lvm default hashes as before the families existed (pinned id of RunConfig())
    assert RunConfig().run_id == "a9aa99b6761ad534"
    mixture = RunConfig(model="mixture", components=10, iterations=5)
    assert '"components":10' in mixture.canonical_json()
    assert mixture.run_id != RunConfig(model="mixture", components=50, iterations=5).run_id
    assert mixture.label == "mixture-K10"
    assert RunConfig(model="cvae", condition="quadrants", given_quadrants=2).label == "cvae-q2"
    assert RunConfig(model="m2", labelled=100).label == "m2-n100"
    assert RunConfig(capacity_max=25.0, capacity_steps=100).label == "vae-capacity25"


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"model": "mixture"}, "needs key 'components' >= 1"),
        ({"components": 5}, "applies to model 'mixture' only"),
        ({"model": "cvae"}, "needs key 'condition'"),
        ({"model": "cvae", "condition": "quadrants", "given_quadrants": 4}, "in 1, 2, 3"),
        ({"model": "conditional_nn", "condition": "label"}, "needs condition 'quadrants'"),
        ({"model": "m2", "labelled": 105}, "multiple of 10"),
        ({"alpha": 0.5}, "key 'alpha' applies to model 'm2' only"),
        ({"labelled": 20}, "key 'labelled' applies to models 'm2' and 'classifier' only"),
        ({"model": "classifier", "labelled": 100, "alpha": 0.5}, "applies to model 'm2' only"),
        ({"init": "zeros"}, "unknown init 'zeros'"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
        ({"model": "mixture", "components": 3, "iterations": 2, "init": "torch"},
         "key 'init' applies to models 'lvm', 'cvae', 'conditional_nn', 'm2' and "
         "'classifier' only"),
        ({"binarize": False}, "key 'binarize' applies to models 'cvae' and 'conditional_nn' only"),
        ({"patience": 3}, "key 'patience' applies to models 'cvae' and 'conditional_nn' only"),
        ({"model": "conditional_nn", "condition": "quadrants", "given_quadrants": 1,
          "patience": 3}, "needs key 'validation_size' > 0"),
        ({"model": "cvae", "condition": "quadrants", "given_quadrants": 1,
          "validation_size": -1}, "'validation_size' must be >= 0"),
        ({"dci_train": 100}, "set together"),
        ({"model": "m2", "labelled": 100, "dci_estimator": "boosting"}, "model 'lvm'"),
        ({"input_dropout": 1.0}, "must be in \\[0, 1\\)"),
        ({"model": "m2", "labelled": 100, "input_dropout": 0.5}, "model 'lvm' only"),
        ({"model": "bogus"}, "unknown model 'bogus'"),
        ({"capacity_max": 5.0}, "capacity_steps' >= 1"),
        ({"capacity_max": 5.0, "capacity_steps": 10, "beta": 4.0}, "beta = 1"),
        ({"gamma": 10.0}, "controlled capacity"),
        ({"architecture": "conv", "latent": [4, 2], "hidden": [[8], [8]]}, "one stochastic"),
    ],
)
def test_model_family_rules_are_one_line_errors(values, fragment):
    with pytest.raises(BenchError, match=fragment):
        config_from_dict(values)


@pytest.mark.parametrize("key", ["lr", "beta", "alpha", "gamma", "capacity_max"])
def test_non_finite_numbers_are_refused(key):
    with pytest.raises(BenchError, match=f"key '{key}' must be a finite number"):
        config_from_dict({key: float("nan")})
    with pytest.raises(BenchError, match=f"key '{key}' must be a finite number"):
        config_from_dict({key: float("inf")})


def test_with_seed_is_the_config_built_at_that_seed():
    # Guards against: a suite's other seeds (copies of the first seed's config, see
    # RunConfig.with_seed) keeping the first seed's cached identity, so every seed of a
    # variant would share one run_id (and one stored row), or drifting from the config the
    # same values build.
    cfg = config_from_dict({"dataset": "digits", "objective": "miwae", "k": 4,
                            "params": {"m": 2}, "epochs": 3, "lr": 3e-4, "seed": 0})
    first_id = cfg.run_id  # computed (and cached) before the copy
    seven = cfg.with_seed(7)
    built = config_from_dict({**cfg.to_dict(), "seed": 7})
    assert seven.seed == 7 and seven == built
    assert seven.canonical_json() == built.canonical_json()
    assert seven.run_id == built.run_id != first_id
    assert cfg.run_id == first_id and cfg.seed == 0  # the original is untouched
    with pytest.raises(BenchError, match="key 'seed' must be an integer, got '1'"):
        cfg.with_seed("1")
    # to_dict hands out a copy of the values the identity is computed from (cached, shared
    # with the copies at other seeds): a caller editing it must not change any run_id
    values = seven.to_dict()
    values["hidden"][0].append(7)
    values["params"]["m"] = 4
    values["seed"] = 8
    assert seven.to_dict() == built.to_dict()
    assert cfg.with_seed(7).run_id == built.run_id == seven.run_id
