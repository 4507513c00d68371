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


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole test session (~3.5 s, ~470 MB), shared by the test
    modules that run grids on Ray; the runner reuses it (it starts none of its own)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024**2)
    yield ray
    ray.shutdown()
