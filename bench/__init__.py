"""vaebench: benchmark and reproduce latent-variable generative models.

Data flows one way: suite -> variants -> runner -> trainer -> metrics -> store -> report.
"""

from bench.config import RunConfig, config_from_dict
from bench.errors import BenchError
from bench.store import load_curves, load_runs, load_samples

__version__ = "0.1.0"
__all__ = [
    "BenchError", "RunConfig", "config_from_dict", "load_curves", "load_runs", "load_samples",
    "__version__",
]
