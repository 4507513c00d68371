"""A suite: a TOML file that expands into the runs of one experiment, validated before any runs.

File format (every table but [suite] is optional)::

    [suite]
    name = "bench"               # required; [a-z0-9_-]+ (used in result paths)
    description = "..."          # required
    default_budget = "cpu"       # optional; the budget used when none is passed
    seeds = [0, 1]               # optional, default [0]; distinct integers >= 0

    [base]                       # defaults for every run: any RunConfig field but `seed`
    dataset = "mnist"

    [grid]                       # axes; cartesian product in the order written
    objective = ["vae", "iwae"]  # each axis a non-empty list of values
    k = [1, 5, 50]

    [[variant]]                  # explicitly named variants: a name + RunConfig overrides
    name = "2layer"              # [A-Za-z0-9][A-Za-z0-9_.+-]*, unique in the suite
    hidden = [[200, 200], [100, 100]]
    latent = [100, 50]

    [budget.smoke]               # overrides for `--budget smoke`: RunConfig fields + `seeds`
    epochs = 1                   # budget names: [a-z0-9_-]+
    seeds = [0]

    [[reference]]                # a published value, shown beside ours in reports
    metric = "test_nll"          # required: a metric name (free string)
    value = 86.76                # required: a number
    source = "Burda et al. 2015, Table 1"   # required
    budget = "paper"             # optional (default "paper"): where the comparison is a
                                 # reproduction; must name a budget if the suite has any
    match = { objective = "vae", k = 1 }    # RunConfig values a run must have to apply
    note = "..."                 # optional
    card = "iwae-paper"          # required: the [card.<name>] of this comparison

    [card.iwae-paper]            # a protocol card: the known differences between our protocol
                                 # at the reference's budget and the published one; a name
                                 # ([a-z0-9_-]+) shared by any number of [[reference]]s
    paper = ["...", "..."]       # required, non-empty: differences from the paper's text, one
                                 # per string ("not checked: <what>" where unknown)
    code = ["..."]               # required, non-empty: differences from the authors' code (or
                                 # one entry saying that no code was published)
                                 # Every entry says where its facts come from: "(read: Sec. 5,
                                 # footnote 2)", "(read: examples/cvae/cvae.py, Encoder)" (a
                                 # section, table, figure, footnote, equation, appendix or a
                                 # file name.ext), "(measured: <how>)" for a number of ours, or
                                 # "not checked: <what>"; a line with none of them is refused.
    source_code = "github owner/repo: files read"   # optional: what `code` was checked against

Expansion: runs = (named variants, or one unnamed variant when there are none) x grid points
x seeds, in that order (the last grid axis varies fastest, seeds fastest of all).

Precedence, later wins: [base] < [budget.<chosen>] < the grid point < the named variant's
overrides < the seed (from `seeds` of the budget if it has one, else of [suite]). A budget
therefore never overrides what a variant sets explicitly. `seed` may not be set anywhere but
through `seeds`, so a seed can never be silently overridden. The merged values go through
`config_from_dict`, so defaults, coercion and validation are exactly those of a single run.

Validation happens at load time, for EVERY budget (not only the chosen one) and every grid
value, so a typo in `[budget.paper]` fails a `--budget smoke` run too. Each error is a
`BenchError` of one line that starts with the file path and names the table and key, e.g.
`suites/x.toml: [grid] axis 'k' = 0: key 'k' must be >= 1, got 0`. Two entries of the
expansion resolving to the same run_id (a grid that collapses) are an error as well, as is a
[[reference]] that matches no run at its budget. Protocol cards are checked the same way: a
[[reference]] without `card` or naming an unknown card, a card with an empty or non-string
`paper` or `code` list, a card line that names no source (no "(read: <place>)", no
"(measured: <how>)", no "not checked: <what>"; a "(read: ...)" must name a section, table,
figure, footnote, equation, appendix or file), and a card no [[reference]] uses are each a
one-line error; a suite
without references needs no card. Reports show each reference's card under its row, so no
published number appears without its list of known differences.

A variant's `name` is the named variant's name and the grid point as `key=value`, joined with
",", e.g. `2layer,objective=iwae,k=5`; it is unique within the suite without the seed. With
neither a named variant nor a grid it is the config's `label`.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench import plugins
from bench.components import OBJECTIVES
from bench.config import (
    PARAMS_PREFIX,
    RunConfig,
    config_from_dict,
    declared_params,
    param_owners,
)
from bench.errors import BenchError
from bench.families.registry import FAMILIES, Family

CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))
#: keys a suite may set in [base], [grid], [[variant]], [budget.*] (the seed comes from
#: `seeds`); besides these, "params.<name>" for the params a component declares
SETTABLE_KEYS: tuple[str, ...] = tuple(k for k in CONFIG_KEYS if k != "seed")
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"

_TOP_TABLES = ("suite", "base", "grid", "variant", "budget", "reference", "card")
_SUITE_KEYS = ("name", "description", "default_budget", "seeds", "plugins", "extends")
_REFERENCE_KEYS = ("metric", "value", "source", "budget", "match", "note", "card")
_CARD_KEYS = ("paper", "code", "source_code")
_SLUG = re.compile(r"[a-z0-9_-]+")
# What makes a card line sourced (issue 23): a "(read: <where>)" naming a place in a paper or
# its code, a "(measured: <how>)" for a number we measured, or a "not checked: <what>".
_NOT_CHECKED = re.compile(r"\bnot checked: *\w", re.IGNORECASE)
# a place one can open: a section, table, figure, footnote, equation, appendix, algorithm,
# page or abstract of a paper, or a file (name.ext) of its code or documentation
_PLACE = re.compile(
    r"\b(Sec\.|Section|Table|Fig\.|Figure|footnote|Eq\.|Eqn\.|Equation|Appendix|"
    r"Algorithm|abstract|p\. ?\d)|\w\.(py|md|ipynb|rst|txt|toml|cfg|gin|json|yaml|lua)\b",
    re.IGNORECASE)
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_MARK = "\x00where\x00"  # placeholder `where`, replaced once the culprit table is known


# --------------------------------------------------------------------------- public types
class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable mapping (values normalised: lists become tuples)."""

    __slots__ = ("_items",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._items = tuple((k, _hashable(v)) for k, v in (values or {}).items())

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == {
            k: _hashable(v) for k, v in other.items()
        }

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._items)!r})"


@dataclass(frozen=True)
class Card:
    """A protocol card: the known differences between our protocol at a reference's budget and
    the published one, (a) from the paper's text and (b) from the authors' code, one per
    string. Where a difference is unknown the card says "not checked: ...", never nothing."""

    name: str
    paper: tuple[str, ...]
    code: tuple[str, ...]
    source_code: str = ""  # what `code` was checked against (repository, files read)


@dataclass(frozen=True)
class Reference:
    """A published value of one metric for the runs whose config matches `match`, with the
    protocol card of the comparison (always set for references loaded from a suite file)."""

    metric: str
    value: float
    source: str
    budget: str = "paper"
    match: Mapping[str, Any] = FrozenMap()
    note: str = ""
    card: Card | None = None

    def matches(self, config: RunConfig) -> bool:
        values = config.flat_dict()
        return all(
            key in values and _same(values[key], want) for key, want in self.match.items()
        )


@dataclass(frozen=True)
class Variant:
    """One run of a suite: a readable name (without the seed) and its resolved config."""

    name: str
    config: RunConfig

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def seed(self) -> int:
        return self.config.seed


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    budget: str | None  # the budget these variants were resolved at (None: suite has none)
    budgets: tuple[str, ...]  # in the order written
    seeds: tuple[int, ...]  # the seeds in effect at `budget`
    variants: tuple[Variant, ...]  # every (variant, seed) run, in expansion order
    references: tuple[Reference, ...]
    grid_axes: tuple[str, ...]  # keys set by named variants (first) or the grid
    cards: tuple[Card, ...] = ()  # the [card.*] tables, in the order written


# --------------------------------------------------------------------------- loading
def load_suite(path: str | Path, budget: str | None = None) -> Suite:
    """Parse, validate (every budget) and expand a suite file at `budget` (or its default)."""
    path = Path(path)
    where = str(path)
    raw = _extended(_read_toml(path), path, where, seen=(path.resolve(),))
    spec = _parse(raw, where)

    if budget is None:
        budget = spec.default_budget
        if budget is None and spec.budgets:
            raise BenchError(
                f"{where}: no budget chosen and [suite] has no 'default_budget' "
                f"(budgets: {', '.join(sorted(spec.budgets))})"
            )
    elif budget not in spec.budgets:
        known = ", ".join(sorted(spec.budgets)) or "none"
        raise BenchError(f"{where}: unknown budget '{budget}' (known: {known})")

    # Expand the chosen budget first (its errors are the ones the user asked about), then
    # every other one, so that a typo anywhere in the file is caught now.
    order = [budget] + [b for b in spec.budgets if b != budget]
    expansions = {b: _expand(spec, b, where, chosen=(b == budget)) for b in order}

    for i, ref in enumerate(spec.references, 1):
        at = ref.budget if ref.budget in spec.budgets else budget
        if not any(ref.matches(v.config) for v in expansions[at]):
            raise BenchError(
                f"{where}: [[reference]] #{i} ({ref.metric}): match "
                f"{_fmt_match(ref.match)} matches no run at budget '{at}'"
            )

    seeds = spec.budget_seeds.get(budget) if budget is not None else None
    return Suite(
        name=spec.name,
        description=spec.description,
        path=path,
        budget=budget,
        budgets=tuple(spec.budgets),
        seeds=tuple(seeds if seeds is not None else spec.seeds),
        variants=tuple(expansions[budget]),
        references=tuple(spec.references),
        grid_axes=spec.axes_keys(),
        cards=tuple(spec.cards.values()),
    )


def _extended(raw: dict[str, Any], path: Path, where: str, seen: tuple[Path, ...]
              ) -> dict[str, Any]:
    """The suite file's tables on top of those of the suite it `extends` (a name or a .toml
    path relative to it), its own plugins and its parent's loaded. Later wins key by key in
    [suite], [base], each [budget.*] and [card.*]; a [grid] axis replaces the parent's axis;
    [[variant]]s replace the parent's if the file has any; [[reference]]s add to them."""
    suite = raw.get("suite") if isinstance(raw.get("suite"), dict) else {}
    _load_plugins(raw, path, where)
    parent_name = suite.get("extends")
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str) or not parent_name.strip():
        raise BenchError(f"{where}: [suite] key 'extends' must be a suite name or a .toml path, "
                         f"got {_fmt(parent_name)}")
    if "name" not in suite:
        raise BenchError(f"{where}: [suite] extends '{parent_name}' but has no 'name' of its "
                         "own (its runs are stored under it)")
    relative = path.parent / parent_name
    parent_path = relative if parent_name.endswith(".toml") and relative.is_file() else None
    try:
        parent_path = parent_path or resolve_suite_path(parent_name)
    except BenchError as err:
        raise BenchError(f"{where}: [suite] key 'extends': {err}") from None
    if parent_path.resolve() in seen:
        raise BenchError(f"{where}: [suite] key 'extends': {parent_name} extends this suite "
                         "again (a cycle)")
    parent = _extended(_read_toml(parent_path), parent_path, str(parent_path),
                       seen + (parent_path.resolve(),))
    merged = dict(parent)

    def flat(table: Any, name: str) -> Any:  # params one key each: overridden one by one
        return _flatten_params(table, where, name) if isinstance(table, dict) else table

    def over(ours: Any, theirs: Any) -> Any:
        return {**ours, **theirs} if isinstance(ours, dict) and isinstance(theirs, dict) \
            else theirs

    for key, value in raw.items():
        if key in ("suite", "base", "grid") and isinstance(value, dict):
            merged[key] = over(flat(merged.get(key, {}), f"[{key}]"), flat(value, f"[{key}]"))
        elif key == "budget" and isinstance(value, dict):  # per budget, per key
            tables = dict(merged.get(key, {}))
            for name, table in value.items():
                where_ = f"[budget.{name}]"
                tables[name] = over(flat(tables.get(name, {}), where_), flat(table, where_))
            merged[key] = tables
        elif key == "card" and isinstance(value, dict):  # per card, per key
            merged[key] = {**merged.get(key, {}), **{
                name: over(merged.get(key, {}).get(name, {}), table)
                for name, table in value.items()}}
        elif key == "reference" and isinstance(value, list):
            merged["reference"] = [*merged.get("reference", []), *value]
        else:  # [[variant]] (replaces the parent's), anything unknown (refused later)
            merged[key] = value
    merged["suite"] = {k: v for k, v in merged["suite"].items() if k != "extends"}
    merged["suite"].pop("plugins", None)  # loaded above, each relative to its own file
    return merged


def _load_plugins(raw: Mapping[str, Any], path: Path, where: str) -> None:
    """The plugins `[suite] plugins = [...]` lists (module names, or .py paths relative to
    the suite file), loaded before anything else is validated: they define what it names."""
    suite = raw.get("suite")
    specs = suite.get("plugins", []) if isinstance(suite, dict) else []
    if not isinstance(specs, list) or not all(isinstance(x, str) and x.strip() for x in specs):
        raise BenchError(f"{where}: [suite] key 'plugins' must be a list of module names or "
                         f".py paths, got {_fmt(specs)}")
    try:
        plugins.load(specs, entry_points=False, base=path.parent)
    except BenchError as err:
        raise BenchError(f"{where}: [suite] key 'plugins': {err}") from None


def _flatten_params(values: Mapping[str, Any], where: str, table: str) -> dict[str, Any]:
    """A table's `params = { alpha = 0.5 }` (or TOML's dotted `params.alpha = 0.5`, the
    same) as one key per param, "params.alpha", so layers, grid axes and matches merge and
    name them one by one."""
    if "params" not in values:
        return dict(values)
    nested = values["params"]
    if not isinstance(nested, dict):
        raise BenchError(f"{where}: {table} key 'params' must be a table of the params its "
                         f"objective, posterior or model declares, got {_fmt(nested)}")
    out = {k: v for k, v in values.items() if k != "params"}
    out.update({f"{PARAMS_PREFIX}{k}": v for k, v in nested.items()})
    return out


def filter_variants(variants: Sequence[Variant], filters: Sequence[str]) -> list[Variant]:
    """The variants for which every "KEY=VALUE" filter holds.

    KEY is a RunConfig field or `name`; VALUE is read as a TOML value where it parses as one
    (`k=5` an integer, `beta=0.5` a float, `hidden=[[200,200]]` a list), else as a string
    (`objective=iwae`). `name` compares the raw text.
    """
    tests = parse_filters(filters)
    if not tests:  # every variant, without flattening each config (10^5 in a sweep)
        return list(variants)
    return [v for v in variants if filter_matches({**v.config.flat_dict(), "name": v.name}, tests)]


def parse_filters(filters: Sequence[str], text_keys: Sequence[str] = ("name",)
                  ) -> list[tuple[str, Any, bool]]:
    """(key, wanted value, compared as text) of each "KEY=VALUE" filter, as `filter_variants`
    reads them; KEY a RunConfig field, params.<name> of a declared param, or one of
    `text_keys` (whose VALUE is the raw text). A malformed filter or unknown key is one line."""
    tests: list[tuple[str, Any, bool]] = []
    for text in filters:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise BenchError(f"filter {text!r}: expected KEY=VALUE, e.g. k=5 or objective=iwae")
        known_param = key.startswith(PARAMS_PREFIX) and param_owners(key[len(PARAMS_PREFIX):])
        is_text = key in text_keys
        if not is_text and (key not in CONFIG_KEYS or key == "params") and not known_param:
            raise BenchError(
                f"filter {text!r}: unknown key '{key}' (known: {', '.join(text_keys)}, "
                f"{', '.join(k for k in CONFIG_KEYS if k != 'params')}, or {PARAMS_PREFIX}<name> "
                "of a param some component declares)"
            )
        tests.append((key, value if is_text else parse_value(value), is_text))
    return tests


def filter_matches(values: Mapping[str, Any], tests: Sequence[tuple[str, Any, bool]]) -> bool:
    """Whether every parsed filter holds for `values` (flat config keys and the text keys):
    text keys compare the raw text, the others as TOML values (2 == 2.0, lists as tuples)."""
    return all(key in values and (str(values[key]) == want if is_text
                                  else _same(values[key], want))
               for key, want, is_text in tests)


def resolve_suite_path(name_or_path: str) -> Path:
    """A path to a .toml file, or a bare suite name looked up in ./suites, next to bench, then
    in the suite folders of the loaded plugins."""
    text = str(name_or_path)
    candidate = Path(text)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        if candidate.is_file():
            return candidate
        raise BenchError(f"suite file not found: {text}{_available()}")
    for folder in _suite_folders():
        found = folder / f"{text}.toml"
        if found.is_file():
            return found
    raise BenchError(f"unknown suite '{text}'{_available()}")


def _suite_folders() -> tuple[Path, ...]:
    return (Path("suites"), SUITES_DIR, *plugins.suite_folders())


def available_suites() -> list[str]:
    """Suite names found in ./suites, in the suites/ folder shipped next to bench and in the
    loaded plugins' suite folders."""
    names: set[str] = set()
    for folder in _suite_folders():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml"))
    return sorted(names)


# --------------------------------------------------------------------------- internals
def _available() -> str:
    names = available_suites()
    return f" (available: {', '.join(names)})" if names else " (no suites found)"


def _toml() -> Any:
    """tomllib (Python >= 3.11), else the tomli backport if installed."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10 only
        import tomli

        return tomli
    except ImportError:  # pragma: no cover
        raise BenchError("reading suites on Python 3.10 needs tomli: pip install tomli") from None


def _read_toml(path: Path) -> dict[str, Any]:
    tomllib = _toml()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{path}: suite file not found{_available()}") from None
    except OSError as err:
        raise BenchError(f"{path}: cannot read suite file: {err.strerror or err}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BenchError(f"{path}: invalid TOML: not UTF-8 ({err.reason})") from None
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"{path}: invalid TOML: {_one_line(str(err))}") from None


@dataclass
class _NamedVariant:
    name: str  # "" for the single unnamed variant
    values: dict[str, Any]


@dataclass
class _Spec:
    name: str
    description: str
    default_budget: str | None
    seeds: list[int]
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: list[_NamedVariant]
    budgets: dict[str, dict[str, Any]]  # overrides without `seeds`
    budget_seeds: dict[str, list[int]]
    references: list[Reference]
    cards: dict[str, Card]

    def axes_keys(self) -> tuple[str, ...]:
        keys: dict[str, None] = {}
        for variant in self.variants:
            keys.update(dict.fromkeys(variant.values))
        keys.update(dict.fromkeys(self.grid))
        return tuple(keys)


def _parse(raw: dict[str, Any], where: str) -> _Spec:
    for key, value in raw.items():
        if key not in _TOP_TABLES:
            if isinstance(value, (dict, list)):
                raise BenchError(
                    f"{where}: unknown table [{key}] (known: {', '.join(_TOP_TABLES)})"
                )
            raise BenchError(
                f"{where}: unknown top-level key '{key}' (keys belong in a table such as [suite])"
            )

    # [suite]
    suite = _table(raw, "suite", where, required=True)
    _check_keys(suite, _SUITE_KEYS, where, "[suite]")
    name = _string(suite, "name", where, "[suite]", required=True)
    if not _SLUG.fullmatch(name):
        raise BenchError(f"{where}: [suite] key 'name' must match [a-z0-9_-]+, got {name!r}")
    description = _string(suite, "description", where, "[suite]", required=True)
    default_budget = _string(suite, "default_budget", where, "[suite]")
    seeds = _seeds(suite.get("seeds", [0]), where, "[suite]")

    # [base]
    base = _flatten_params(_table(raw, "base", where), where, "[base]")
    _check_config_keys(base, where, "[base]")
    _check_values(base, where, "[base]")

    # [grid]
    grid_raw = _flatten_params(_table(raw, "grid", where), where, "[grid]")
    _check_config_keys(grid_raw, where, "[grid]")
    grid: dict[str, list[Any]] = {}
    for axis, values in grid_raw.items():
        if not isinstance(values, list):
            raise BenchError(
                f"{where}: [grid] axis '{axis}' must be a list of values, got {values!r}"
            )
        if not values:
            raise BenchError(f"{where}: [grid] axis '{axis}' has no values")
        for value in values:
            _check_value(axis, value, where, f"[grid] axis '{axis}' = {_fmt(value)}")
        grid[axis] = values

    # [[variant]]
    variants: list[_NamedVariant] = []
    for i, entry in enumerate(_array(raw, "variant", where), 1):
        if "name" not in entry:
            raise BenchError(f"{where}: [[variant]] #{i} has no 'name'")
        vname = entry["name"]
        if not isinstance(vname, str) or not _VARIANT_NAME.fullmatch(vname):
            raise BenchError(
                f"{where}: [[variant]] #{i} key 'name' must match [A-Za-z0-9][A-Za-z0-9_.+-]*, "
                f"got {vname!r}"
            )
        if any(v.name == vname for v in variants):
            raise BenchError(f"{where}: [[variant]] #{i}: duplicate name '{vname}'")
        table = f"[[variant]] '{vname}'"
        values = _flatten_params({k: v for k, v in entry.items() if k != "name"}, where, table)
        _check_config_keys(values, where, table)
        _check_values(values, where, table)
        variants.append(_NamedVariant(vname, values))
    if not variants:
        variants.append(_NamedVariant("", {}))

    # [budget.*]
    budgets: dict[str, dict[str, Any]] = {}
    budget_seeds: dict[str, list[int]] = {}
    for bname, entry in _table(raw, "budget", where).items():
        table = f"[budget.{bname}]"
        if not isinstance(entry, dict):
            raise BenchError(
                f"{where}: [budget] key '{bname}' must be a table {table} of overrides"
            )
        if not _SLUG.fullmatch(bname):
            raise BenchError(f"{where}: {table}: budget names must match [a-z0-9_-]+")
        values = _flatten_params({k: v for k, v in entry.items() if k != "seeds"}, where, table)
        _check_config_keys(values, where, table, extra=("seeds",))
        _check_values(values, where, table)
        if "seeds" in entry:
            budget_seeds[bname] = _seeds(entry["seeds"], where, table)
        budgets[bname] = values
    if default_budget is not None and default_budget not in budgets:
        known = ", ".join(sorted(budgets)) or "none"
        raise BenchError(
            f"{where}: [suite] key 'default_budget': unknown budget '{default_budget}' "
            f"(known: {known})"
        )

    # [card.*], then [[reference]] (each naming a card), then cards nobody uses
    cards = {cname: _card(cname, entry, where)
             for cname, entry in _table(raw, "card", where).items()}
    references = [
        _reference(entry, i, where, budgets, cards)
        for i, entry in enumerate(_array(raw, "reference", where), 1)
    ]
    used = {ref.card.name for ref in references if ref.card is not None}
    for cname in cards:
        if cname not in used:
            raise BenchError(
                f"{where}: [card.{cname}] is used by no [[reference]] (name it with "
                f"card = \"{cname}\" in a [[reference]], or remove the card)"
            )
    return _Spec(name, description, default_budget, seeds, base, grid, variants, budgets,
                 budget_seeds, references, cards)


def _card(cname: str, entry: Any, where: str) -> Card:
    """One [card.<name>] table: non-empty lists of strings `paper` and `code`."""
    table = f"[card.{cname}]"
    if not isinstance(entry, dict):
        raise BenchError(
            f"{where}: [card] key '{cname}' must be a table {table} with keys 'paper' and "
            f"'code', got {_one_line(_fmt(entry))}"
        )
    if not _SLUG.fullmatch(cname):
        raise BenchError(f"{where}: {table}: card names must match [a-z0-9_-]+")
    _check_keys(entry, _CARD_KEYS, where, table)
    lists = {}
    for key, what in (("paper", "the paper's text"), ("code", "the authors' code")):
        if key not in entry:
            raise BenchError(
                f"{where}: {table} is missing key '{key}' (the known differences from {what}; "
                f"write \"not checked: ...\" where unknown)"
            )
        items = entry[key]
        if not isinstance(items, list):
            raise BenchError(
                f"{where}: {table} key '{key}' must be a list of strings, got "
                f"{_one_line(_fmt(items))}"
            )
        if not items:
            raise BenchError(
                f"{where}: {table} key '{key}' is empty: list the known differences from "
                f"{what}, or write \"not checked: <what>\""
            )
        for j, item in enumerate(items, 1):
            if not isinstance(item, str) or not item.strip():
                raise BenchError(
                    f"{where}: {table} key '{key}' entry #{j} must be a non-empty string, "
                    f"got {_one_line(repr(item))}"
                )
            unsourced = _unsourced(item)
            if unsourced:
                raise BenchError(f"{where}: {table} key '{key}' entry #{j} {unsourced}")
        lists[key] = tuple(" ".join(item.split()) for item in items)
    source_code = _string(entry, "source_code", where, table) or ""
    return Card(cname, lists["paper"], lists["code"], source_code)


def _unsourced(line: str) -> str:
    """Why a card line does not say where its facts were read ("" when it does): every line
    must cite "(read: <section, table, footnote, ... or file>)", report "(measured: <how>)" or
    say "not checked: <what>" (issue 23: memory and silence are not sources)."""
    places = _cited(line, "read")
    vague = [p for p in places if not _PLACE.search(p)]
    if vague:
        return (f"cites (read: {vague[0]}) without a place: name the section, table, figure, "
                f"footnote, equation or appendix, or the file (name.ext) it was read in")
    if places or any(_cited(line, "measured")) or _NOT_CHECKED.search(line):
        return ""
    return ("names no source: cite where it was read as (read: <section, table, footnote or "
            "file>), a number of ours as (measured: <how>), or write \"not checked: <what>\"; "
            f"got {_one_line(line)[:80]!r}")


def _cited(line: str, tag: str) -> list[str]:
    """The texts of every "(<tag>: ...)" in `line`, parentheses inside them balanced (a
    citation may name a call: "(read: datasets.py, binarized_mnist(n_validation=400))"); an
    unclosed one runs to the end of the line."""
    texts, start = [], line.find(f"({tag}:")
    while start >= 0:
        depth, end = 0, len(line)
        for j in range(start, len(line)):
            depth += {"(": 1, ")": -1}.get(line[j], 0)
            if depth == 0:
                end = j
                break
        texts.append(line[start + len(tag) + 2:end].strip())
        start = line.find(f"({tag}:", end)
    return texts


def _reference(
    entry: dict[str, Any], i: int, where: str, budgets: Mapping[str, Any],
    cards: Mapping[str, Card],
) -> Reference:
    table = f"[[reference]] #{i}"
    _check_keys(entry, _REFERENCE_KEYS, where, table)
    metric = _string(entry, "metric", where, table, required=True)
    source = _string(entry, "source", where, table, required=True)
    if "value" not in entry:
        raise BenchError(f"{where}: {table} is missing key 'value'")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BenchError(f"{where}: {table} key 'value' must be a finite number, got {value!r}")
    budget = _string(entry, "budget", where, table) or "paper"
    if budgets and budget not in budgets:
        raise BenchError(
            f"{where}: {table} key 'budget': unknown budget '{budget}' "
            f"(known: {', '.join(sorted(budgets))})"
        )
    match = entry.get("match", {})
    if not isinstance(match, dict):
        raise BenchError(f"{where}: {table} key 'match' must be a table, got {match!r}")
    match = _flatten_params(match, where, f"{table} match")
    for key in match:
        if key not in CONFIG_KEYS and not key.startswith(PARAMS_PREFIX):
            raise BenchError(
                f"{where}: unknown key '{key}' in {table} match "
                f"(known: {', '.join(CONFIG_KEYS)})"
            )
    _check_values({k: v for k, v in match.items() if k != "seed"}, where, f"{table} match")
    note = _string(entry, "note", where, table) or ""
    if "card" not in entry:
        raise BenchError(
            f"{where}: {table} ({metric}) is missing key 'card': every published value needs a "
            f"protocol card, a [card.<name>] table listing the known differences from the "
            f"paper and the authors' code"
        )
    cname = _string(entry, "card", where, table)
    if cname not in cards:
        known = ", ".join(cards) if cards else "none: the suite has no [card.<name>] table"
        raise BenchError(f"{where}: {table} key 'card': unknown card '{cname}' (known: {known})")
    return Reference(metric, float(value), source, budget, FrozenMap(match), note, cards[cname])


def _expand(spec: _Spec, budget: str | None, where: str, chosen: bool) -> list[Variant]:
    """Every run at `budget`, validated, in expansion order; duplicate run_ids are an error."""
    overrides = spec.budgets.get(budget, {}) if budget is not None else {}
    seeds = spec.budget_seeds.get(budget, spec.seeds) if budget is not None else spec.seeds
    axes = list(spec.grid)
    combos = itertools.product(*spec.grid.values())
    points = [dict(zip(axes, combo, strict=True)) for combo in combos]
    context = "" if chosen or budget is None else f" (at budget '{budget}')"

    out: list[Variant] = []
    seen: dict[str, str] = {}
    for named in spec.variants:
        for point in points:
            layers = [
                ("[base]", spec.base),
                (f"[budget.{budget}]", overrides),
                ("[grid]", point),
                (f"[[variant]] '{named.name}'", named.values),
            ]
            label = ",".join(
                [named.name] * bool(named.name) + [f"{k}={_fmt(v)}" for k, v in point.items()]
            )
            first = None  # resolved and validated once; the other seeds are copies of it
            for seed in seeds:
                if first is None or not isinstance(seed, int) or isinstance(seed, bool):
                    config = first = _resolve(layers, seed, where, context)
                else:
                    config = first.with_seed(seed)
                name = label or config.label
                run_id = config.run_id
                if run_id in seen:
                    raise BenchError(
                        f"{where}: [grid]/[[variant]]: runs {seen[run_id]} and "
                        f"'{name}' seed {seed} resolve to the same config (run_id {run_id})"
                        f"{context}; a grid axis or variant is overridden by a later layer"
                    )
                seen[run_id] = f"'{name}' seed {seed}"
                out.append(Variant(name, config))
    return out


def _resolve(
    layers: list[tuple[str, Mapping[str, Any]]], seed: int, where: str, context: str
) -> RunConfig:
    merged: dict[str, Any] = {}
    for _, values in layers:
        merged.update(values)
    merged["seed"] = seed
    for key in _params_of_other_components(layers, merged):
        del merged[key]  # `params = {t = 2}` in [base] is for the runs whose component has t
    try:
        return config_from_dict(merged, where=_MARK)
    except BenchError as err:
        message = str(err)
        if message.startswith(_MARK + ": "):
            message = message[len(_MARK) + 2:]
        raise BenchError(f"{where}: {_culprit(message, layers)}{context}: {message}") from None


def _params_of_other_components(layers: list[tuple[str, Mapping[str, Any]]],
                                 values: Mapping[str, Any]) -> list[str]:
    """The "params.<name>" keys of the merged `values` that its own objective, posterior and
    family do not declare but another registered component does, and that a shared layer
    ([base], [budget.*]) set: such a layer sets them for the runs they apply to. Set by the
    grid or a variant, or declared by nobody (a typo), they stay, to be refused."""
    mine = declared_params(values)
    out = []
    for key in values:
        name = key[len(PARAMS_PREFIX):]
        if not key.startswith(PARAMS_PREFIX) or name in mine or not param_owners(name):
            continue
        winner = next(table for table, layer in reversed(layers) if key in layer)
        if winner == "[base]" or winner.startswith("[budget."):
            out.append(key)
    return out


def _culprit(message: str, layers: list[tuple[str, Mapping[str, Any]]]) -> str:
    """The table whose value of the first key named in `message` won (later layers win)."""
    named = [a or b for a, b in re.findall(r"'(\w+)'|unknown (\w+) '", message)]
    for key in named:
        for table, values in reversed(layers):
            if key in values:
                if table == "[grid]":
                    return f"[grid] axis '{key}' = {_fmt(values[key])}"
                return table
    for table, values in reversed(layers):  # no key named: the most specific layer with values
        if values:
            return table if table != "[grid]" else f"[grid] {_fmt_match(values)}"
    return "[base]"


def _check_values(values: Mapping[str, Any], where: str, table: str) -> None:
    for key, value in values.items():
        _check_value(key, value, where, table)


# the least each model family needs beside it for a lone `model = ...` to be a valid config
def _family_of_lone_value(key: str, value: Any) -> Family | None:
    """The family (registry record) a lone `key = value` needs: the family it names, or the
    first that owns a key the default family (lvm) does not."""
    if key == "model" and value in FAMILIES.models():
        return FAMILIES.get(value)
    if key == "dataset" and value in FAMILIES.toys():
        return FAMILIES.get(value)
    field_ = RunConfig.__dataclass_fields__.get(key)
    if field_ is None or value == field_.default or key in FAMILIES.get("lvm").owns:
        return None
    return next((f for f in FAMILIES if key in f.owns), None)


def _check_value(key: str, value: Any, where: str, table: str) -> None:
    """Type and range of one value on its own (on top of the defaults), naming its table.

    Combinations (iwae with beta != 1, epochs with schedule burda, ...) are checked when the
    layers are merged; this catches a bad value even where a later layer overrides it.
    """
    values: dict[str, Any] = {key: value}
    if key.startswith(PARAMS_PREFIX):  # valid if a component that declares it accepts it
        name = key[len(PARAMS_PREFIX):]
        owners = param_owners(name)
        if not owners:  # the config says whose it could be
            config_from_dict(values, where=f"{where}: {table}")
        errors = []
        for selector, record in owners:  # its type and range (combinations: when merged)
            param = next(p for p in record.params if p.name == name)
            try:
                param.coerce(value, f"of {selector} '{record.name}'")
                return
            except BenchError as err:
                errors.append(BenchError(f"{where}: {table}: {err}"))
        raise errors[0]
    # the family a lone value belongs to, with the values that make it a valid config
    family = _family_of_lone_value(key, value)
    if family is not None:
        values.update({**family.companions, ("dataset" if family.toy else "model"): family.name,
                       key: value})
    # companions that make a lone value valid where a rule ties it to another key
    if key == "latent" and isinstance(value, list):  # keep hidden/latent layer counts equal
        values["hidden"] = [[1]] * len(value)
    elif key == "hidden" and isinstance(value, list):
        values["latent"] = [1] * len(value)
    elif key == "posterior" and value != "gaussian":
        values["flow_steps"] = 1
    elif key == "flow_steps" and value != 0:
        values["posterior"] = "planar"
    elif key == "objective" and value in OBJECTIVES:
        values.update(OBJECTIVES.get(value).companions)
    elif key == "kl_direction" and value == "forward":
        values["objective"] = "iwae"
    elif key == "condition" and value == "quadrants":
        values["given_quadrants"] = 1
    elif key == "given_quadrants" and value != 0:
        values["condition"] = "quadrants"
    elif key == "patience" and value != 0:
        values["validation_size"] = 1
    elif key == "gamma" or (key in ("capacity_steps", "capacity_max") and value != 0):
        values.setdefault("capacity_max", 1.0)
        values.setdefault("capacity_steps", 1)
    elif key == "snr_every" and value != 0:
        values["snr_draws"] = 2
    elif key in ("dci_train", "dci_test") and value != 0:
        values.update({"dci_train": 2, "dci_test": 2, key: value})
    config_from_dict(values, where=f"{where}: {table}")



def _check_config_keys(
    values: Mapping[str, Any], where: str, table: str, extra: tuple[str, ...] = ()
) -> None:
    for key in values:
        if key == "seed":
            raise BenchError(
                f"{where}: key 'seed' in {table}: seeds are set by 'seeds' in [suite] "
                f"or [budget.<name>]"
            )
    _check_keys([k for k in values if not k.startswith(PARAMS_PREFIX)], SETTABLE_KEYS + extra,
                where, table)


def _check_keys(values: Iterable[str], known: Sequence[str], where: str, table: str) -> None:
    for key in values:
        if key not in known:
            raise BenchError(
                f"{where}: unknown key '{key}' in {table} (known: {', '.join(known)})"
            )


def _table(raw: Mapping[str, Any], key: str, where: str, required: bool = False) -> dict:
    if key not in raw:
        if required:
            raise BenchError(f"{where}: missing table [{key}]")
        return {}
    value = raw[key]
    if not isinstance(value, dict):
        raise BenchError(f"{where}: [{key}] must be a table, got {_fmt(value)}")
    return value


def _array(raw: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BenchError(f"{where}: [[{key}]] must be an array of tables ([[{key}]] entries)")
    return value


def _string(
    table: Mapping[str, Any], key: str, where: str, name: str, required: bool = False
) -> str | None:
    if key not in table:
        if required:
            raise BenchError(f"{where}: {name} is missing key '{key}'")
        return None
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise BenchError(f"{where}: {name} key '{key}' must be a non-empty string, got {value!r}")
    return value


def _seeds(value: Any, where: str, table: str) -> list[int]:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
        and len(set(value)) == len(value)
    )
    if not ok:
        raise BenchError(
            f"{where}: {table} key 'seeds' must be a non-empty list of distinct integers >= 0, "
            f"got {_fmt(value)}"
        )
    return list(value)


def parse_value(text: str) -> Any:
    """A filter's or --param's value: a TOML value where it parses as one, else the text itself."""
    try:
        return _toml().loads(f"v = {text}")["v"]
    except Exception:
        return text


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _same(have: Any, want: Any) -> bool:
    """Equality with lists and tuples alike (and 2 == 2.0, as TOML writes either)."""
    if isinstance(have, bool) != isinstance(want, bool):
        return False
    return _hashable(have) == _hashable(want)


def _fmt(value: Any) -> str:
    """A compact, readable rendering of a TOML value (used in names and messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return _fmt_match(value)
    return str(value)


def _fmt_match(values: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()) + "}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
