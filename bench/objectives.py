"""Training objectives as plain functions of a model's k-sample output.

Each returns the per-example bound (B,) in nats; the trainer minimises its negative mean.
All use the k samples as one (k, B) tensor; none loops over k.

    vae   (1/k) sum_i [log p(x|z_i)] - beta * KL(q(z|x) || p(z))   (Kingma & Welling 2014;
          beta-VAE: Higgins et al. 2017; k > 1 is Burda et al.'s VAE-k, the mean of k ELBOs)
    iwae  log (1/k) sum_i p(x, z_i) / q(z_i|x)                      (Burda et al. 2015)
    controlled capacity (Burgess et al. 2018, "Understanding disentangling in beta-VAE"):
          (1/k) sum_i log p(x|z_i) - gamma * |KL - C|, KL the minibatch mean, C raised
          linearly from 0 to capacity_max over capacity_steps optimisation steps

With kl_direction = "forward" the decoder still ascends the IWAE bound while the encoder
follows the reweighted wake-sleep wake-phi update (Le et al. 2019), which descends the
inclusive KL(p(z|x) || q(z|x)); the model then draws samples no gradient flows through.
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


def wake_phi_surrogate(log_weights: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(B,) surrogate whose gradient is the reweighted wake-sleep wake-phi update
    (Bornschein & Bengio 2015; Le et al. 2019): sum_i w_i grad log q(z_i|x) with the
    self-normalised importance weights w_i held constant. Its gradient descends the
    inclusive (forward) KL(p(z|x) || q(z|x)); `log_q` must be evaluated at samples the
    gradient does not flow through. Its value is not a bound; add it as `s - s.detach()`."""
    weights = torch.softmax(log_weights.detach(), dim=0)  # (k, B), sums to 1 over k
    return (weights * log_q).sum(0)


Objective = Callable[[ModelSample], torch.Tensor]


class ControlledCapacity:
    """The controlled-capacity objective of Burgess et al. 2018. Each call is one training
    step: it uses C = capacity_max * min(1, steps_done / capacity_steps), then counts the
    step. `steps_done` is set by the trainer when it resumes from a checkpoint."""

    def __init__(self, capacity_max: float, capacity_steps: int, gamma: float,
                 analytic_kl: bool = True) -> None:
        self.capacity_max, self.capacity_steps, self.gamma = capacity_max, capacity_steps, gamma
        self.analytic_kl = analytic_kl
        self.steps_done = 0

    def capacity(self, step: int) -> float:
        """The KL target C (nats) at optimisation step `step` (0-based)."""
        return self.capacity_max * min(1.0, step / self.capacity_steps)

    def __call__(self, sample: ModelSample) -> torch.Tensor:
        target = self.capacity(self.steps_done)
        self.steps_done += 1
        return self.bound(sample, target, self.gamma)

    def bound(self, sample: ModelSample, target: float, gamma: float | torch.Tensor
              ) -> torch.Tensor:
        """(B,) the objective at KL target `target` with weight `gamma` (a stack passes each
        variant's gamma as a tensor); counts no step."""
        kl = kl_term(sample, self.analytic_kl)
        # the penalty is on the minibatch's mean KL, as in the paper; the same for every
        # example, so the trainer's mean over the batch gives recon - gamma * |KL - C|
        return sample.log_px_given_z.mean(0) - gamma * (kl.mean() - target).abs()


def forward_kl_iwae_bound(sample: ModelSample) -> torch.Tensor:
    """(B,) the IWAE bound's value; gradients: the decoder's IWAE gradient and, for q,
    the wake-phi update. Needs samples drawn with `detach_samples=True`."""
    decoder_bound = log_mean_exp(sample.log_px_given_z + sample.log_pz - sample.log_qz.detach())
    wake_phi = wake_phi_surrogate(sample.log_weights, sample.log_qz)
    return decoder_bound + (wake_phi - wake_phi.detach())


def objective_for(cfg: RunConfig, beta: float | torch.Tensor | None = None) -> Objective:
    """The per-example bound to maximise for this config. `beta`, if given, replaces
    cfg.beta: a stack of variants (bench.families.stack) passes each variant's beta as a
    tensor under vmap."""
    beta = cfg.beta if beta is None else beta
    if cfg.kl_direction == "forward":
        return forward_kl_iwae_bound
    if cfg.capacity_max > 0:
        return ControlledCapacity(cfg.capacity_max, cfg.capacity_steps, cfg.gamma,
                                  cfg.analytic_kl)
    builders: dict[str, Callable[[], Objective]] = {
        "vae": lambda: lambda s: vae_bound(s, beta, cfg.analytic_kl),
        "iwae": lambda: iwae_bound,
    }
    return builders[cfg.objective]()
