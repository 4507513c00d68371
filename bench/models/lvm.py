"""A latent-variable model with L stochastic layers, read top to bottom.

    generative  p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1),   p(z_L) = N(0, I)
    inference   q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})

With L=1 and hidden=(200, 200), latent=50 this is the IWAE paper's one-layer model
(784-200-200-50 and back); with L=2, hidden=((200,200),(100,100)), latent=(100,50) its
two-layer model. `forward(x, k)` draws k joint samples per example as one (k, B, .) tensor
and returns the three log-densities every objective is built from. Imports torch only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bench.components import POSTERIORS
from bench.models.conv import FEATURES, ConvDecoderNet, ConvEncoderNet
from bench.models.fastmath import bernoulli_log_prob
from bench.models.posteriors import (
    LOG_2PI,
    ConditionalGaussian,
    GaussianPosterior,
    mlp,
    standard_normal_log_prob,
)


@dataclass(frozen=True)
class Views:
    """What an objective's gradient needs of the model's sample beyond the plain
    log-densities (an objective's `views`, bench.components.VIEWS; `detach` is the forward-KL
    wake-phi update's). Each costs only when asked for.

    detach  no gradient through z: log q's gradient is its score at a fixed sample.
    stl     `log_qz_stl`: log q(z|x) at the sample with q's parameters stopped, so its gradient
            reaches q only through z (the path derivative; Roeder et al. 2017).
    split   log p(x, z) twice, so encoder and decoder can follow different gradients in one
            backward pass: `log_px_given_z` and `log_pz` at z stopped (their gradient reaches
            the generative parameters only), and `log_joint_path` with the generative
            parameters stopped (its gradient reaches z, and through z q's parameters, only).
            The decoder runs twice.
    """

    detach: bool = False
    stl: bool = False
    split: bool = False


PLAIN = Views()


@dataclass
class ModelSample:
    """k joint samples z ~ q(z|x) per example and the log-densities at them (nats)."""

    log_px_given_z: torch.Tensor  # (k, B) log p(x | z_1)
    log_pz: torch.Tensor  # (k, B) log p(z_1..z_L) under the generative model
    log_qz: torch.Tensor  # (k, B) log q(z_1..z_L | x)
    kl_analytic: torch.Tensor | None  # (B,) closed-form KL(q(z|x) || p(z)) where one exists
    z: list[torch.Tensor]  # per layer (k, B, d_l), bottom first
    z_means: list[torch.Tensor]  # per layer (k or 1, B, d_l): E_q[z_l | parent sample]
    log_qz_stl: torch.Tensor | None = None  # (k, B) Views.stl: log q, q's parameters stopped
    log_joint_path: torch.Tensor | None = None  # (k, B) Views.split: log p(x, z), p's stopped

    @property
    def log_weights(self) -> torch.Tensor:
        """(k, B) log importance weights log p(x, z) - log q(z | x)."""
        return self.log_px_given_z + self.log_pz - self.log_qz

    def valued(self) -> ModelSample:
        """This sample with every view it lacks filled from the plain log-densities: the
        same values, for an objective's value without its gradient (evaluation)."""
        return dataclasses.replace(
            self,
            log_qz_stl=self.log_qz if self.log_qz_stl is None else self.log_qz_stl,
            log_joint_path=(self.log_px_given_z + self.log_pz if self.log_joint_path is None
                            else self.log_joint_path))


class BernoulliDecoder(nn.Module):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d)), f a tanh MLP returning logits."""

    def __init__(self, n_latent: int, hidden: tuple[int, ...], n_data: int):
        super().__init__()
        self.net = mlp([n_latent, *hidden, n_data])

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(self.net(z), x)  # (k, B); x broadcast over k

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))

    @property
    def output_layer(self) -> nn.Module:
        """The layer whose bias holds the pixels' logits at z's zero contribution (MLP: the
        last linear layer; conv: the last transposed convolution)."""
        return self.net.deconv[-1] if isinstance(self.net, ConvDecoderNet) else self.net[-1]


class GaussianDecoder(nn.Module):
    """p(x | z) = N(f(z), I) for continuous data (the lecture's choice)."""

    def __init__(self, n_latent: int, hidden: tuple[int, ...], n_data: int):
        super().__init__()
        self.net = mlp([n_latent, *hidden, n_data])

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean = self.net(z)
        return -0.5 * (((x - mean) ** 2).sum(-1) + x.shape[-1] * LOG_2PI)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


DECODERS: dict[str, type[nn.Module]] = {"bernoulli": BernoulliDecoder, "gaussian": GaussianDecoder}


class _Generative(nn.Module):
    """p(z_L) prod p(z_l | z_{l+1}) p(x | z_1) of a LatentVariableModel, over its own
    `priors` and `decoder` modules."""

    def __init__(self, priors: nn.ModuleList, decoder: nn.Module):
        super().__init__()
        self.priors, self.decoder = priors, decoder

    def forward(self, x: torch.Tensor, zs: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        log_pz = standard_normal_log_prob(zs[-1])
        for i, prior in enumerate(self.priors):
            log_pz = log_pz + prior.log_prob(zs[i], zs[i + 1])
        return log_pz, self.decoder.log_prob(x, zs[0])


class LatentVariableModel(nn.Module):
    def __init__(
        self,
        n_data: int,
        hidden: tuple[tuple[int, ...], ...],
        latent: tuple[int, ...],
        likelihood: str = "bernoulli",
        posterior: str = "gaussian",
        flow_steps: int = 0,
        architecture: str = "mlp",
        image_shape: tuple[int, int] | None = None,
        posterior_params: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if architecture == "conv":
            if image_shape is None or len(latent) != 1:
                raise ValueError("the conv architecture needs images and one stochastic layer")
            hidden = ((FEATURES,),)  # the conv trunk ends in FEATURES units, as hidden[0] would
        self.latent = tuple(latent)
        inputs = (n_data, *latent[:-1])  # what each inference layer conditions on
        # q(z_1 | x) uses the chosen posterior family; upper layers are conditional Gaussians.
        # Flow families (flow = True in bench.components.POSTERIORS) also take their number
        # of steps K; a posterior's declared params come as keyword arguments.
        component = POSTERIORS.get(posterior)
        extra = {"steps": flow_steps} if component.flow else {}
        extra.update(posterior_params or {})
        self.encoders = nn.ModuleList(
            [component.load()(inputs[0], hidden[0], latent[0], **extra)]
            + [GaussianPosterior(inputs[i], hidden[i], latent[i]) for i in range(1, len(latent))]
        )
        # p(z_l | z_{l+1}) mirrors q(z_{l+1} | z_l): hidden sizes reversed.
        self.priors = nn.ModuleList(
            [
                ConditionalGaussian(latent[i + 1], tuple(reversed(hidden[i + 1])), latent[i])
                for i in range(len(latent) - 1)
            ]
        )
        self.decoder = DECODERS[likelihood](latent[0], tuple(reversed(hidden[0])), n_data)
        if architecture == "conv":  # swap the MLP trunks for Burgess et al.'s networks
            self.encoders[0].net.trunk = ConvEncoderNet(image_shape)
            self.decoder.net = ConvDecoderNet(latent[0], image_shape)
        self.analytic_kl_available = len(latent) == 1
        # the generative half as one callable module over the same priors and decoder, held
        # outside the module tree (its parameters are the model's own, under their names):
        # Views.split evaluates it with its parameters stopped (functional_call)
        object.__setattr__(self, "_generative", _Generative(self.priors, self.decoder))

    def forward(
        self,
        x: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        views: Views = PLAIN,
        x_in: torch.Tensor | None = None,
        noise: Sequence[torch.Tensor] | None = None,
    ) -> ModelSample:
        """Draw k samples per example of x (B, D); all tensors in the result are (k, B, ...).
        `views` (Views): what the objective needs beyond the plain log-densities; detach and
        stl need Gaussian posteriors. `x_in` (B, D), if given, is what the encoder sees
        instead of x (e.g. x with dropped pixels set to 0): the samples come from q(z | x_in)
        while p(x | z) still scores the full x. `noise` (one tensor per stochastic layer, as
        `draw_noise` returns) replaces the draws from `generator`: the same numbers in the
        same order, so a compiled step sees no generator."""
        extra = {"detach_sample": True} if views.detach else {}
        if views.stl:
            extra["stl"] = True
        log_qz = x.new_zeros(())
        log_qz_stl = x.new_zeros(()) if views.stl else None
        zs, z_means = [], []
        kl = None
        h, draws = (x if x_in is None else x_in), k
        for i, encoder in enumerate(self.encoders):
            eps = {} if noise is None else {"eps": noise[i]}
            sample = encoder(h, draws, generator=generator, **extra, **eps)
            log_qz = log_qz + sample.log_q
            if log_qz_stl is not None:
                log_qz_stl = log_qz_stl + sample.log_q_stl
            zs.append(sample.z)
            z_means.append(sample.mean)
            if kl is None:
                kl = sample.kl_standard_normal
            h, draws = sample.z, None  # upper layers: one sample per lower-layer sample

        log_joint_path = None
        if views.split:  # the generative parameters' gradient apart from the sample's path
            log_pz, log_px_given_z = self.log_joint(x, [z.detach() for z in zs])
            stopped = {name: p.detach() for name, p in self._generative.named_parameters()}
            log_joint_path = sum(functional_call(self._generative, stopped, (x, zs)))
        else:
            log_pz, log_px_given_z = self.log_joint(x, zs)
        return ModelSample(
            log_px_given_z=log_px_given_z,
            log_pz=log_pz,
            log_qz=log_qz,
            kl_analytic=kl if self.analytic_kl_available else None,
            z=zs,
            z_means=z_means,
            log_qz_stl=log_qz_stl,
            log_joint_path=log_joint_path,
        )

    def log_joint(self, x: torch.Tensor, zs: Sequence[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(z_1..z_L), log p(x | z_1)), each (k, B), at the samples `zs`."""
        return self._generative(x, zs)

    def draw_noise(self, batch: int, k: int, generator: torch.Generator | None,
                   device: torch.device | str) -> list[torch.Tensor]:
        """The reparameterisation noise `forward(x, k, generator)` would draw for a batch of
        this size, drawn now from `generator` in the same order: (k, batch, latent_l) per
        stochastic layer, bottom first."""
        dtype = next(self.parameters()).dtype
        return [torch.randn((k, batch, d), generator=generator, device=device, dtype=dtype)
                for d in self.latent]

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means E[x | z_1] for n ancestral samples from the prior, (n, D)."""
        param = next(self.parameters())
        z = torch.randn((n, self.latent[-1]), generator=generator, device=param.device)
        for prior in reversed(self.priors):
            mean, logvar, _ = prior.params(z)
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.decoder.mean(z)

    @torch.no_grad()
    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (B, d_1), of the Gaussian q(z_1 | x) (for a flow posterior:
        of its base distribution q_0): the codes disentanglement metrics read."""
        mean, logvar, _ = self.encoders[0].net.params(x)
        return mean, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        """Decoder means at E_q[z_1|x] (B, D): exact for the Gaussian; for a flow posterior,
        whose mean has no closed form, at one draw of z_1 from `generator`."""
        mean = self.encoders[0](x, 1, generator=generator).mean[0]
        return self.decoder.mean(mean)

