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

Estimators and bounds after IWAE. Below, log w_i = log p(x, z_i) - log q(z_i|x) and
w~_i = w_i / sum_j w_j its self-normalised weight, held constant in a gradient:

    stl    the IWAE bound; gradient sum_i w~_i d/dphi [log p(x, z_i) - log q_stop(z_i|x)],
           log q at q's parameters stopped: its score term dropped (Roeder et al. 2017;
           biased for k > 1, Tucker et al. 2019 Sec. 4)
    dreg   the IWAE bound; decoder: IWAE's gradient; encoder: sum_i w~_i^2 d log w_i/d z_i
           d z_i/d phi, the doubly reparameterised gradient (Tucker et al. 2019), unbiased
    rws_dreg  (kl_direction forward) decoder: IWAE's gradient; encoder: the wake-phi update
           in its doubly reparameterised form sum_i (w~_i - w~_i^2) d log w_i/d z_i
           d z_i/d phi (Tucker et al. 2019)
    miwae  MIWAE(M, K) = (1/M) sum_m log (1/K) sum_k w_{m,k}, the k = M x K samples in M groups
           of K (Rainforth et al. 2018); M = 1 is IWAE-k, K = 1 the VAE-k (Monte Carlo KL)
    ciwae  CIWAE(beta) = beta ELBO + (1 - beta) IWAE-k, both from the same k samples
           (Rainforth et al. 2018); the ELBO term is the Monte Carlo mean of log w
    piwae  PIWAE(M, K): the encoder ascends MIWAE(M, K), the decoder IWAE(M x K), both from the
           same k = M x K samples, in one backward pass (Rainforth et al. 2018)

Objectives whose encoder and decoder follow different gradients (dreg, rws_dreg, piwae) use
the model's split view (bench.models.lvm.Views): log p(x, z) once at z stopped for the
decoder, once at the generative parameters stopped for the encoder's path through z. Each
returns a surrogate whose value is the bound it reports (IWAE-k; piwae: IWAE(M x K)) and whose
gradient is the estimator's: the encoder's part enters as `s - s.detach()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bench.components import BUILT_IN, OBJECTIVES
from bench.config import RunConfig
from bench.errors import BenchError
from bench.models.lvm import PLAIN, ModelSample, Views


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


def stl_bound(sample: ModelSample) -> torch.Tensor:
    """(B,) the IWAE bound with the sticking-the-landing gradient (needs Views.stl)."""
    return log_mean_exp(sample.log_px_given_z + sample.log_pz - sample.log_qz_stl)


def _decoder_bound(sample: ModelSample) -> tuple[torch.Tensor, torch.Tensor]:
    """(IWAE bound (B,), its normalised weights (k, B) held constant) of a split sample, the
    bound's gradient reaching the generative parameters only."""
    log_w = sample.log_px_given_z + sample.log_pz - sample.log_qz.detach()
    return log_mean_exp(log_w), torch.softmax(log_w.detach(), dim=0)


def _surrogate(value: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
    """`value`, with the gradient of `encoder` added."""
    return value + (encoder - encoder.detach())


def dreg_bound(sample: ModelSample) -> torch.Tensor:
    """(B,) the IWAE bound; gradient: the decoder's IWAE gradient and the doubly
    reparameterised encoder gradient sum_i w~_i^2 d log w_i / d phi through z_i only
    (Tucker et al. 2019). Needs Views.stl and Views.split."""
    bound, weights = _decoder_bound(sample)
    path = sample.log_joint_path - sample.log_qz_stl  # log w_i, reaching phi through z only
    return _surrogate(bound, (weights.square() * path).sum(0))


def rws_dreg_bound(sample: ModelSample) -> torch.Tensor:
    """(B,) the IWAE bound; gradient: the decoder's IWAE gradient (wake-theta) and the
    wake-phi update in its doubly reparameterised form sum_i (w~_i - w~_i^2) d log w_i /
    d phi through z_i only (Tucker et al. 2019), which descends KL(p(z|x) || q(z|x)) in
    expectation as `wake_phi_surrogate` does. Needs Views.stl and Views.split."""
    bound, weights = _decoder_bound(sample)
    path = sample.log_joint_path - sample.log_qz_stl
    return _surrogate(bound, ((weights - weights.square()) * path).sum(0))


def miwae_bound(log_w: torch.Tensor, m: int) -> torch.Tensor:
    """(B,) MIWAE(M, K) of log weights (k, B), k = M x K: the mean over the M groups of
    consecutive K samples of their log-mean-exp (the samples are i.i.d.: any grouping is
    the same bound)."""
    k, batch = log_w.shape
    return log_mean_exp(log_w.reshape(m, k // m, batch), dim=1).mean(0)


def ciwae_bound(log_w: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """(B,) CIWAE(beta) = beta x ELBO + (1 - beta) x IWAE-k of log weights (k, B)."""
    return beta * log_w.mean(0) + (1 - beta) * log_mean_exp(log_w)


def piwae_bound(sample: ModelSample, m: int) -> torch.Tensor:
    """(B,) IWAE(M x K), the decoder's bound; gradient: the decoder's IWAE(M x K) and the
    encoder's MIWAE(M, K), whose log weights reach phi through z and through log q (the full
    reparameterisation gradient). Needs Views.split."""
    bound, _ = _decoder_bound(sample)
    return _surrogate(bound, miwae_bound(sample.log_joint_path - sample.log_qz, m))


def make_vae(cfg: RunConfig, beta: float | torch.Tensor | None = None) -> Objective:
    """The "vae" objective of the registry (bench.components.OBJECTIVES)."""
    beta = cfg.beta if beta is None else beta
    return lambda sample: vae_bound(sample, beta, cfg.analytic_kl)


def make_iwae(cfg: RunConfig) -> Objective:
    """The "iwae" objective of the registry (bench.components.OBJECTIVES)."""
    return iwae_bound


def make_stl(cfg: RunConfig) -> Objective:
    return stl_bound


def make_dreg(cfg: RunConfig) -> Objective:
    return dreg_bound


def make_rws_dreg(cfg: RunConfig) -> Objective:
    return rws_dreg_bound


def make_miwae(cfg: RunConfig) -> Objective:
    m = cfg.param("m")
    return lambda sample: miwae_bound(sample.log_weights, m)


def make_ciwae(cfg: RunConfig, beta: float | torch.Tensor | None = None) -> Objective:
    beta = cfg.beta if beta is None else beta
    return lambda sample: ciwae_bound(sample.log_weights, beta)


def make_piwae(cfg: RunConfig) -> Objective:
    m = cfg.param("m")
    return lambda sample: piwae_bound(sample, m)


def views_for(cfg: RunConfig) -> Views:
    """What the config's objective needs of the model's sample (bench.models.lvm.Views)."""
    if cfg.kl_direction == "forward" and cfg.objective == "iwae":
        return Views(detach=True)  # the wake-phi update: log q's score at fixed samples
    wanted = OBJECTIVES.get(cfg.objective).views
    return Views(stl="stl" in wanted, split="split" in wanted) if wanted else PLAIN


def objective_for(cfg: RunConfig, beta: float | torch.Tensor | None = None) -> Objective:
    """The per-example bound to maximise for this config. `beta`, if given, replaces
    cfg.beta (only objectives that use beta take it; the others have beta = 1)."""
    return objective_builder(cfg)(beta)


def objective_builder(cfg: RunConfig) -> Callable[[float | torch.Tensor | None], Objective]:
    """beta -> the config's objective, its implementation resolved (imported) now: a stack
    of variants (bench.families.stack) builds each variant's objective inside vmap and a
    compiled graph, with its beta as a tensor, where nothing may import."""
    if cfg.kl_direction == "forward" and cfg.objective == "iwae":
        return lambda beta: forward_kl_iwae_bound
    if cfg.capacity_max > 0:
        return lambda beta: ControlledCapacity(cfg.capacity_max, cfg.capacity_steps, cfg.gamma,
                                               cfg.analytic_kl)
    component = OBJECTIVES.get(cfg.objective)
    make = component.load()
    if component.uses_beta:
        return lambda beta: make(cfg) if beta is None else make(cfg, beta=beta)
    return lambda beta: make(cfg)


def check_objective(cfg: RunConfig) -> None:
    """Before any run starts: a plugin's objective, built for `cfg` and applied to a small
    synthetic sample (k = cfg.k samples of 3 examples), must return one differentiable value
    per example, a (3,) floating tensor. A BenchError names the plugin and what it returned.
    (Its values may be anything: a bound that goes NaN in training is a diverged row.)"""
    component = OBJECTIVES.get(cfg.objective)
    if component.plugin == BUILT_IN or cfg.kl_direction == "forward" or cfg.capacity_max > 0:
        return
    who = f"plugin {component.plugin}: objective '{cfg.objective}'"
    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(cfg.k, 3, generator=generator, requires_grad=True) for _ in range(3)]
    sample = ModelSample(log_px_given_z=parts[0] - 50.0, log_pz=parts[1] - 10.0,
                         log_qz=parts[2] - 5.0, kl_analytic=None,
                         z=[torch.randn(cfg.k, 3, 2, generator=generator)],
                         z_means=[torch.zeros(1, 3, 2)])
    try:
        bound = objective_for(cfg)(sample.valued())
    except Exception as err:  # the plugin's own code: anything may go wrong
        raise BenchError(f"{who} raised {type(err).__name__} on a sample of k = {cfg.k} "
                         f"samples of 3 examples: {' '.join(str(err).split())}") from None
    if not isinstance(bound, torch.Tensor):
        raise BenchError(f"{who} returned {type(bound).__name__}, not a tensor: it must return "
                         f"one value per example, shape (B,)")
    if tuple(bound.shape) != (3,) or not bound.is_floating_point():
        raise BenchError(
            f"{who} returned a bound of shape {tuple(bound.shape)} ({bound.dtype}) for k = "
            f"{cfg.k} samples of 3 examples: it must be (3,), one value per example")
    if not bound.requires_grad:
        raise BenchError(f"{who} returned a bound with no gradient (detached from the sample's "
                         "log-densities): nothing would train")
