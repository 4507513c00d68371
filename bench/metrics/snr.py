"""The signal-to-noise ratio (SNR) of a VAE-family model's gradient estimator (issue 25), as
Rainforth et al. 2018 measure it: with the data and the parameters fixed, N independent
draws g_1..g_N of the gradient the training step would take, then per parameter

    SNR = |mean(g)| / std(g)          averaged over the parameters of the encoder (q's) and,
                                      apart, of the decoder (p's: decoder and upper priors)

and the directional SNR of each part, the mean over draws of |g . u| / |g - (g . u) u| with u
the unit mean gradient of the same draws (the DSNR as vlievin/ovis computes it; the paper's
own text was not reachable here). The gradient is that of the run's own objective and
estimator (`objective_for`, `views_for`) on a fixed minibatch: the first batch_size training
examples, binarised once (no input dropout). The draws come from their own generator
(seed + SNR_STREAM, the same at every measurement), so measuring never moves the run's
training or evaluation streams and never changes a parameter (gradients by
torch.autograd.grad, nothing in .grad). For pure noise in P dimensions the DSNR is about
0.8 / sqrt(P - 1) (|g . u| is then noise too): 0.18 for the toy's 20 coordinates.

An SNR estimated from N draws cannot go below about 1 / sqrt(N): the mean of N draws of pure
noise is that far from zero. The DSNR needs u first, so the draws are made twice (the second
pass replays the first's noise), which keeps memory at a few copies of the parameters.
"""

from __future__ import annotations

import math

import torch

from bench.config import RunConfig
from bench.data import Dataset, binarize_dynamic
from bench.loop import SNR_STREAM
from bench.models import LatentVariableModel
from bench.objectives import objective_for, views_for

PARTS = ("encoder", "decoder")


def parameters_by_part(model: LatentVariableModel) -> dict[str, list[torch.nn.Parameter]]:
    """The encoder's parameters (every layer of q) and the decoder's (p(x|z) and the upper
    layers' priors)."""
    return {"encoder": list(model.encoders.parameters()),
            "decoder": [*model.decoder.parameters(), *model.priors.parameters()]}


def snr_batch(cfg: RunConfig, dataset: Dataset, device: torch.device) -> torch.Tensor:
    """The fixed minibatch the SNR is measured on: the first batch_size training examples,
    binarised (when the data set is) once from the SNR stream."""
    x = dataset.train[: cfg.batch_size].to(device)
    if dataset.binarized:
        generator = torch.Generator(device=device).manual_seed(cfg.seed + SNR_STREAM + 1)
        x = binarize_dynamic(x, generator)
    return x


def gradient_snr(model: LatentVariableModel, cfg: RunConfig, x: torch.Tensor, draws: int,
                 ) -> dict[str, float]:
    """{snr_encoder, snr_decoder, dsnr_encoder, dsnr_decoder} of the config's gradient
    estimator on the minibatch x, from `draws` draws (module docstring)."""
    if draws < 2:
        raise ValueError(f"an SNR needs at least 2 gradient draws, got {draws}")
    objective, views = objective_for(cfg), views_for(cfg)
    parts = parameters_by_part(model)
    flat = [p for part in PARTS for p in parts[part]]
    sizes = [sum(p.numel() for p in parts[part]) for part in PARTS]
    seed = cfg.seed + SNR_STREAM

    def passes():
        """Yield each draw's gradient per part, flat float64, from the seeded stream."""
        generator = torch.Generator(device=x.device).manual_seed(seed)
        for _ in range(draws):
            sample = model(x, cfg.k, generator=generator, views=views)
            grads = torch.autograd.grad(objective(sample).mean(), flat, allow_unused=True)
            vector = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                for g, p in zip(grads, flat, strict=True)]).double()
            yield torch.split(vector, sizes)

    total = [torch.zeros(n, dtype=torch.float64, device=x.device) for n in sizes]
    squares = [torch.zeros_like(t) for t in total]
    for gradient in passes():
        for i, g in enumerate(gradient):
            total[i] += g
            squares[i] += g.square()
    out: dict[str, float] = {}
    units = []
    for i, part in enumerate(PARTS):
        mean = total[i] / draws
        std = ((squares[i] - draws * mean.square()).clamp_min(0) / (draws - 1)).sqrt()
        noisy = std > 0  # a parameter whose gradient never varies has no SNR
        out[f"snr_{part}"] = (float((mean[noisy].abs() / std[noisy]).mean()) if noisy.any()
                              else math.nan)
        norm = torch.linalg.vector_norm(mean)
        units.append(mean / norm if norm > 0 else None)
    ratios = [0.0, 0.0]
    for gradient in passes():  # the same draws again, now that u is known
        for i, g in enumerate(gradient):
            if units[i] is not None:
                along = torch.dot(g, units[i])
                across = torch.linalg.vector_norm(g - along * units[i])
                ratios[i] += float(along.abs() / across)
    for i, part in enumerate(PARTS):
        out[f"dsnr_{part}"] = ratios[i] / draws if units[i] is not None else math.nan
    return out
