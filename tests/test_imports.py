"""The package's import structure: no import cycles in bench/, and the modules that read
results (config, store, compare, report, the CLI) load without torch, so `vaebench --help`,
`compare` and `report` start fast."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: bench modules it imports at module level}. Imports inside functions are
    deferred on purpose and do not run at import time; `if TYPE_CHECKING:` blocks neither."""
    modules = {module_name(p): p for p in BENCH.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef,
                                                                 ast.ClassDef)) else ():
                if isinstance(sub, ast.Import):
                    found |= {a.name for a in sub.names}
                elif isinstance(sub, ast.ImportFrom):
                    base = sub.module or ""
                    if sub.level:
                        base = ".".join(package.split(".")[:len(package.split(".")) - sub.level + 1]
                                        + ([base] if base else []))
                    subs = {f"{base}.{a.name}" for a in sub.names} & set(modules)
                    found |= subs or {base}  # `from bench import config`: bench.config
        # a package's own ancestors are imported before it anyway: not an edge
        graph[name] = {m for m in found if m in modules and m != name
                       and not name.startswith(f"{m}.")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_bench_has_no_import_cycle():
    graph = import_graph()
    assert "bench.config" in graph and "bench.metrics.catalog" in graph["bench.compare"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("module", ["bench", "bench.config", "bench.store", "bench.compare",
                                    "bench.report", "bench.cli", "bench.metrics.catalog",
                                    "bench.suite", "bench.plugins", "bench.components",
                                    "bench.export"])
def test_reading_results_does_not_import_torch(module):
    # Guards against: a torch import creeping into the modules `vaebench --help`, `compare`
    # and `report` load (it costs about a second per command).
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_a_digits_run_does_not_import_scikit_learn_or_ray(tmp_path):
    # Guards against: scikit-learn coming back on a runner's way to its first run (digits
    # through sklearn.datasets.load_digits: about a second of every runner's start-up, for
    # a table bench.data.digits reads from the file scikit-learn ships), or Ray (0.2-0.5 s,
    # imported by the provenance for its version number). A whole run of the smoke suite
    # in a fresh process, as `vaebench run --executor local` does it.
    code = f"""if True:
        import sys
        from pathlib import Path
        from bench.runner import RunTask, execute
        from bench.suite import load_suite, resolve_suite_path
        suite = load_suite(resolve_suite_path("smoke"), budget="smoke")
        task = RunTask(suite.name, suite.budget, suite.variants[0], Path({str(tmp_path)!r}),
                       threads=1, checkpoint_every=10)
        [landed] = execute(task, device="cpu")
        print(landed.row["status"], landed.row["sys_ray"], "sklearn" in sys.modules,
              "ray" in sys.modules)"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    from importlib.metadata import version

    assert done.stdout.split() == ["finished", version("ray"), "False", "False"], \
        done.stderr[-2000:]
