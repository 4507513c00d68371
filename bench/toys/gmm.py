"""The Gaussian mixture experiment of Le et al. 2019 ("Revisiting reweighted wake-sleep"):
a discrete latent, so the posterior p(c|x), log p(x) and KL(p(c|x) || q(c|x)) are exact.

    p_theta(c) = Cat(softmax(theta)), c in {0..19};  p(x|c) = N(10 c, 5^2)
    true mixing weights proportional to c + 5;       q_phi(c|x) = Cat(softmax(MLP(x)))

Both the model's mixing weights theta and the inference network phi are learned from data
drawn from the true model, with K particles, in two ways:

    reverse  IWAE: both ascend the K-sample bound; c is discrete, so phi's gradient is the
             score-function (REINFORCE) estimator of the bound's gradient.
    forward  RWS: theta ascends the same bound (wake-theta); phi follows the wake-phi update
             sum_i w_i grad log q(c_i|x), descending KL(p(c|x) || q(c|x))
             (`bench.objectives.wake_phi_surrogate`).

Reported per run: the L2 error of the learned mixing weights and the mean exact
KL(p_theta(c|x) || q_phi(c|x)) over held-out x (how good the inference network is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.objectives import log_mean_exp, wake_phi_surrogate

N_COMPONENTS = 20
MEAN_SPACING = 10.0  # component c has mean 10 c
STD = 5.0
DIRECTIONS = ("reverse", "forward")


def true_logits() -> torch.Tensor:
    weights = torch.arange(N_COMPONENTS, dtype=torch.float64) + 5.0
    return torch.log(weights / weights.sum())


def log_joint(x: torch.Tensor, c: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x, c) for x (B,) broadcast against components c (..., B)."""
    log_prior = torch.log_softmax(logits, dim=0)[c]
    mean = MEAN_SPACING * c.to(x.dtype)
    log_lik = -0.5 * ((x - mean) / STD) ** 2 - math.log(STD * math.sqrt(2 * math.pi))
    return log_prior + log_lik


def exact_posterior(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(c | x) as (B, C): enumeration over the 20 components."""
    components = torch.arange(N_COMPONENTS).unsqueeze(1)  # (C, 1)
    joint = log_joint(x, components.expand(-1, x.shape[0]), logits)  # (C, B)
    return (joint - torch.logsumexp(joint, dim=0)).T


def sample_data(n: int, generator: torch.Generator) -> torch.Tensor:
    c = torch.multinomial(torch.softmax(true_logits(), 0), n, replacement=True,
                          generator=generator)
    return MEAN_SPACING * c.double() + STD * torch.randn(n, generator=generator,
                                                         dtype=torch.float64)


class InferenceNetwork(nn.Module):
    """q_phi(c | x): an MLP on the standardised scalar x giving 20 logits."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, N_COMPONENTS)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x - MEAN_SPACING * (N_COMPONENTS - 1) / 2) / (MEAN_SPACING * N_COMPONENTS / 4)
        return torch.log_softmax(self.net(scaled.unsqueeze(-1)), dim=-1)  # (B, C)


@dataclass(frozen=True)
class GMMResult:
    direction: str
    particles: int
    seed: int
    mixture_weight_error: float  # || softmax(theta) - true weights ||_2
    posterior_kl: float  # mean over held-out x of KL(p_theta(c|x) || q_phi(c|x)), nats


def train(direction: str, particles: int, *, iterations: int = 2000, batch_size: int = 100,
          lr: float = 1e-3, seed: int = 0, n_test: int = 1000) -> GMMResult:
    """Learn theta and phi with K = `particles` by IWAE (reverse) or RWS (forward)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if particles < 1 or iterations < 1:
        raise ValueError("particles and iterations must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = InferenceNetwork()
    theta = torch.zeros(N_COMPONENTS, dtype=torch.float64, requires_grad=True)  # uniform start
    optimizer = torch.optim.Adam([theta, *q.parameters()], lr=lr)
    for _ in range(iterations):
        x = sample_data(batch_size, generator)
        log_q_all = q(x)  # (B, C)
        c = torch.multinomial(log_q_all.detach().exp(), particles, replacement=True,
                              generator=generator).T  # (K, B)
        log_q = log_q_all.gather(1, c.T).T  # (K, B), differentiable in phi
        log_p = log_joint(x, c, theta)  # (K, B), differentiable in theta
        log_w = log_p - log_q
        theta_bound = log_mean_exp(log_p - log_q.detach())  # wake-theta / IWAE for theta
        if direction == "forward":
            phi_term = wake_phi_surrogate(log_w, log_q)
        else:  # IWAE's phi gradient: score-function (REINFORCE) term + the weights' -log q
            bound = log_mean_exp(log_w.detach())
            phi_term = bound * log_q.sum(0) + log_mean_exp(log_p.detach() - log_q)
        loss = -(theta_bound + phi_term - phi_term.detach()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _evaluate(direction, particles, seed, theta.detach(), q, generator, n_test)


def _evaluate(direction, particles, seed, theta, q, generator, n_test) -> GMMResult:
    with torch.no_grad():
        error = torch.linalg.vector_norm(torch.softmax(theta, 0) - torch.softmax(true_logits(), 0))
        x = sample_data(n_test, generator)
        log_post = exact_posterior(x, theta)
        kl = (log_post.exp() * (log_post - q(x))).sum(1).mean()
    return GMMResult(direction, particles, seed, float(error), float(kl))
