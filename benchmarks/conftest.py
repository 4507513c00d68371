"""The microbenchmarks' side-by-side ratios (compiled / eager, ours / plain, the estimate's
multiple of its floor, stacked / sequential) as a section at the end of `make microbench`'s
output: pytest captures a passing test's prints, and pytest-benchmark's tables show each
function's own times, not the ratios of two of them measured in one process (alternating
blocks of each, or medians of back-to-back runs for the estimate)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

RATIOS = pytest.StashKey[list[str]]()


@pytest.fixture
def report(request) -> Callable[[str], None]:
    """report(line): print `line` in the session's "ratios measured side by side" section."""
    lines = request.config.stash.setdefault(RATIOS, [])
    return lines.append


def pytest_terminal_summary(terminalreporter, config) -> None:
    lines = config.stash.get(RATIOS, [])
    if lines:
        terminalreporter.section("ratios measured side by side")
        for line in lines:
            terminalreporter.write_line(line)
