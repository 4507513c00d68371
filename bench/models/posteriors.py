"""Variational posteriors q(z | h): one stochastic layer of the encoder.

A posterior maps its input h (the data x, or the sample of the layer below) to a
distribution over z and returns reparameterised samples together with log q(z|h).
The objectives only ever see those two tensors, so a richer family (a normalizing flow on
top of the Gaussian) plugs in by adding a class (here or in flows.py) and an entry to
`bench.components.POSTERIORS`.
Imports torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.models.fastmath import Tanh

LOG_2PI = math.log(2 * math.pi)


def mlp(sizes: list[int], activation: type[nn.Module] = Tanh) -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last); tanh by default,
    the IWAE paper's deterministic units."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


@dataclass
class PosteriorSample:
    z: torch.Tensor  # (k, B, d) reparameterised samples
    log_q: torch.Tensor  # (k, B) log q(z | h), nats
    mean: torch.Tensor  # (k, B, d) or (1, B, d): E_q[z | h] (for active units); z itself if unknown
    kl_standard_normal: torch.Tensor | None  # (B,) or (k, B): closed-form KL(q || N(0, I)) if any
    log_q_stl: torch.Tensor | None = None  # (k, B) if asked (stl): log q(z|h), q's params stopped


class ConditionalGaussian(nn.Module):
    """N(mu(h), diag(exp(logvar(h)))): an MLP trunk (tanh by default), linear heads for mean
    and log-variance."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int,
                 activation: type[nn.Module] = Tanh):
        super().__init__()
        self.trunk = (nn.Sequential(mlp([n_in, *hidden], activation), activation()) if hidden
                      else nn.Identity())
        width = hidden[-1] if hidden else n_in
        self.head = nn.Linear(width, 2 * n_out)  # [mean | logvar]: one matmul for both

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, logvar, trunk features) for input h of shape (..., n_in)."""
        features = self.trunk(h)
        mean, logvar = self.head(features).chunk(2, dim=-1)
        return mean, logvar, features

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mean, logvar, _ = self.params(h)
        return gaussian_log_prob(z, mean, logvar)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dimension, nats."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


def draw_eps(mean: torch.Tensor, k: int | None, generator: torch.Generator | None
             ) -> torch.Tensor:
    """The reparameterisation noise of a posterior with this mean: (k, *mean.shape), or
    mean.shape when k is None, one standard normal draw from `generator`."""
    shape = (k, *mean.shape) if k is not None else mean.shape
    return torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)


class GaussianPosterior(nn.Module):
    """Diagonal Gaussian q(z|h), the VAE/IWAE default."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_latent: int):
        super().__init__()
        self.net = ConditionalGaussian(n_in, hidden, n_latent)

    def forward(
        self,
        h: torch.Tensor,
        k: int | None,
        generator: torch.Generator | None = None,
        detach_sample: bool = False,
        eps: torch.Tensor | None = None,
        stl: bool = False,
    ) -> PosteriorSample:
        """Sample from q(z|h). h is (B, n_in) with k samples drawn per row, or already
        (k, B, n_in) (one sample per row, k=None) when this layer sits on top of another.
        With `detach_sample` no gradient flows through z and log q is that of the fixed
        sample (its gradient is the score, as the wake-phi update needs). `eps`, if given,
        is the standard normal noise to use, drawn beforehand (a compiled step). With `stl`
        the result also holds log q at z under stopped mean and variance (`log_q_stl`: its
        gradient reaches the parameters only through z)."""
        mean, logvar, _ = self.net.params(h)
        if eps is None:
            eps = draw_eps(mean, k, generator)
        std = torch.exp(0.5 * logvar)
        z = mean + std * eps  # (k, B, d)
        if detach_sample:
            z = z.detach()
            log_q = gaussian_log_prob(z, mean, logvar)  # mean (B, d) broadcasts over k
        else:  # log q at the reparameterised sample via eps: identical value and gradient
            log_q = -0.5 * (eps**2 + logvar + LOG_2PI).sum(-1)
        kl = 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)
        log_q_stl = gaussian_log_prob(z, mean.detach(), logvar.detach()) if stl else None
        return PosteriorSample(
            z=z, log_q=log_q, mean=mean if k is None else mean.unsqueeze(0), kl_standard_normal=kl,
            log_q_stl=log_q_stl,
        )
