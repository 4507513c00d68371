"""The posterior registry, in one place: each `posterior` name of the config
(bench.config.POSTERIORS) -> the q(z | x) class that implements it. The diagonal Gaussian is
in posteriors.py, the flows on top of it in flows.py; neither imports this module."""

from __future__ import annotations

from torch import nn

from bench.models.flows import IAFPosterior, PlanarPosterior, RadialPosterior
from bench.models.posteriors import GaussianPosterior

POSTERIORS: dict[str, type[nn.Module]] = {
    "gaussian": GaussianPosterior,
    "planar": PlanarPosterior,
    "radial": RadialPosterior,
    "iaf": IAFPosterior,
}
