"""Encoders, decoders and posteriors. `build_model` turns a config into a model."""

from __future__ import annotations

import torch

from bench.components import POSTERIORS
from bench.config import RunConfig
from bench.errors import BenchError
from bench.models.init import init_authors
from bench.models.lvm import LatentVariableModel, ModelSample


def build_model(cfg: RunConfig, n_data: int, seed: int | None = None,
                image_shape: tuple[int, int] | None = None,
                pixel_mean: torch.Tensor | None = None) -> LatentVariableModel:
    """The model a config describes; weights initialised from `seed` (default: cfg.seed)
    without touching the caller's global RNG, by cfg.init (bench.models.init). With init
    "authors" a Bernoulli decoder's output bias is the logit of `pixel_mean` (D,), the
    training set's mean pixel intensities (left at 0 when None). The conv architecture needs
    `image_shape`."""
    if cfg.architecture == "conv" and image_shape is None:
        raise BenchError(f"architecture 'conv' needs an image data set; '{cfg.dataset}' has "
                         "no image shape")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed if seed is None else seed)
        model = LatentVariableModel(
            n_data=n_data,
            hidden=cfg.hidden,
            latent=cfg.latent,
            likelihood=cfg.likelihood,
            posterior=cfg.posterior,
            flow_steps=cfg.flow_steps,
            architecture=cfg.architecture,
            image_shape=image_shape,
            posterior_params={p.name: cfg.param(p.name)
                              for p in POSTERIORS.get(cfg.posterior).params},
        )
        if cfg.init == "authors":
            output = model.decoder.output_layer if cfg.likelihood == "bernoulli" else None
            init_authors(model, output, pixel_mean)
        return model


__all__ = ["LatentVariableModel", "ModelSample", "build_model"]
