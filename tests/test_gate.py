"""The merge gate: every model family trained on the embedded digits at a budget where it
clearly learns (suites/gate.toml, about 30 s in all), and every machine-independent metric of
every run held to its pinned value (tests/gate_pinned.toml).

Thresholds come from measured spread (tools/gate_spread.py): the same runs under torch's, MKL's
and oneDNN's avx512, avx2 and baseline kernels and with 1 and 2 threads moved a metric by at
most 3.5e-3 (the quadrant CVAE's test CLL), most by under 1e-6; same-machine reruns are
bit-identical. A threshold is 10x its metric's spread, at least 1e-3 of the value (test LL:
about 0.025 nats). A realistic bug moves far more: the decoder ignoring its output bias
costs the VAE family 0.12 to 1.3 nats of test LL here (mutation decoder-ignores-output-bias).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import gate
from bench.components import BUILT_IN, OBJECTIVES
from bench.families.registry import FAMILIES
from bench.runner import RunOptions, run_suite
from bench.suite import load_suite, resolve_suite_path

PINS = Path(__file__).with_name("gate_pinned.toml")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    return load_suite(resolve_suite_path(gate.SUITE), budget=gate.BUDGET)


def test_the_gate_covers_every_model_family_objective_direction_and_toy(suite):
    """A family added to the registry must be added to the gate."""
    cfgs = [v.config for v in suite.variants]
    assert {c.model for c in cfgs if c.dataset == "digits"} == set(FAMILIES.models())
    assert {c.dataset for c in cfgs} == {"digits", *FAMILIES.toys()}
    lvm = [c for c in cfgs if c.model == "lvm" and c.dataset == "digits"]
    assert {c.objective for c in lvm} == {o.name for o in OBJECTIVES if o.plugin == BUILT_IN}
    assert {c.kl_direction for c in lvm} == {"reverse", "forward"}
    assert {len(c.latent) for c in lvm} == {1, 2}
    assert {c.posterior != "gaussian" for c in lvm} == {True, False}


def test_trained_models_match_their_pinned_values(suite, tmp_path):
    summary = run_suite(suite, RunOptions(results=tmp_path, executor="local",
                                          show_progress=False))
    assert summary.statuses == {"finished": len(suite.variants)}
    problems = gate.check(gate.pinned_metrics(tmp_path), gate.load_pins(PINS))
    assert not problems, "merge gate:\n" + "\n".join(problems)


def test_the_check_names_each_kind_of_violation():
    pins = {"a": {"x": gate.Pin(1.0, 0.1), "y": gate.Pin(2.0, 0.1)}, "b": {"x": gate.Pin(0, 1)}}
    got = {"a": {"x": 1.05, "z": 3.0}, "c": {"x": 0.0}}
    assert gate.check(got, pins) == [
        "a.y: pinned but not measured",
        "a.z: measured (3) but not pinned",
        "b: pinned but did not run",
        "c: ran but is not pinned",
    ]
    assert gate.check({"a": {"x": 1.2, "y": 2.0}}, {"a": pins["a"]}) == [
        "a.x: 1.2, pinned 1 +- 0.1 (off by +0.2)"]
    # never looser than the catalog's practical threshold (test_ll: 0.1 nats)
    assert gate.tolerance("test_ll", gate.Pin(-24.0, 0.5)) == 0.1
    assert gate.tolerance("test_ll", gate.Pin(-24.0, 0.02)) == 0.02
    assert gate.tolerance("rate", gate.Pin(3.0, 0.5)) == 0.5  # no direction: pinned tol
    assert gate.check({"v": {"test_ll": -24.2}}, {"v": {"test_ll": gate.Pin(-24.0, 0.5)}}) == [
        "v.test_ll: -24.2, pinned -24 +- 0.1 (off by -0.2, worse)"]
    # the catalog's direction says which way a pinned metric moved
    ll = {"vae": {"test_ll": gate.Pin(-24.0, 0.1), "test_error": gate.Pin(20.0, 0.1)}}
    assert gate.check({"vae": {"test_ll": -24.5, "test_error": 19.0}}, ll) == [
        "vae.test_error: 19, pinned 20 +- 0.1 (off by -1, better)",
        "vae.test_ll: -24.5, pinned -24 +- 0.1 (off by -0.5, worse)"]
    assert gate.check({"a": {"x": 0.9, "y": 2.0}}, {"a": pins["a"]}) == []


def test_gate_spread_refuses_a_setting_without_a_finite_value(tmp_path, monkeypatch):
    # Guards against: a metric missing from (or NaN in) one setting's run entering max()
    # as NaN, which max() drops or keeps depending on order: --write would then pin a
    # threshold from the other settings alone, too tight. Also a missing --load file.
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_spread", REPO / "tools" /
                                                  "gate_spread.py")
    gate_spread = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate_spread)
    got = {name: {"vae": {"test_ll": -24.0}} for name, *_ in gate_spread.SETTINGS}
    assert gate_spread.thresholds(got)[0]["machine_spread"] == 0.0
    got["avx2"]["vae"]["test_ll"] = float("nan")
    with pytest.raises(SystemExit, match="setting avx2 has no finite test_ll for vae"):
        gate_spread.thresholds(got)
    del got["avx2"]["vae"]
    with pytest.raises(SystemExit, match="setting avx2 has no finite test_ll for vae"):
        gate_spread.thresholds(got)
    del got["avx2"]  # a setting not measured at all, a reference value that is NaN
    with pytest.raises(SystemExit, match="setting avx2 has no finite test_ll for vae"):
        gate_spread.thresholds(got)
    with pytest.raises(SystemExit, match="setting reference has no finite test_ll"):
        gate_spread.thresholds({**got, "reference": {"vae": {"test_ll": float("nan")}}})
    with pytest.raises(SystemExit, match="not an object with a 'reference' setting"):
        gate_spread.thresholds([1, 2])
    with pytest.raises(SystemExit, match="cannot read measurements"):
        gate_spread.main(["--load", str(tmp_path / "missing.json")])
    # hand-edited --load files: a value that is a string, a variant or its metrics not an
    # object (TypeError and AttributeError tracebacks before)
    with pytest.raises(SystemExit, match="setting avx2 has no finite test_ll for vae"):
        gate_spread.thresholds({**got, "avx2": {"vae": {"test_ll": "-24"}}})
    with pytest.raises(SystemExit, match="setting avx2 has no finite test_ll for vae"):
        gate_spread.thresholds({**got, "avx2": {"vae": [1]}})
    with pytest.raises(SystemExit, match="must map metric names to values"):
        gate_spread.thresholds({**got, "reference": {"vae": 5}})
    # a --json that cannot be written is refused before the 8 gate runs, not after them
    monkeypatch.setattr(gate_spread, "measure", lambda python: pytest.fail("measured"))
    with pytest.raises(SystemExit, match="not a file in an existing directory; nothing "
                                         "measured"):
        gate_spread.main(["--json", str(tmp_path / "no-such-dir" / "m.json")])
    with pytest.raises(SystemExit, match="not a file in an existing directory"):
        gate_spread.main(["--json", str(tmp_path)])
