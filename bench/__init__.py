"""vaebench: benchmark and reproduce latent-variable generative models.

Data flows one way: suite -> variants -> runner -> trainer -> metrics -> store -> report.

The names below load on first use, so importing one module of the package (say
bench.families.lvm on a GPU machine with torch alone) does not import the store's pandas
and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_LAZY = {
    "BenchError": "bench.errors",
    "RunConfig": "bench.config",
    "config_from_dict": "bench.config",
    "load_curves": "bench.store",
    "load_runs": "bench.store",
    "load_samples": "bench.store",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
