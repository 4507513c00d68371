"""vaebench-vr: the Renyi / VR-alpha bound (Li & Turner 2016) as a vaebench objective.

Registered through vaebench's plugin API (the entry point `vr` in pyproject.toml, or
`--plugin vaebench_vr`):
    objective "vr"   its param alpha (float; 0 = IWAE, 1 = the ELBO, -inf = VR-max)
    suites/          vr_mnist: VR-max beside VAE and IWAE on Burda et al.'s MNIST protocol
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.plugins import API, Param

__version__ = "0.1.0"


def make_vr(cfg):
    """The objective vaebench trains: the per-example VR bound at the config's alpha."""
    from vaebench_vr.bound import vr_bound  # torch, only where a run trains

    alpha = cfg.param("alpha")
    return lambda sample: vr_bound(sample.log_weights, alpha)


def register(api: API) -> None:
    api.objective(
        "vr", make_vr,
        params=[Param("alpha", float, default=0.5, exclude=(math.inf,),
                      help="Renyi alpha: 0 = IWAE, 1 = the ELBO (VAE), -inf = VR-max")],
        help="the Renyi bound 1/(1-alpha) log mean w^(1-alpha) (Li & Turner 2016)")
    api.suites(Path(__file__).parent / "suites")
