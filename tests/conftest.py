"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (the CPU is shared), restored afterwards. Use it
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _plugins_stay_in_their_test():
    """Plugins a test loads (directly, or through the CLI's entry-point loading) are unloaded
    after it: registries are per process, and other tests count the built-in records."""
    from bench import plugins

    with plugins.scoped():
        yield
