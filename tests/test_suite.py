"""Suites: the shipped TOML files, expansion and precedence, validation, filters, references."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.config import config_from_dict
from bench.errors import BenchError
from bench.suite import (
    SUITES_DIR,
    Reference,
    filter_variants,
    load_suite,
    resolve_suite_path,
)

SHIPPED = tuple(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))  # every suite we ship


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
[suite]
name = "x"
description = "test suite"
"""


def error_of(path: Path, budget: str | None = None) -> str:
    with pytest.raises(BenchError) as info:
        load_suite(path, budget)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- shipped suites
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_suites_load_at_every_budget(name):
    path = resolve_suite_path(name)
    default = load_suite(path)
    # the merge gate has one budget, the one its values are pinned at (tests/test_gate.py)
    expected = ("cpu",) if name == "gate" else ("smoke", "cpu", "paper")
    assert set(expected) <= set(default.budgets)
    assert default.budget in default.budgets and default.name == name
    for budget in default.budgets:
        suite = load_suite(path, budget)
        assert suite.budget == budget and suite.variants
        run_ids = [v.run_id for v in suite.variants]
        assert len(set(run_ids)) == len(run_ids)
        names = {(v.name, v.seed) for v in suite.variants}
        assert len(names) == len(suite.variants)
        assert {v.seed for v in suite.variants} == set(suite.seeds)


def test_bench_suite_is_eight_variants_by_two_seeds_at_cpu():
    suite = load_suite(resolve_suite_path("bench"))
    assert suite.budget == "cpu" and suite.seeds == (0, 1)
    assert len(suite.variants) == 16
    names = list(dict.fromkeys(v.name for v in suite.variants))
    assert names == [
        "vae", "iwae-k5", "iwae-k50", "vae-beta0", "vae-beta0.5", "vae-beta2", "vae-beta4",
        "mixture-k200",
    ]
    lvm = [v for v in suite.variants if v.config.model == "lvm"]
    assert all(v.name == v.config.label for v in lvm)  # names follow the labels
    mixture = [v.config for v in suite.variants if v.config.model == "mixture"]
    assert [(c.components, c.iterations) for c in mixture] == [(200, 50)] * 2
    for v in suite.variants:
        cfg = v.config
        assert (cfg.dataset, cfg.train_size, cfg.test_size) == ("mnist", 10000, 1000)
        assert (cfg.epochs, cfg.batch_size, cfg.k_eval) == (10, 100, 1000)
    paper = load_suite(resolve_suite_path("bench"), "paper")
    for v in paper.variants:
        assert v.config.schedule == "burda" and v.config.epochs == 3280
        assert v.config.train_size is None and v.config.test_size is None
        assert (v.config.batch_size, v.config.k_eval) == (20, 5000)
    smoke = load_suite(resolve_suite_path("bench"), "smoke")
    assert len(smoke.variants) == 8 and smoke.seeds == (0,)


def test_smoke_suite_is_tiny_and_has_one_reference():
    suite = load_suite(resolve_suite_path("smoke"))
    assert suite.budget == "smoke" and suite.seeds == (0, 1)
    assert all(v.config.dataset == "digits" and v.config.epochs <= 2 for v in suite.variants)
    assert len(suite.references) == 1
    ref = suite.references[0]
    assert ref.metric == "test_nll" and ref.budget == "paper"
    assert [v.config.objective for v in suite.variants if ref.matches(v.config)] == ["vae"] * 2


def test_iwae_table1_references_match_exactly_one_cell_each():
    suite = load_suite(resolve_suite_path("iwae_table1"), "paper")
    assert len(suite.references) == 12 and len(suite.variants) == 12
    assert suite.grid_axes == ("hidden", "latent", "objective", "k")
    for ref in suite.references:
        assert ref.metric == "test_nll" and ref.budget == "paper"
        assert ref.source == "Burda et al. 2015, Table 1"
        matched = {v.name for v in suite.variants if ref.matches(v.config)}
        assert len(matched) == 1, (ref, matched)
    by_name = {
        v.name: [r.value for r in suite.references if r.matches(v.config)][0]
        for v in suite.variants
    }
    assert by_name["1layer,objective=vae,k=1"] == 86.76
    assert by_name["1layer,objective=iwae,k=50"] == 84.78
    assert by_name["2layer,objective=vae,k=50"] == 84.78
    assert by_name["2layer,objective=iwae,k=50"] == 82.90
    for v in suite.variants:
        assert v.config.schedule == "burda" and v.config.k_eval == 5000
        assert v.config.batch_size == 20


# --------------------------------------------------------------------------- expansion
GRID_SUITE = """
[suite]
name = "x"
description = "precedence"
default_budget = "small"
seeds = [3, 4]

[base]
dataset = "digits"
epochs = 7
k_eval = 11
lr = 0.01

[grid]
objective = ["vae", "iwae"]
k = [1, 5]

[[variant]]
name = "a"
epochs = 2

[[variant]]
name = "b"
latent = [4]
hidden = [[8]]

[budget.small]
epochs = 3
k_eval = 13
k = 50
seeds = [9]

[budget.big]
"""


def test_expansion_order_is_variants_then_grid_then_seeds(tmp_path):
    suite = load_suite(write(tmp_path, GRID_SUITE), "big")
    assert suite.seeds == (3, 4) and suite.budgets == ("small", "big")
    got = [(v.name, v.seed) for v in suite.variants]
    expected = [
        (f"{n},objective={o},k={k}", s)
        for n in ("a", "b")
        for o in ("vae", "iwae")
        for k in (1, 5)
        for s in (3, 4)
    ]
    assert got == expected
    assert suite.grid_axes == ("epochs", "latent", "hidden", "objective", "k")


def test_precedence_base_budget_grid_variant_seed(tmp_path):
    suite = load_suite(write(tmp_path, GRID_SUITE))  # default budget "small"
    assert suite.budget == "small" and suite.seeds == (9,)
    for v in suite.variants:
        cfg = v.config
        assert cfg.seed == 9  # the budget's seeds replace the suite's
        assert cfg.lr == 0.01  # base, untouched
        assert cfg.k_eval == 13  # budget over base
        assert cfg.k in (1, 5)  # grid over budget
        assert cfg.epochs == (2 if v.name.startswith("a,") else 3)  # variant over budget
        assert cfg.latent == ((4,) if v.name.startswith("b,") else (50,))
    first = suite.variants[0]
    assert first.config == config_from_dict(
        {"dataset": "digits", "epochs": 2, "k_eval": 13, "lr": 0.01, "objective": "vae",
         "k": 1, "seed": 9}
    )
    assert first.run_id == first.config.run_id and first.seed == 9


def test_variant_overrides_grid(tmp_path):
    path = write(tmp_path, MINIMAL + """
        [grid]
        beta = [0.5, 2.0]
        [[variant]]
        name = "v"
        k = 3
        [[variant]]
        name = "w"
        beta = 4.0
        k = 3
        """.replace("        ", ""))
    # variant "w" overrides the whole beta axis: both grid points collapse into one run
    message = error_of(path)
    assert "same config" in message and "'w,beta=0.5' seed 0" in message
    assert "'w,beta=2' seed 0" in message


def test_without_grid_or_named_variants_the_name_is_the_label(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL + '[base]\nobjective = "iwae"\nk = 5\n'))
    assert [v.name for v in suite.variants] == ["iwae-k5"]
    assert suite.budget is None and suite.budgets == () and suite.seeds == (0,)
    assert suite.grid_axes == ()


def test_run_ids_are_stable_and_independent_of_key_order(tmp_path):
    a = write(tmp_path, GRID_SUITE, "a.toml")
    reordered = (
        GRID_SUITE.replace('dataset = "digits"\nepochs = 7\nk_eval = 11\nlr = 0.01',
                           'lr = 0.01\nk_eval = 11\nepochs = 7\ndataset = "digits"')
        .replace("latent = [4]\nhidden = [[8]]", "hidden = [[8]]\nlatent = [4]")
    )
    assert reordered != GRID_SUITE
    b = write(tmp_path, reordered, "b.toml")
    first, again, other = load_suite(a), load_suite(a), load_suite(b)
    assert [v.run_id for v in first.variants] == [v.run_id for v in again.variants]
    assert [v.run_id for v in first.variants] == [v.run_id for v in other.variants]
    assert [v.name for v in first.variants] == [v.name for v in other.variants]
    # swapping the grid axes changes the order and the names, not the set of runs
    swapped = write(
        tmp_path,
        GRID_SUITE.replace('objective = ["vae", "iwae"]\nk = [1, 5]',
                           'k = [1, 5]\nobjective = ["vae", "iwae"]'),
        "c.toml",
    )
    assert {v.run_id for v in load_suite(swapped).variants} == {
        v.run_id for v in first.variants
    }


def test_shipped_run_ids_are_pinned_to_their_configs():
    # a changed default or hashing rule would orphan every stored result of the suite (as
    # protocols 2 and 3 did on purpose: issue 13's initialisation, and analytic_kl = false in
    # [base]; issue 16's sliced estimate)
    ids = [v.run_id for v in load_suite(SUITES_DIR / "iwae_table1.toml", "cpu").variants]
    assert (ids[0], ids[-1]) == ("476d77ffbca599fa", "2c905d30b09b7bfa")


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "body, fragments",
    [
        ("[grid]\nk = [1, 0]\n", ["[grid]", "'k'", ">= 1"]),
        ('[grid]\nobjective = ["vae", "iwea"]\n', ["[grid]", "unknown objective 'iwea'"]),
        ("[grid]\nbeta = []\n", ["[grid] axis 'beta' has no values"]),
        ("[grid]\nk = 5\n", ["[grid] axis 'k' must be a list"]),
        ("[base]\nepoch = 3\n", ["unknown key 'epoch' in [base]"]),
        ("[base]\nk = 2.5\n", ["[base]", "'k' must be an integer"]),
        ("[base]\nseed = 3\n", ["'seed'", "[base]", "seeds"]),
        ("[budgett.smoke]\nepochs = 1\n", ["unknown table [budgett]"]),
        ("[[variant]]\nk = 5\n", ["[[variant]] #1 has no 'name'"]),
        ('[[variant]]\nname = "a"\n[[variant]]\nname = "a"\nk = 5\n',
         ["[[variant]] #2", "duplicate name 'a'"]),
        ('[[variant]]\nname = "a"\nepoch = 5\n', ["unknown key 'epoch' in [[variant]] 'a'"]),
        ('[[variant]]\nname = "a"\nobjective = "iwae"\nbeta = 2.0\n',
         ["[[variant]] 'a'", "'beta'"]),
        ("[budget.smoke]\nepochs = 0\n", ["[budget.smoke]", "'epochs' must be >= 1"]),
        ("[budget.smoke]\nseeds = [0, 0]\n", ["[budget.smoke] key 'seeds'"]),
        ("[budget]\nepochs = 1\n", ["[budget] key 'epochs' must be a table"]),
        ('[[reference]]\nvalue = 1.0\nsource = "s"\n', ["[[reference]] #1", "'metric'"]),
        ('[[reference]]\nmetric = "m"\nsource = "s"\n', ["[[reference]] #1", "'value'"]),
        ('[[reference]]\nmetric = "m"\nvalue = 1.0\n', ["[[reference]] #1", "'source'"]),
        ('[[reference]]\nmetric = "m"\nvalue = "x"\nsource = "s"\n',
         ["[[reference]] #1 key 'value'"]),
        ('[[reference]]\nmetric = "m"\nvalue = 1.0\nsource = "s"\nmatch = { epoch = 1 }\n',
         ["unknown key 'epoch' in [[reference]] #1 match"]),
        ('[[reference]]\nmetric = "m"\nvalue = 1.0\nsource = "s"\nurl = "u"\n',
         ["unknown key 'url' in [[reference]] #1"]),
        ('[[reference]]\nmetric = "m"\nvalue = 1.0\nsource = "s"\nmatch = { k = 7 }\n'
         'card = "c"\n[card.c]\npaper = ["not checked: p"]\ncode = ["not checked: c"]\n',
         ["[[reference]] #1", "matches no run"]),
    ],
)
def test_malformed_suites_name_the_table_and_key(tmp_path, body, fragments):
    message = error_of(write(tmp_path, MINIMAL + body))
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "suite_table, fragment",
    [
        ('[suite]\ndescription = "d"\n', "[suite] is missing key 'name'"),
        ('[suite]\nname = "x"\n', "[suite] is missing key 'description'"),
        ('[suite]\nname = "X Y"\ndescription = "d"\n', "[suite] key 'name' must match"),
        ('[suite]\nname = "x"\ndescription = "d"\nseeds = [0, "1"]\n', "[suite] key 'seeds'"),
        ('[suite]\nname = "x"\ndescription = "d"\nseeds = []\n', "[suite] key 'seeds'"),
        ('[suite]\nname = "x"\ndescription = "d"\nseeds = 1\n', "[suite] key 'seeds'"),
        ('[suite]\nname = "x"\ndescription = "d"\nseeds = [-1]\n', "[suite] key 'seeds'"),
        ('[suite]\nname = "x"\ndescription = "d"\nnmae = "y"\n', "unknown key 'nmae' in [suite]"),
        ('[suite]\nname = "x"\ndescription = "d"\ndefault_budget = "gpu"\n',
         "unknown budget 'gpu'"),
        ("[base]\n", "missing table [suite]"),
        ('stray = 1\n[suite]\nname = "x"\ndescription = "d"\n',
         "unknown top-level key 'stray'"),
        ('[suite]\nname = "x"\ndescription = "d\n', "invalid TOML: "),
    ],
)
def test_malformed_suite_table(tmp_path, suite_table, fragment):
    message = error_of(write(tmp_path, suite_table))
    assert fragment in message, message


def test_unknown_budget_lists_the_known_ones(tmp_path):
    path = write(tmp_path, MINIMAL + "[budget.smoke]\n[budget.paper]\n[budget.cpu]\n")
    message = error_of(path, "gpu")
    assert message == f"{path}: unknown budget 'gpu' (known: cpu, paper, smoke)"
    assert "default_budget" in error_of(path)  # budgets but no default and none chosen
    assert load_suite(path, "cpu").budget == "cpu"


def test_typo_in_a_budget_not_chosen_is_still_caught(tmp_path):
    path = write(tmp_path, MINIMAL + "[budget.smoke]\nepochs = 1\n[budget.paper]\nepoch = 5\n")
    assert "unknown key 'epoch' in [budget.paper]" in error_of(path, "smoke")
    # a combination that fails only at the non-chosen budget names that budget
    path = write(tmp_path, MINIMAL + """
[grid]
objective = ["vae", "iwae"]
[budget.smoke]
[budget.paper]
beta = 2.0
""")
    message = error_of(path, "smoke")
    assert "[budget.paper]" in message and "'beta'" in message
    # epochs in [base] conflict with the paper budget's schedule: named when running cpu
    path = write(tmp_path, MINIMAL + '[base]\nepochs = 5\n[budget.cpu]\n'
                 '[budget.paper]\nschedule = "burda"\n')
    message = error_of(path, "cpu")
    assert message.startswith(f"{path}: [base] (at budget 'paper'): key 'epochs' = 5 conflicts")


def test_a_value_overridden_later_is_still_validated(tmp_path):
    path = write(tmp_path, MINIMAL + "[base]\nk = 0\n[grid]\nk = [1, 5]\n")
    assert "[base]: key 'k' must be >= 1" in error_of(path)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    assert "not found" in error_of(path)


def test_duplicate_run_ids_are_caught(tmp_path):
    path = write(tmp_path, MINIMAL + "[grid]\nbeta = [2, 2.0]\n")  # 2 and 2.0: the same run
    message = error_of(path)
    assert "'beta=2' seed 0" in message and "same config" in message


# --------------------------------------------------------------------------- filters
def test_filter_variants():
    variants = load_suite(resolve_suite_path("iwae_table1"), "cpu").variants
    assert len(filter_variants(variants, [])) == 12
    k5 = filter_variants(variants, ["k=5"])
    assert len(k5) == 4 and all(v.config.k == 5 for v in k5)
    iwae5 = filter_variants(variants, ["objective=iwae", "k=5"])
    assert [v.name for v in iwae5] == ["1layer,objective=iwae,k=5", "2layer,objective=iwae,k=5"]
    assert filter_variants(variants, ['objective="iwae"', " k = 5 "]) == iwae5
    assert [v.name for v in filter_variants(variants, ["name=2layer,objective=vae,k=50"])] == [
        "2layer,objective=vae,k=50"
    ]
    assert len(filter_variants(variants, ["latent=[100, 50]"])) == 6
    assert len(filter_variants(variants, ["hidden=[[200,200]]"])) == 6
    assert filter_variants(variants, ["k=7"]) == []
    bench = load_suite(resolve_suite_path("bench")).variants
    assert {v.name for v in filter_variants(bench, ["beta=0.5"])} == {"vae-beta0.5"}
    assert {v.name for v in filter_variants(bench, ["beta=2"])} == {"vae-beta2"}


@pytest.mark.parametrize("bad, fragment", [
    ("k5", "expected KEY=VALUE"),
    ("=5", "expected KEY=VALUE"),
    ("k=", "expected KEY=VALUE"),
    ("epoch=5", "unknown key 'epoch'"),
])
def test_filter_errors(bad, fragment):
    variants = load_suite(resolve_suite_path("smoke")).variants
    with pytest.raises(BenchError, match=fragment):
        filter_variants(variants, [bad])


# --------------------------------------------------------------------------- references
def test_reference_matching_normalises_lists_and_numbers():
    cfg = config_from_dict({"objective": "vae", "k": 5, "latent": [100, 50],
                            "hidden": [[200, 200], [100, 100]], "beta": 2})
    ref = Reference("test_nll", 85.0, "s", "paper", {"latent": [100, 50], "k": 5}, "")
    assert ref.matches(cfg)
    assert Reference("m", 1.0, "s", match={"beta": 2}).matches(cfg)
    assert not Reference("m", 1.0, "s", match={"k": 50}).matches(cfg)
    assert Reference("m", 1.0, "s").matches(cfg)  # an empty match applies to every run
    shipped = load_suite(resolve_suite_path("iwae_table1"), "paper").references
    assert len(set(shipped)) == 12  # hashable, and no two alike


# --------------------------------------------------------------------------- suite paths
def test_resolve_suite_path_by_name_and_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_suite_path("smoke") == SUITES_DIR / "smoke.toml"
    own = write(tmp_path, MINIMAL, "mine.toml")
    assert resolve_suite_path(str(own)) == own
    (tmp_path / "suites").mkdir()
    local = write(tmp_path / "suites", MINIMAL, "smoke.toml")
    assert resolve_suite_path("smoke").resolve() == local.resolve()  # ./suites wins
    assert resolve_suite_path("bench") == SUITES_DIR / "bench.toml"
    assert resolve_suite_path("mine.toml") == Path("mine.toml")


def test_resolve_suite_path_not_found_lists_the_names(tmp_path):
    with pytest.raises(BenchError) as info:
        resolve_suite_path("smokee")
    message = str(info.value)
    assert "smokee" in message and "\n" not in message
    for name in SHIPPED:
        assert name in message
    with pytest.raises(BenchError, match="not found"):
        resolve_suite_path(str(tmp_path / "missing.toml"))


def test_new_keys_as_lists_or_at_their_defaults(tmp_path):
    head = '[suite]\nname = "x"\ndescription = "d"\n[base]\ndataset = "digits"\n'
    with pytest.raises(BenchError, match="key 'model' must be a string"):
        load_suite(write(tmp_path, head + 'model = ["m2"]\n'))
    # explicit defaults of other families' keys are valid, and change nothing
    suite = load_suite(write(tmp_path, head + "labelled = 0\ncapacity_steps = 0\n", "y.toml"))
    assert suite.variants[0].config == config_from_dict({"dataset": "digits"})
