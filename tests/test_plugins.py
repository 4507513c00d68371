"""Plugins (issue 24): a user's method registered from outside bench/ runs through the same
registries, runner (Ray workers included), store, compare and report as the built-ins, with
its own identity in every run_id; bad plugins are one line and exit 2 before any run.

The worked example is examples/vaebench-vr (the VR-alpha bound of Li & Turner 2016), loaded
here from its source tree by module name; the two-node cluster test of tests/test_runner.py
runs a .py plugin given to the driver only."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from bench import components, plugins, store
from bench.compare import run_compare
from bench.components import BUILT_IN, OBJECTIVES, POSTERIORS
from bench.config import RunConfig, config_from_dict
from bench.errors import BenchError
from bench.families.registry import FAMILIES
from bench.metrics import catalog
from bench.metrics.catalog import MACHINE_METRICS
from bench.runner import RunOptions, run_suite
from bench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "vaebench-vr"


@pytest.fixture
def vr(monkeypatch):
    """The example plugin, by module name from its source tree (installed or not)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    (plugin,) = plugins.load(["vaebench_vr"], entry_points=False)
    return plugin


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


TINY = """\
[suite]
name = "{name}"
description = "plugin test"
seeds = [0]
{plugins}

[base]
dataset = "digits"
hidden = [[16]]
latent = [4]
train_size = 200
test_size = 50
epochs = 2
k_eval = 10
k = 5
"""


def tiny(tmp_path: Path, name: str, body: str, plugin_specs: str = "") -> Path:
    plugins_line = f"plugins = [{plugin_specs}]" if plugin_specs else ""
    return write(tmp_path / f"{name}.toml",
                 TINY.format(name=name, plugins=plugins_line) + textwrap.dedent(body))


def same_training(a: dict, b: dict) -> None:
    """Every metric but the machine's equal, bit for bit."""
    metrics = [c for c in a if c.startswith("metric_")
               and c.removeprefix("metric_") not in MACHINE_METRICS]
    assert metrics and pd.Series({c: a[c] for c in metrics}, dtype=object).equals(
        pd.Series({c: b[c] for c in metrics}, dtype=object))  # NaN where both are NaN


# --------------------------------------------------------------------------- the example
def test_vr_at_alpha_0_trains_bit_identically_to_iwae_on_ray_workers(vr, tmp_path):
    # Guards against: a plugin objective that does not reach the trainer (the built-in
    # bound trained instead would also match: vr-max below must differ), a worker that
    # cannot load a plugin the driver loaded, and any arithmetic the plugin path adds.
    path = tiny(tmp_path, "vr0", """
        [[variant]]
        name = "iwae"
        objective = "iwae"

        [[variant]]
        name = "vr0"
        objective = "vr"
        params = { alpha = 0.0 }

        [[variant]]
        name = "vr-max"
        objective = "vr"
        params.alpha = -inf
        """, '"vaebench_vr"')
    suite = load_suite(path)
    summary = run_suite(suite, RunOptions(results=tmp_path / "r", show_progress=False))
    assert summary.statuses == {"finished": 3}
    runs = store.load_runs(tmp_path / "r", suite="vr0").set_index("variant")
    assert runs["sys_ray_node_id"].notna().all()  # trained by Ray workers, not the driver
    iwae, vr0, vrmax = (runs.loc[v].to_dict() for v in ("iwae", "vr0", "vr-max"))
    same_training(iwae, vr0)
    assert vr0["metric_test_ll"] == iwae["metric_test_ll"]  # bit for bit, not "close"
    assert vrmax["metric_test_ll"] != iwae["metric_test_ll"]
    curves = store.load_curves(tmp_path / "r", suite="vr0")
    by_run = {r: c.drop(columns=["wall_seconds", "samples_per_s"], errors="ignore")
                 .reset_index(drop=True) for r, c in curves.groupby("run_id")}
    assert by_run[iwae["run_id"]].drop(columns="run_id").equals(
        by_run[vr0["run_id"]].drop(columns="run_id"))
    # the plugin's rows say whose code they ran; the built-in rows say nothing
    assert json.loads(vr0["sys_plugins"]) == {vr.name: vr.identity()}
    assert not isinstance(iwae.get("sys_plugins"), str)
    assert vr0["cfg_params.alpha"] == 0.0 and vrmax["cfg_params.alpha"] == -math.inf


def test_the_example_ships_its_suite_and_references(vr):
    suite = load_suite(EXAMPLE / "src" / "vaebench_vr" / "suites" / "vr_mnist.toml", "paper")
    assert len(suite.variants) == 12 and len(suite.references) == 12
    vrmax = {(r.match["latent"], r.match["k"]): r.value for r in suite.references
             if r.match["objective"] == "vr"}
    assert vrmax == {((50,), 5): 85.42, ((50,), 50): 84.81, ((100, 50), 5): 84.04,
                     ((100, 50), 50): 83.44}  # Li & Turner 2016, Table 2
    assert {v.config.param("alpha") for v in suite.variants if v.config.objective == "vr"} \
        == {-math.inf}
    # found by name through the suite folder the plugin registers
    from bench.suite import resolve_suite_path
    assert resolve_suite_path("vr_mnist").name == "vr_mnist.toml"


# --------------------------------------------------------------------------- identity
TWIN = (Path(__file__).parent / "plugins" / "twin.py").read_text()


def test_editing_a_plugin_file_changes_the_run_id_and_dry_run_says_why(tmp_path, capsys):
    from bench.cli import main

    write(tmp_path / "twin.py", TWIN)
    path = tiny(tmp_path, "edited", 'objective = "twin"\n', '"twin.py"')
    before = load_suite(path).variants[0]
    old = plugins.get("twin").short
    assert main(["run", str(path), "--executor", "local", "--results", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    write(tmp_path / "twin.py", TWIN + "# a comment changes the code's hash\n")
    after = load_suite(path).variants[0]
    new = plugins.get("twin").short
    assert after.config.to_dict() == before.config.to_dict() and old != new
    assert after.run_id != before.run_id
    assert main(["run", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if after.run_id in x]
    assert line.strip().startswith("to run") and line.endswith(
        f"({before.run_id} is a result of other plugin code: plugin twin changed (code {old} "
        f"-> {new}): results of other code are not reused)"), line


def test_a_plugin_is_part_of_the_run_id_and_built_in_run_ids_do_not_move(vr):
    assert RunConfig().run_id == "a9aa99b6761ad534"  # no plugin: as before plugins existed
    cfg = config_from_dict({"objective": "vr", "params": {"alpha": 0.0}})
    assert json.loads(cfg.canonical_json())["plugins"] == {vr.name: vr.identity()}
    assert cfg.plugins() == (vr.name,) and RunConfig().plugins() == ()
    # the same config under another plugin code is another run
    plugins._LOADED[vr.name] = plugins.replace(vr, digest="0" * 64)
    try:
        assert config_from_dict({"objective": "vr", "params": {"alpha": 0.0}}).run_id \
            != cfg.run_id
    finally:
        plugins._LOADED[vr.name] = vr


def test_a_worker_loads_a_file_plugin_from_the_source_the_task_carries(tmp_path):
    # Guards against: a worker that imports the plugin from the driver's path (a cluster
    # node has no such file) instead of the shipped bytes. A fresh interpreter, the file
    # gone: ensure() must load it from the Plugin record alone.
    import pickle
    import subprocess

    write(tmp_path / "twin.py", TWIN)
    (plugin,) = plugins.load([str(tmp_path / "twin.py")], entry_points=False)
    shipped = tmp_path / "shipped.pkl"
    shipped.write_bytes(pickle.dumps(plugin))
    (tmp_path / "twin.py").unlink()
    code = ("import pickle, sys; from bench import plugins; from bench.components import "
            "OBJECTIVES; p = pickle.loads(open(sys.argv[1], 'rb').read()); plugins.ensure([p]);"
            " print(OBJECTIVES.get('twin').plugin, plugins.get('twin').digest == p.digest)")
    done = subprocess.run([sys.executable, "-c", code, str(shipped)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["twin", "True"]


# --------------------------------------------------------------------------- params
def test_params_are_validated_by_their_declaration(vr):
    def error(values):
        with pytest.raises(BenchError) as info:
            config_from_dict(values, where="x")
        return str(info.value)

    assert config_from_dict({"objective": "vr"}).params == (("alpha", 0.5),)  # the default
    assert config_from_dict({"objective": "vr", "params.alpha": 2}).param("alpha") == 2.0
    assert "param 'alpha' (of objective 'vr') must be a number, got 'big'" in error(
        {"objective": "vr", "params": {"alpha": "big"}})
    assert "param 'alpha' (of objective 'vr') may not be inf" in error(
        {"objective": "vr", "params": {"alpha": math.inf}})
    assert ("unknown param 'alpha': it belongs to objective 'vr', which this config does not "
            "use") in error({"objective": "iwae", "params": {"alpha": 0.0}})
    assert "unknown param 'gamma2': no objective, posterior or model declares it" in error(
        {"objective": "vr", "params": {"gamma2": 1.0}})
    a, b = (config_from_dict({"objective": "vr", "params": {"alpha": x}}) for x in (0.0, 0.5))
    assert a.run_id != b.run_id and a.label == "vr-alpha0"


def test_a_suite_grid_over_a_param_names_its_runs_and_filters_them(vr, tmp_path):
    from bench.suite import filter_variants

    path = tiny(tmp_path, "alphas", """
        objective = "vr"

        [grid]
        params.alpha = [0.0, 0.5, -inf]
        """, '"vaebench_vr"')
    suite = load_suite(path)
    assert [v.name for v in suite.variants] == ["params.alpha=0", "params.alpha=0.5",
                                                "params.alpha=-inf"]
    assert len({v.run_id for v in suite.variants}) == 3
    (one,) = filter_variants(suite.variants, ["params.alpha=0.5"])
    assert one.config.param("alpha") == 0.5
    bad = tiny(tmp_path, "bad", """
        objective = "vr"

        [grid]
        params.alpha = [0.0, inf]
        """, '"vaebench_vr"')
    with pytest.raises(BenchError, match=r"\[grid\] axis 'params.alpha' = inf.*may not be inf"):
        load_suite(bad)


def test_train_takes_params_on_the_command_line(vr, capsys):
    from bench.cli import main

    argv = ["train", "--objective", "vr", "--param", "alpha=-inf", "--dataset", "digits",
            "--hidden", "8", "--latent", "2", "--train-size", "100", "--test-size", "20",
            "--epochs", "1", "--k", "3", "--k-eval", "5", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["params"] == {"alpha": "-inf"} and out["label"] == "vr-k3-alpha-inf"
    assert main(argv[:3] + ["--param", "alpha=1", "--param", "alpha=2"]) == 2
    assert capsys.readouterr().err.strip() == "vaebench: error: --param alpha is given twice"


# --------------------------------------------------------------------------- bad plugins
BAD = {
    "import": ("raise RuntimeError('no GPU here')\n",
               "importing it raised RuntimeError: no GPU here"),
    "syntax": ("def register(api)\n", "importing it raised SyntaxError"),
    "no-register": ("x = 1\n", "defines no register(api) function"),
    "register-raises": ("def register(api):\n    raise KeyError('k')\n",
                        "register(api) raised KeyError: 'k'"),
    "existing-name": ("def register(api):\n    api.objective('iwae', lambda cfg: None)\n",
                      "objective 'iwae' already exists (registered by vaebench)"),
    "no-default": ("from bench.plugins import Param\n"
                   "def register(api):\n"
                   "    api.objective('x', lambda cfg: None, params=[Param('a', float)])\n",
                   "objective 'x': param 'a' has no default"),
    "bad-type": ("from bench.plugins import Param\n"
                 "def register(api):\n"
                 "    api.objective('x', lambda cfg: None, params=[Param('a', list, [])])\n",
                 "objective 'x': param 'a': type must be int, float, str or bool"),
    "default-out-of-range": (
        "from bench.plugins import Param\n"
        "def register(api):\n"
        "    api.objective('x', lambda cfg: None,\n"
        "                  params=[Param('a', float, -1.0, minimum=0.0)])\n",
        "objective 'x': param 'a' (its default) must be >= 0, got -1.0"),
    "bad-name": ("from bench.plugins import Param\n"
                 "def register(api):\n"
                 "    api.objective('x', lambda cfg: None, params=[Param('a b', float, 1.0)])\n",
                 "objective 'x': param name 'a b' must be an identifier"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_plugin_is_one_line_and_exit_2_before_any_run(case, tmp_path, capsys):
    from bench.cli import main

    source, fragment = BAD[case]
    plugin = write(tmp_path / "bad.py", source)
    results = tmp_path / "r"
    assert main(["run", "smoke", "--budget", "smoke", "--plugin", str(plugin),
                 "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vaebench: error: plugin bad"), err
    assert fragment in err, err
    assert not results.exists()
    assert "x" not in OBJECTIVES and "bad" not in {p.name for p in plugins.loaded()}


def test_an_unknown_plugin_module_is_one_line(capsys):
    from bench.cli import main

    assert main(["report", "--plugin", "no_such_plugin_module"]) == 2
    assert capsys.readouterr().err.strip() == (
        "vaebench: error: plugin no_such_plugin_module: cannot import it: ModuleNotFoundError: "
        "No module named 'no_such_plugin_module'")


@pytest.mark.parametrize("returned, fragment", [
    ("log_w", "returned a bound of shape (5, 3) (torch.float32) for k = 5 samples of 3 "
              "examples: it must be (3,), one value per example"),
    ("log_w.sum()", "returned a bound of shape () (torch.float32)"),
    ("log_w.detach().mean(0)", "returned a bound with no gradient"),
    ("log_w.mean().item()", "returned float, not a tensor"),
])
def test_a_bound_of_the_wrong_shape_is_refused_before_any_run(returned, fragment, tmp_path,
                                                               capsys):
    from bench.cli import main

    write(tmp_path / "shape.py", f"""
        def make(cfg):
            def bound(sample):
                log_w = sample.log_weights
                return {returned}
            return bound


        def register(api):
            api.objective("shaped", make)
        """)
    path = tiny(tmp_path, "shaped", 'objective = "shaped"\n', '"shape.py"')
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("vaebench: error: plugin shape: objective 'shaped' ") and fragment in err
    assert not (tmp_path / "r").exists() or store.load_runs(tmp_path / "r").empty


def test_a_plugin_bound_that_goes_nan_is_a_diverged_row(tmp_path):
    write(tmp_path / "nan.py", """
        def make(cfg):
            def bound(sample):
                return sample.log_weights.mean(0) * float("nan")
            return bound


        def register(api):
            api.objective("nan_bound", make)
        """)
    path = tiny(tmp_path, "nan", 'objective = "nan_bound"\n', '"nan.py"')
    summary = run_suite(load_suite(path), RunOptions(results=tmp_path / "r", executor="local",
                                                     show_progress=False))
    assert summary.statuses == {"diverged": 1}


# --------------------------------------------------------------------------- one way in
def test_built_ins_and_plugins_enter_the_registries_by_the_same_register(monkeypatch, vr,
                                                                         tmp_path):
    # every registry is a components.Registry: its only way in is `register`
    for registry in (FAMILIES, OBJECTIVES, POSTERIORS, catalog.CATALOG):
        assert isinstance(registry, components.Registry)
    assert {f.plugin for f in FAMILIES if f.name in ("lvm", "mixture", "gmm")} == {BUILT_IN}
    assert {o.plugin for o in OBJECTIVES} == {BUILT_IN, vr.name}
    assert {p.plugin for p in POSTERIORS} == {BUILT_IN}
    # vaebench's own records are registered by that method too (a fresh registry of them)...
    calls = []
    real = components.Registry.register

    def spy(self, record):
        calls.append((self.kind, record.name))
        return real(self, record)

    monkeypatch.setattr(components.Registry, "register", spy)
    from bench.families.registry import BUILT_IN as BUILT_IN_FAMILIES
    from bench.families.registry import Registry
    Registry(BUILT_IN_FAMILIES)
    catalog.Catalog(catalog.METRICS)
    assert [n for k, n in calls if k == "family"] == [f.name for f in BUILT_IN_FAMILIES]
    assert [n for k, n in calls if k == "metric"] == [m.name for m in catalog.METRICS]
    # ... and so are a plugin's: an objective, a family (toy) and a metric record
    calls.clear()
    write(tmp_path / "coin.py", COIN_PLUGIN.replace("TOSSES", "cfg.iterations"))
    plugins.load([str(tmp_path / "coin.py")], entry_points=False)
    assert calls == [("family", "coin"), ("metric", "coin_error")]


COIN_PLUGIN = '''
from bench.plugins import Family, Metric, Param, LOWER


def train(cfg):
    # a coin with bias `bias`, estimated from `iterations` tosses: the error of the estimate
    import random
    rng = random.Random(cfg.seed)
    bias = cfg.param("bias")
    tosses = TOSSES
    heads = sum(rng.random() < bias for _ in range(tosses))
    return {"coin_error": abs(heads / tosses - bias) * 100.0}


def register(api):
    api.family(Family("coin", "coin toss", train, toy=True,
                      owns=frozenset({"iterations"}), companions={"iterations": 1},
                      metrics=("coin_error",),
                      params=(Param("bias", float, 0.5, minimum=0.0, maximum=1.0),)))
    api.metric(Metric("coin_error", "coin error (%)", "%", LOWER, threshold=1.0))
'''


def test_compare_and_the_report_judge_a_plugins_metric_by_its_catalog_record(tmp_path):
    # Guards against: plugin metrics that compare never judges (no record found), and
    # plugin rows the report does not label. The same config run with the plugin before and
    # after a bug (it tosses 500 times fewer coins): compare matches the runs and judges
    # the plugin's metric by its own catalog record.
    from bench.report import build_report

    for name, tosses in (("base", "cfg.iterations"), ("cand", "cfg.iterations // 500")):
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "coin.py", COIN_PLUGIN.replace("TOSSES", tosses))
        suite = write(folder / "coin.toml", """
            [suite]
            name = "coin"
            description = "a plugin's toy family"
            plugins = ["coin.py"]

            [base]
            dataset = "coin"
            iterations = 10000
            params.bias = 0.3
            """)
        summary = run_suite(load_suite(suite), RunOptions(
            results=folder / "r", executor="local", show_progress=False))
        assert summary.statuses == {"finished": 1}
    text, code = run_compare(tmp_path / "base" / "r", tmp_path / "cand" / "r", fmt="json")
    verdicts = {(v["metric"].removeprefix("metric_"), v["verdict"])
                for v in json.loads(text)["verdicts"]}
    assert verdicts == {("coin_error", "regressed")}, verdicts
    assert code == 1
    md = build_report(tmp_path / "cand" / "r", tmp_path / "report").suites["coin"] \
        .with_suffix(".md").read_text()
    digest = plugins.get("coin").short
    (header,) = [line for line in md.splitlines() if line.startswith("| variant | plugin")]
    assert header.rstrip(" |").endswith("| coin error (%)")  # the plugin's metric, by its record
    assert f"coin (code {digest})" in md  # the summary table's plugin column


# --------------------------------------------------------------------------- the README
def _readme_blocks() -> tuple[str, str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Benchmark your own method"):]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    return python, toml


def test_the_readmes_ten_lines_run_a_bound_on_iwae_table1_beside_vae_and_iwae(tmp_path):
    # Guards against: a README example that no longer loads (API renamed, `extends` or the
    # [base] params rule broken), and one that grew past the ten lines it promises
    python, toml = _readme_blocks()
    assert len([line for line in python.splitlines() if line.strip()]) <= 10
    write(tmp_path / "mybound.py", python)
    suite = load_suite(write(tmp_path / "mine.toml", toml), "smoke")
    table1 = load_suite(REPO / "suites" / "iwae_table1.toml", "smoke")
    assert suite.name == "tempered_table1"
    assert len(suite.variants) == 3 * len(table1.variants) // 2  # vae, iwae and tempered
    assert suite.references == table1.references and suite.cards == table1.cards
    tempered = [v for v in suite.variants if v.config.objective == "tempered"]
    assert {v.config.params for v in tempered} == {(("temperature", 2.0),)}
    assert all(v.config.params == () for v in suite.variants if v not in tempered)
    # vae and iwae are Table 1's own runs (the same run_ids), the bound's are new
    assert {v.run_id for v in table1.variants} < {v.run_id for v in suite.variants}
    from bench.runner import check_plugin_objectives
    check_plugin_objectives([v.config for v in tempered])  # one value per example


def test_extends_lays_the_file_over_its_parent(vr, tmp_path):
    parent = write(tmp_path / "parent.toml", """
        [suite]
        name = "parent"
        description = "p"
        seeds = [0, 1]
        default_budget = "smoke"

        [base]
        dataset = "digits"
        epochs = 3

        [grid]
        k = [1, 5]

        [budget.smoke]
        epochs = 1
        train_size = 100

        [[reference]]
        metric = "test_nll"
        value = 30.0
        source = "Paper A, Table 1"
        budget = "smoke"
        card = "a"

        [card.a]
        paper = ["not checked: anything"]
        code = ["not checked: anything"]
        """)
    child = write(tmp_path / "child.toml", f"""
        [suite]
        name = "child"
        description = "c"
        extends = "{parent.name}"

        [grid]
        k = [2]

        [budget.smoke]
        train_size = 50

        [[reference]]
        metric = "test_nll"
        value = 29.0
        source = "Paper B, Table 2"
        budget = "smoke"
        card = "a"
        """)
    suite = load_suite(child)
    assert suite.name == "child" and suite.seeds == (0, 1)
    assert [r.value for r in suite.references] == [30.0, 29.0]  # the parent's, then its own
    write(tmp_path / "parent2.toml", """
        [suite]
        name = "p2"
        description = "p"

        [base]
        objective = "vr"
        params = { alpha = 0.25 }

        [[reference]]
        metric = "test_nll"
        value = 30.0
        source = "Paper A, Table 1"
        card = "a"

        [card.a]
        paper = ["not checked: anything"]
        code = ["not checked: anything"]
        """.replace('[suite]', '[suite]\nplugins = ["vaebench_vr"]', 1))
    write(tmp_path / "child2.toml", """
        [suite]
        name = "c2"
        description = "c"
        extends = "parent2.toml"

        [base]
        params = { alpha = -1.0 }
        k = 2

        [card.a]
        code = ["Adam (read: train.py)"]
        """)
    second = load_suite(tmp_path / "child2.toml")  # params and cards overridden key by key
    assert second.variants[0].config.param("alpha") == -1.0
    assert second.cards[0].paper == ("not checked: anything",)
    assert second.cards[0].code == ("Adam (read: train.py)",)
    assert [(v.config.k, v.config.epochs, v.config.train_size) for v in suite.variants] == [
        (2, 1, 50), (2, 1, 50)]
    write(tmp_path / "loop.toml", '[suite]\nname = "loop"\ndescription = "l"\n'
          'extends = "loop.toml"\n')
    with pytest.raises(BenchError, match=r"loop.toml: \[suite\] key 'extends': loop.toml "
                                         r"extends this suite again \(a cycle\)"):
        load_suite(tmp_path / "loop.toml")
    write(tmp_path / "orphan.toml", '[suite]\nname = "o"\ndescription = "o"\n'
          'extends = "no_such_suite"\n')
    with pytest.raises(BenchError, match=r"\[suite\] key 'extends': unknown suite "
                                         r"'no_such_suite'"):
        load_suite(tmp_path / "orphan.toml")


def test_an_installed_distribution_is_found_by_its_entry_point(tmp_path, monkeypatch):
    # Guards against: the entry-point group misspelled, or a plugin identified by its module
    # rather than its distribution's name and version
    (tmp_path / "epplug").mkdir()
    (tmp_path / "epplug" / "__init__.py").write_text(
        "def register(api):\n    api.objective('ep_bound', 'epplug:make')\n")
    info = tmp_path / "epplug-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[vaebench.plugins]\nep = epplug\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.load()
    plugin = plugins.get("epplug")
    assert (plugin.version, plugin.origin, plugin.module) == ("1.2.3", "entry point", "epplug")
    assert OBJECTIVES.get("ep_bound").plugin == "epplug"
    assert plugin.label == f"epplug 1.2.3 (code {plugin.short})"


def test_an_entry_point_to_a_function_loads_on_a_worker_too(tmp_path, monkeypatch):
    # Guards against: a worker that calls `register` where the entry point names another
    # function (module:attr), and a distribution's second entry point skipped silently
    import pickle
    import subprocess

    (tmp_path / "twoplug").mkdir()
    (tmp_path / "twoplug" / "__init__.py").write_text(
        "def setup(api):\n    api.objective('two_a', 'twoplug:make')\n"
        "def other(api):\n    api.objective('two_b', 'twoplug:make')\n")
    info = tmp_path / "twoplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: twoplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[vaebench.plugins]\na = twoplug:setup\nb = twoplug:other\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.load()
    assert {OBJECTIVES.get(n).plugin for n in ("two_a", "two_b")} == {"twoplug:a", "twoplug:b"}
    shipped = tmp_path / "shipped.pkl"
    shipped.write_bytes(pickle.dumps(plugins.get("twoplug:a")))
    code = ("import pickle, sys; from bench import plugins; from bench.components import "
            "OBJECTIVES; plugins.ensure([pickle.loads(open(sys.argv[1], 'rb').read())]); "
            "print(OBJECTIVES.get('two_a').plugin)")
    done = subprocess.run([sys.executable, "-c", code, str(shipped)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)  # twoplug is not on its path
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "twoplug:a"


SCALED = """
from bench.models.posteriors import GaussianPosterior
from bench.plugins import Param


class Scaled(GaussianPosterior):
    def __init__(self, n_in, hidden, n_latent, scale):
        super().__init__(n_in, hidden, n_latent)
        self.scale = scale


def register(api):
    api.posterior("scaled", Scaled, params=[Param("scale", float, 1.0, minimum=0.0)])
"""


def test_a_plugin_posterior_is_built_with_its_params(tmp_path):
    # Guards against: params that are validated and hashed but never reach the posterior
    from bench.models import build_model

    write(tmp_path / "scaled.py", SCALED)
    plugins.load([str(tmp_path / "scaled.py")], entry_points=False)
    cfg = config_from_dict({"posterior": "scaled", "params.scale": 3.0, "latent": [2],
                            "hidden": [[4]]})
    assert build_model(cfg, 6).encoders[0].scale == 3.0
    assert cfg.label == "vae-scaled-scale3"


@pytest.mark.parametrize("source, fragment", [
    ("from bench.plugins import Metric, HIGHER\ndef register(api):\n"
     "    api.metric(Metric('kl_unit_3', 'x', 'nats', HIGHER, threshold=0.1))\n",
     "metric 'kl_unit_3' is one of the metrics 'kl_unit_<j>' already has a record for"),
    ("from bench.plugins import Metric, HIGHER\ndef register(api):\n"
     "    api.metric(Metric('score_<n>', 'x', '', HIGHER, threshold=0.1))\n",
     "metric 'score_<n>' names a family of metrics: give the pattern"),
    ("from bench.plugins import Metric, HIGHER\ndef register(api):\n"
     "    api.metric(Metric('r_<n>', 'x', '', HIGHER, threshold=0.1, pattern=r'ra\\w+'))\n",
     "pattern 'ra\\\\w+' also matches the metric 'rate'"),
    ("from bench.plugins import Family\ndef register(api):\n"
     "    api.family(Family('greedy', 'g', lambda cfg: {}, toy=True, owns=frozenset({'k'})))\n",
     "family 'greedy' owns key 'k', which every family uses"),
])
def test_a_plugin_cannot_take_what_others_have(source, fragment, tmp_path):
    # Guards against: a plugin's record for kl_unit_3 judging a built-in metric its own way,
    # and a plugin family owning `k`, which would refuse k != 1 in every built-in suite
    write(tmp_path / "greedy.py", source)
    with pytest.raises(BenchError) as info:
        plugins.load([str(tmp_path / "greedy.py")], entry_points=False)
    assert str(info.value).startswith("plugin greedy: ") and fragment in str(info.value)
    assert config_from_dict({"objective": "iwae", "k": 5}).k == 5


def test_identity_equality_and_replace_follow_the_plugin(vr, tmp_path):
    cfg = config_from_dict({"objective": "vr", "params": {"alpha": 0.0}})
    other = plugins.replace(vr, digest="0" * 64)
    plugins._LOADED[vr.name] = other
    try:
        edited = config_from_dict({"objective": "vr", "params": {"alpha": 0.0}})
    finally:
        plugins._LOADED[vr.name] = vr
    assert edited != cfg and len({cfg, edited}) == 2  # other code, another run
    assert cfg.plugin_code() == {vr.name: vr.identity()}
    assert cfg.replace(objective="iwae").params == ()  # alpha is vr's, not iwae's
    assert cfg.replace(k=3).param("alpha") == 0.0


def test_a_worker_that_cannot_load_a_plugin_fails_its_runs_and_the_grid_goes_on(tmp_path):
    # The plugin imports in the driver (this process) and raises anywhere else, as a plugin
    # whose dependency a worker node lacks would: its run is a failed row naming the plugin
    # and the error; the built-in run beside it finishes.
    import os

    write(tmp_path / "driver_only.py", f"import os\nif os.getpid() != {os.getpid()}:\n"
          "    raise ImportError('needs a library this node lacks')\n" + TWIN)
    path = tiny(tmp_path, "lost", """
        [[variant]]
        name = "twin"
        objective = "twin"

        [[variant]]
        name = "iwae"
        objective = "iwae"
        """, '"driver_only.py"')
    summary = run_suite(load_suite(path), RunOptions(results=tmp_path / "r",
                                                     show_progress=False))
    assert summary.statuses == {"failed": 1, "finished": 1}
    runs = store.load_runs(tmp_path / "r", suite="lost").set_index("variant")
    assert runs.loc["iwae", "status"] == "finished"
    error = runs.loc["twin", "error"]
    assert error.startswith("worker could not load a plugin: plugin driver_only (") and \
        error.endswith("importing it raised ImportError: needs a library this node lacks"), error
    assert runs.loc["twin", "sys_ray_node_id"]  # which node could not


def test_filters_and_train_json_with_params(vr, capsys):
    from bench.cli import main
    from bench.suite import filter_variants

    suite = load_suite(EXAMPLE / "src" / "vaebench_vr" / "suites" / "vr_mnist.toml", "smoke")
    assert len(filter_variants(suite.variants, ["params.alpha=-inf"])) == 4
    with pytest.raises(BenchError, match="filter 'params.alhpa=0': unknown key 'params.alhpa'"):
        filter_variants(suite.variants, ["params.alhpa=0"])  # a typo selects nothing: refused
    assert main(["train", "--objective", "vr", "--param", "alpha=-inf", "--dataset", "digits",
                 "--hidden", "8", "--latent", "2", "--train-size", "50", "--test-size", "10",
                 "--epochs", "1", "--k-eval", "3", "--quiet", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["config"]["params"] == {"alpha": "-inf"}  # valid JSON: no -Infinity


def test_a_param_set_for_a_run_that_cannot_use_it_is_refused(vr, tmp_path):
    # [base] params reach only the runs whose component declares them; a variant or grid
    # that sets one for a run that does not use it is a mistake, not something to drop
    path = tiny(tmp_path, "misplaced", """
        [[variant]]
        name = "iwae"
        objective = "iwae"
        params = { alpha = -0.7 }
        """, '"vaebench_vr"')
    with pytest.raises(BenchError, match=r"\[\[variant\]\] 'iwae'.*unknown param 'alpha': it "
                                         r"belongs to objective 'vr'"):
        load_suite(path)


def test_a_row_records_the_plugin_code_of_its_config(vr):
    cfg = config_from_dict({"objective": "vr"})
    plugins._LOADED[vr.name] = plugins.replace(vr, digest="f" * 64)  # edited since
    try:
        row = store.run_row(suite="s", variant="v", config=cfg, status="finished",
                            metrics={}, provenance={})
    finally:
        plugins._LOADED[vr.name] = vr
    assert json.loads(row["sys_plugins"]) == {vr.name: vr.identity()}
    assert row["run_id"] == cfg.run_id


def test_a_suite_of_seeds_whose_objective_has_a_param_named_seed(tmp_path):
    # Guards against: a suite's other seeds (RunConfig.with_seed substitutes the seed into
    # the first seed's canonical JSON) taking the param's "seed" for the run's, or keeping
    # the first seed's cached identity where the substitution cannot be used: two runs of a
    # sweep with one run_id, or a run_id other than the config's own.
    write(tmp_path / "seeded.py", """
        from bench.plugins import Param


        def register(api):
            api.objective("seeded", "bench.objectives:make_iwae",
                          params=[Param("seed", int, 3)])
        """)
    path = tiny(tmp_path, "seeded", """
        objective = "seeded"
        params = { seed = 0 }
        """, '"seeded.py"')
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0, 1, 2]"))
    suite = load_suite(path)
    assert [v.config.seed for v in suite.variants] == [0, 1, 2]
    for variant in suite.variants:
        built = config_from_dict(variant.config.to_dict())
        assert variant.config.canonical_json() == built.canonical_json()
        assert variant.config.run_id == built.run_id and built.param("seed") == 0
    assert len({v.config.run_id for v in suite.variants}) == 3


def test_the_report_finds_a_suite_run_from_its_path(tmp_path, monkeypatch):
    # Guards against: a user's suite (run by its path, outside ./suites) reported without
    # its description, references and cards because the report looks suites up by name
    from bench.report import build_report

    write(tmp_path / "twin.py", TWIN)
    path = tiny(tmp_path, "mine", """
        objective = "twin"

        [[reference]]
        metric = "test_nll"
        value = 25.0
        source = "Paper A, Table 1"
        card = "a"

        [card.a]
        paper = ["not checked: everything"]
        code = ["not checked: everything"]
        """, '"twin.py"')
    monkeypatch.chdir(tmp_path.parent)  # no ./suites/mine.toml here
    run_suite(load_suite(path), RunOptions(results=tmp_path / "r", executor="local",
                                           show_progress=False))
    md = build_report(tmp_path / "r", tmp_path / "report").suites["mine"] \
        .with_suffix(".md").read_text()
    assert "Paper A, Table 1" in md and "Protocol card a" in md, md[:2000]


def test_a_task_never_ships_other_code_than_its_run_ids_name(tmp_path):
    # Guards against: a plugin reloaded with new code after its suite was loaded (a long-lived
    # session) whose workers run the new code under run_ids that name the old one
    from bench.runner import make_tasks

    write(tmp_path / "twin.py", TWIN)
    suite = load_suite(tiny(tmp_path, "stale", 'objective = "twin"\n', '"twin.py"'))
    options = RunOptions(results=tmp_path / "r", stack="off")
    (task,) = make_tasks(suite, suite.variants, options, on_gpus=False)
    assert [p.digest for p in task.plugins] == [plugins.get("twin").digest]
    write(tmp_path / "twin.py", TWIN + "# edited\n")
    plugins.load([str(tmp_path / "twin.py")], entry_points=False)  # reloaded: other code
    with pytest.raises(BenchError, match=r"plugin twin changed since its runs were planned "
                                         r"\(code \w{12} -> \w{12}\): load the suite again"):
        make_tasks(suite, suite.variants, options, on_gpus=False)
