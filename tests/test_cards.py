"""Protocol cards (issue 13): every published value of every shipped suite comes with a card
listing the known differences from the paper's text and from the authors' code; a malformed
card is a one-line error naming the file, table and key; the report shows each card under the
rows of the paper-vs-ours table that name it, in Markdown and in HTML."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from bench import report, store
from bench.errors import BenchError
from bench.suite import SUITES_DIR, Card, _unsourced, load_suite

SHIPPED = tuple(sorted(SUITES_DIR.glob("*.toml")))
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


# --------------------------------------------------------------------------- shipped suites
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_reference_has_a_card_with_differences(path):
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    # the file itself: each [[reference]] names a card (load_suite would refuse it otherwise)
    for i, entry in enumerate(raw.get("reference", []), 1):
        assert isinstance(entry.get("card"), str), f"{path.name}: [[reference]] #{i} has no card"
    for budget in load_suite(path).budgets or (None,):
        suite = load_suite(path, budget)
        for ref in suite.references:
            card = ref.card
            assert isinstance(card, Card), (path.name, ref)
            assert card in suite.cards
            for items in (card.paper, card.code):
                assert items and all(isinstance(t, str) and t.strip() for t in items), card
        assert {c.name for c in suite.cards} == {r.card.name for r in suite.references}


def test_the_cards_of_the_reproduced_papers_say_what_they_compare():
    """A few facts each shipped card must keep (so an edit cannot silently empty them),
    among them issue 23's corrections, each read from its source."""
    table1 = load_suite(SUITES_DIR / "iwae_table1.toml", "paper")
    (card,) = {r.card for r in table1.references}
    assert len(table1.references) == 12 and card.name == "burda-table1"
    assert any("59,600" in t for t in card.code)
    assert any("beta1 = 0.9" in t for t in card.paper)
    assert "yburda/iwae" in card.source_code
    # issue 23, item 4: the paper's own text fixes the VAE's estimator and the binarisation
    assert any("(read: Sec. 2, Eq. 7)" in t for t in card.paper)
    assert any("(read: Sec. 5.1, footnote 2)" in t for t in card.paper)
    bench = load_suite(SUITES_DIR / "bench.toml", "paper")
    (card,) = {r.card for r in bench.references}
    kl = next(t for t in card.paper if t.startswith("KL estimator"))
    assert "differs from the paper's text" in kl and "(read: Sec. 5.1)" in kl
    assert not any(t.startswith("not checked") and "KL" in t for t in card.paper)
    # issue 23, item 2: Table 2 of Rezende & Mohamed is -ln p(x) by importance sampling
    # with 200 samples at flow lengths 10, 20, 40 and 80
    flows = load_suite(SUITES_DIR / "flows.toml", "paper")
    published = {(r.metric, r.match.get("posterior"), r.match.get("flow_steps"), r.value)
                 for r in flows.references}
    assert published == {("test_nll", "gaussian", None, 89.9),
                         ("test_nll", "planar", 10, 87.5), ("test_nll", "planar", 20, 86.5),
                         ("test_nll", "planar", 40, 85.7), ("test_nll", "planar", 80, 85.1)}
    assert {v.config.k_eval for v in flows.variants} == {200}
    assert {v.config.latent for v in flows.variants} == {(40,)}
    assert all(r.card.code[0].startswith("not checked: no authors' code")
               for r in flows.references)
    # issue 23, item 3: the classifier's weight prior includes its biases, which start at 0
    m2 = load_suite(SUITES_DIR / "semisupervised.toml", "paper")
    code = m2.references[0].card.code
    assert any("M1+M2" in t for t in code)
    prior = next(t for t in code if t.startswith("Weight prior"))
    assert "classifier's weights AND biases" in prior and "MLP_Categorical.py, factors" in prior
    assert any(t.startswith("Initialisation of the classifier") and "biases to zero" in t
               for t in code)
    # issue 23, item 5: Pyro fills the hidden pixels of the prior and recognition networks
    cvae = load_suite(SUITES_DIR / "cvae.toml", "paper")
    code = cvae.references[0].card.code
    assert any("test split" in t for t in code)
    assert any("Encoder.forward" in t and "baseline's prediction" in t for t in code)
    # issue 23, item 1: Le et al.'s MNIST protocol is not Burda et al.'s (no card: no number)
    kl_direction = (SUITES_DIR / "kl_direction.toml").read_text(encoding="utf-8")
    assert "Le et al. 2019 use it too" not in kl_direction
    assert "discrete-vae" in kl_direction and "Bernoulli latents" in kl_direction


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_card_line_names_its_source(path):
    """Issue 23: a card line about a paper or its code cites where it was read, or says
    "not checked". The loader refuses a line that does neither; here the same rule is held
    over the raw text of every shipped card, so a suite cannot pass by being skipped."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    for cname, card in raw.get("card", {}).items():
        for key in ("paper", "code"):
            for j, line in enumerate(card[key], 1):
                assert _unsourced(line) == "", f"{path.name} [card.{cname}] {key} #{j}: {line}"


@pytest.mark.parametrize("line", [
    "Adam: the text gives beta1 = 0.9 (read: Sec. 5.1); ours the same.",
    "Binarised as Salakhutdinov & Murray (read: Sec. 5.1, footnote 2).",
    "Heads: sigma = exp(linear) (read: iwae.py, GaussianSampler.random).",
    "Held out (read: datasets.py, binarized_mnist(n_validation=400)); ours all.",
    "Held out (read: binarized_mnist(n_validation=400) of datasets.py); ours all.",
    "Rows: see Table 2 (read: Table 2) and Fig. 4 (read: Fig. 4).",
    "not checked: the paper's learning rate.",
    "Ours 0.97 nats higher (measured: on the test set).",
])
def test_sourced_card_lines(line):
    assert _unsourced(line) == ""


@pytest.mark.parametrize("line, fragment", [
    # the realistic failure: a fact written from memory, with no place to check it
    ("The paper anneals the KL over 10,000 updates.", "names no source"),
    ("The paper anneals the KL (read: memory).", "cites (read: memory) without a place"),
    ("Adam (read: the paper).", "cites (read: the paper) without a place"),
    ("Adam (read: Sec. 5) and beta1 (read: somewhere).", "cites (read: somewhere)"),
    ("Adam (read: ).", "cites (read: ) without a place"),
    ("The paper is not checked.", "names no source"),  # not the "not checked: <what>" form
    ("not checked:", "names no source"),
    ("Ours 0.97 nats higher (measured: ).", "names no source"),
])
def test_unsourced_card_lines(line, fragment):
    assert fragment in _unsourced(line)


def test_an_unsourced_card_line_is_a_one_line_error(tmp_path):
    message = error_of(tmp_path, REF + 'card = "a"\n' + CARD.replace(
        'paper = ["the paper differs (read: Sec. 2)"]',
        'paper = ["fine (read: Table 1)", "the paper anneals the KL"]'))
    assert ("[card.a] key 'paper' entry #2 names no source: cite where it was read as "
            "(read: <section, table, footnote or file>)") in message
    assert "got 'the paper anneals the KL'" in message
    message = error_of(tmp_path, REF + 'card = "a"\n' + CARD.replace(
        "code = [\"not checked: no authors' code found\"]", 'code = ["Adam (read: the code)"]'))
    assert "[card.a] key 'code' entry #1 cites (read: the code) without a place" in message


# --------------------------------------------------------------------------- validation
SUITE = """\
[suite]
name = "x"
description = "cards"

[base]
dataset = "digits"

"""
REF = """\
[[reference]]
metric = "test_nll"
value = 25.0
source = "s"
"""
CARD = """\
[card.a]
paper = ["the paper differs (read: Sec. 2)"]
code = ["not checked: no authors' code found"]
"""


def error_of(tmp_path: Path, body: str) -> str:
    path = tmp_path / "x.toml"
    path.write_text(SUITE + textwrap.dedent(body))
    with pytest.raises(BenchError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def test_a_valid_card_is_parsed_and_reached_from_its_reference(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(SUITE + REF + 'card = "a"\n' + CARD.replace(
        "[card.a]\n", '[card.a]\nsource_code = "github o/r: f.py"\n'))
    suite = load_suite(path)
    (ref,) = suite.references
    assert ref.card == Card("a", ("the paper differs (read: Sec. 2)",),
                            ("not checked: no authors' code found",),
                            "github o/r: f.py")
    assert suite.cards == (ref.card,)


def test_a_suite_without_references_needs_no_card(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(SUITE)
    assert load_suite(path).cards == ()


def test_reference_without_card(tmp_path):
    message = error_of(tmp_path, REF + CARD)
    assert "[[reference]] #1 (test_nll) is missing key 'card'" in message
    assert "protocol card" in message


def test_reference_naming_an_unknown_card(tmp_path):
    message = error_of(tmp_path, REF + 'card = "b"\n' + CARD)
    assert "[[reference]] #1 key 'card': unknown card 'b' (known: a)" in message
    message = error_of(tmp_path, REF + 'card = "b"\n')
    assert "unknown card 'b'" in message and "no [card.<name>] table" in message


def test_reference_card_must_be_a_name(tmp_path):
    message = error_of(tmp_path, REF + "card = 3\n" + CARD)
    assert "[[reference]] #1 key 'card' must be a non-empty string" in message


@pytest.mark.parametrize("key", ["paper", "code"])
def test_card_with_an_empty_list(tmp_path, key):
    message = error_of(tmp_path, REF + 'card = "a"\n' + CARD.replace(
        re.search(rf"{key} = .*\n", CARD).group(0), f"{key} = []\n"))
    assert f"[card.a] key '{key}' is empty" in message and "not checked" in message


@pytest.mark.parametrize("key", ["paper", "code"])
def test_card_without_a_list(tmp_path, key):
    body = re.sub(rf"{key} = .*\n", "", CARD)
    message = error_of(tmp_path, REF + 'card = "a"\n' + body)
    assert f"[card.a] is missing key '{key}'" in message


@pytest.mark.parametrize("value, fragment", [
    ('["not checked: fine", 3]',
     "[card.a] key 'paper' entry #2 must be a non-empty string, got 3"),
    ('["  "]', "[card.a] key 'paper' entry #1 must be a non-empty string"),
    ('"one string"', "[card.a] key 'paper' must be a list of strings"),
    ('"""two\nlines"""', "[card.a] key 'paper' must be a list of strings, got two lines"),
])
def test_card_with_non_string_entries(tmp_path, value, fragment):
    body = CARD.replace('paper = ["the paper differs (read: Sec. 2)"]', f"paper = {value}")
    message = error_of(tmp_path, REF + 'card = "a"\n' + body)
    assert fragment in message


def test_card_no_reference_uses(tmp_path):
    unused = CARD.replace("[card.a]", "[card.b]")
    message = error_of(tmp_path, REF + 'card = "a"\n' + CARD + unused)
    assert "[card.b] is used by no [[reference]]" in message
    message = error_of(tmp_path, CARD)  # cards without any reference
    assert "[card.a] is used by no [[reference]]" in message


@pytest.mark.parametrize("body, fragment", [
    (CARD + 'url = "u"\n', "unknown key 'url' in [card.a] (known: paper, code, source_code)"),
    (CARD + "source_code = 1\n", "[card.a] key 'source_code' must be a non-empty string"),
    (CARD.replace("[card.a]", '[card."A b"]'), "[card.A b]: card names must match [a-z0-9_-]+"),
    ('[card]\na = 1\n', "[card] key 'a' must be a table [card.a]"),
])
def test_malformed_card_tables(tmp_path, body, fragment):
    message = error_of(tmp_path, REF + 'card = "a"\n' + body)
    assert fragment in message


# --------------------------------------------------------------------------- the report
REPORT_SUITE = """\
[suite]
name = "cardy"
description = "two references sharing a card, one with its own"
default_budget = "smoke"

[base]
dataset = "digits"
hidden = [[8]]
latent = [2]
epochs = 1
k_eval = 5

[[variant]]
name = "vae"
objective = "vae"

[[variant]]
name = "iwae"
objective = "iwae"
k = 5

[budget.smoke]
train_size = 100

[budget.paper]
epochs = 2

[[reference]]
metric = "test_nll"
value = 30.0
source = "Paper A, Table 1"
match = { objective = "vae" }
card = "shared"

[[reference]]
metric = "test_nll"
value = 29.0
source = "Paper A, Table 1"
match = { objective = "iwae" }
card = "shared"

[[reference]]
metric = "test_nll"
value = 28.5
source = "Paper B"
match = { objective = "iwae" }
card = "own"

[[reference]]
metric = "test_nll"
value = 30.5
source = "Paper A, Table 2"
match = { objective = "vae" }
card = "shared"

[card.shared]
paper = ["Paper A anneals the KL (read: Sec. 3); we do not.", "not checked: Paper A's seeds."]
code = ["Paper A's code holds out 400 images (read: train.py); we train on all."]
source_code = "github someone/paper-a: train.py"

[card.own]
paper = ["Paper B's text gives no learning rate (read: Sec. 4)."]
code = ["not checked: no authors' code published for Paper B; compared with the paper text only."]
"""


@pytest.fixture(scope="module")
def card_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardy")
    (root / "suites").mkdir()
    (root / "suites" / "cardy.toml").write_text(REPORT_SUITE)
    results = root / "results"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the report finds ./suites/cardy.toml
        suite = load_suite(Path("suites/cardy.toml"), "smoke")
        for v in suite.variants:
            row = store.run_row(suite="cardy", variant=v.name, config=v.config,
                                status="finished", metrics={"test_ll": -31.0},
                                provenance={}, budget="smoke")
            store.write_run(results, row)
        page = report.build_report(results, root / "report").suites["cardy"]
    html = page.read_text(encoding="utf-8")
    return page.with_suffix(".md").read_text(encoding="utf-8"), html


def _paper_vs_ours(md: str) -> str:
    start = md.index("## Paper vs ours")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


def test_report_shows_each_card_under_the_rows_that_name_it(card_report):
    md, _ = card_report
    part = _paper_vs_ours(md)
    tables = [block for block in part.split("\n\n") if block.startswith("| metric")]
    assert len(tables) == 3  # rows of card shared, of card own, of card shared again
    for table, card in zip(tables, ["shared", "own", "shared"], strict=True):
        header, _rule, *rows = table.splitlines()
        assert header.rstrip(" |").endswith("protocol card")
        assert rows and all(row.rstrip(" |").endswith(card) for row in rows), table
    # each card's text follows its rows: shared after the first table, own after the second
    shared = part.index("Protocol card shared (named by the 2 row(s) above)")
    own = part.index("Protocol card own (named by the 1 row(s) above)")
    assert part.index(tables[0]) < shared < part.index(tables[1]) < own < part.index(tables[2])
    assert "the paper budget and the published one" in part
    assert "- **vs paper:** Paper A anneals the KL (read: Sec. 3); we do not." in part
    assert "- **vs paper:** not checked: Paper A's seeds." in part
    assert ("- **vs authors' code:** Paper A's code holds out 400 images (read: train.py); we "
            "train on all.") in part
    assert "- **authors' code read:** github someone/paper-a: train.py" in part
    assert "- **vs authors' code:** not checked: no authors' code published for Paper B" in part
    assert part.count("Paper A anneals the KL") == 1  # the repeat refers back to it
    assert "*Protocol card shared: as listed above.*" in part[part.index(tables[2]):]


def test_report_html_shows_the_cards(card_report):
    _, html = card_report
    assert "<th>protocol card</th>" in html
    assert "<p>Protocol card shared (named by the 2 row(s) above)" in html
    assert ("<li><strong>vs paper:</strong> Paper A anneals the KL (read: Sec. 3); we do not.</li>"
            in html)
    assert ("<li><strong>vs authors&#x27; code:</strong> not checked: no authors&#x27; code "
            "published for Paper B") in html
