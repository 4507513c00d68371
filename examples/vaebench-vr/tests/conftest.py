"""Run from a checkout without installing: the package's src/ on the path when it is not
installed (installed, the installed copy is used, as a user's would be)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("vaebench_vr") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _plugins_stay_in_their_test():
    """A plugin a test loads is unloaded after it (vaebench's registries are per process)."""
    from bench import plugins

    with plugins.scoped():
        yield
