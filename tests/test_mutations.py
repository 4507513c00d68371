"""The mutation list (tools/mutations.toml, run by `make mutants`) stays applicable: a
refactor that moves the code a mutation rewrites must move the mutation too, or `make
mutants` reports it stale long after the change."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = tomllib.loads((ROOT / "tools" / "mutations.toml").read_text())["mutation"]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m["name"] for m in MUTATIONS])
def test_each_mutation_applies_exactly_once_to_code_its_tests_exist_for(mutation):
    text = (ROOT / mutation["file"]).read_text()
    assert text.count(mutation["old"]) == 1, f"{mutation['name']}: stale `old` text"
    assert mutation["old"] != mutation["new"]
    for test in mutation["tests"]:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), test
        assert not name or f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), test
