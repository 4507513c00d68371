"""vaebench: benchmark and reproduce latent-variable generative models.

Data flows one way: suite -> variants -> runner -> trainer -> metrics -> store -> report.
"""

from bench.config import RunConfig, config_from_dict
from bench.errors import BenchError

__version__ = "0.1.0"
__all__ = ["BenchError", "RunConfig", "config_from_dict", "__version__"]
