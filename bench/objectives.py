"""Training objectives as plain functions of a model's k-sample output.

Each returns the per-example bound (B,) in nats; the trainer minimises its negative mean.
All use the k samples as one (k, B) tensor; none loops over k.

    vae   (1/k) sum_i [log p(x|z_i)] - beta * KL(q(z|x) || p(z))   (Kingma & Welling 2014;
          beta-VAE: Higgins et al. 2017; k > 1 is Burda et al.'s VAE-k, the mean of k ELBOs)
    iwae  log (1/k) sum_i p(x, z_i) / q(z_i|x)                      (Burda et al. 2015)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bench.config import RunConfig
from bench.models.lvm import ModelSample


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/k) sum exp(log_w) along `dim`, stable for any magnitude of log_w."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def kl_term(sample: ModelSample, analytic: bool = True) -> torch.Tensor:
    """(B,) KL(q(z|x) || p(z)): closed form where the model has one, else the k-sample
    Monte Carlo estimate mean_i [log q(z_i|x) - log p(z_i)]."""
    if analytic and sample.kl_analytic is not None:
        return sample.kl_analytic
    return (sample.log_qz - sample.log_pz).mean(0)


def vae_bound(sample: ModelSample, beta: float = 1.0, analytic_kl: bool = True) -> torch.Tensor:
    """(B,) mean of k ELBO terms with weight beta on the KL; beta=1 is the ELBO."""
    reconstruction = sample.log_px_given_z.mean(0)
    return reconstruction - beta * kl_term(sample, analytic_kl)


def iwae_bound(sample: ModelSample) -> torch.Tensor:
    """(B,) the k-sample importance weighted bound; k=1 is the ELBO (Monte Carlo KL)."""
    return log_mean_exp(sample.log_weights, dim=0)


Objective = Callable[[ModelSample], torch.Tensor]


def objective_for(cfg: RunConfig) -> Objective:
    """The per-example bound to maximise for this config."""
    builders: dict[str, Callable[[], Objective]] = {
        "vae": lambda: lambda s: vae_bound(s, cfg.beta, cfg.analytic_kl),
        "iwae": lambda: iwae_bound,
    }
    return builders[cfg.objective]()
