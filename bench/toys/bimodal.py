"""Reverse vs forward KL on a target with two well-separated modes.

The target p(z) = 1/2 N(-m, s^2) + 1/2 N(m, s^2) is fitted by a single Gaussian
q(z) = N(mu, sigma^2) from the same start in two ways:

    reverse  min KL(q || p): the ELBO/IWAE direction, reparameterised gradient of
             E_q[log q(z) - log p(z)]; mode-seeking, q settles on one mode.
    forward  min KL(p || q): the reweighted wake-sleep wake-phi update with k samples from
             q and self-normalised weights p(z_i)/q(z_i) (`wake_phi_surrogate`, the same
             function the forward-KL encoder uses); mass-covering, q spans both modes.

`fit` returns the fitted q, the probability mass it puts on each mode (z < 0, z > 0) and
both KL values computed by quadrature on a fine grid. The target and the drawing of fits are
torch-free (`bench.toys.bimodal_target`), so a report draws a stored fit without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.errors import make_directory
from bench.objectives import wake_phi_surrogate
from bench.toys.bimodal_target import TARGET, Target, plot_fits

DIRECTIONS = ("reverse", "forward")


@dataclass(frozen=True)
class Fit:
    direction: str
    mean: float
    std: float
    mass_left: float  # q(z < 0)
    mass_right: float  # q(z > 0)
    kl_reverse: float  # KL(q || p), nats
    kl_forward: float  # KL(p || q), nats

    @property
    def mass_on_dominant_mode(self) -> float:
        return max(self.mass_left, self.mass_right)


def fit(
    direction: str,
    target: Target = TARGET,
    *,
    steps: int = 2000,
    k: int = 64,
    lr: float = 0.05,
    start: tuple[float, float] = (0.5, 0.0),
    seed: int = 0,
) -> Fit:
    """Fit q = N(mu, sigma^2) to `target` by `direction` KL from (mu, log sigma) = `start`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    generator = torch.Generator().manual_seed(seed)
    params = torch.tensor(start, dtype=torch.float64, requires_grad=True)  # (mu, log sigma)
    optimizer = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        mu, log_sigma = params[0], params[1]
        eps = torch.randn(k, generator=generator, dtype=torch.float64)
        z = mu + torch.exp(log_sigma) * eps  # (k,)
        if direction == "reverse":
            log_q = -0.5 * eps**2 - log_sigma - 0.5 * math.log(2 * math.pi)
            loss = (log_q - _target_log_prob(target, z)).mean()
        else:
            z = z.detach()
            log_q = _normal_log_prob(z, mu, log_sigma)
            log_w = _target_log_prob(target, z) - log_q
            loss = -wake_phi_surrogate(log_w.unsqueeze(1), log_q.unsqueeze(1)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mu, sigma = (float(v) for v in (params[0].detach(), torch.exp(params[1].detach())))
    return _describe(direction, target, mu, sigma)


def _target_log_prob(target: Target, z: torch.Tensor) -> torch.Tensor:
    """log p(z) of `target` in torch (differentiable, for the reverse-KL fit)."""
    modes = torch.stack([z + target.separation, z - target.separation])
    log_component = -0.5 * (modes / target.scale) ** 2 - math.log(
        target.scale * math.sqrt(2 * math.pi))
    return torch.logsumexp(log_component, dim=0) - math.log(2.0)


def _normal_log_prob(z, mu, log_sigma):
    return -0.5 * ((z - mu) / torch.exp(log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)


def _describe(direction: str, target: Target, mu: float, sigma: float) -> Fit:
    normal = torch.distributions.Normal(torch.tensor(mu, dtype=torch.float64),
                                        torch.tensor(sigma, dtype=torch.float64))
    left = float(normal.cdf(torch.tensor(0.0, dtype=torch.float64)))
    # quadrature over a grid covering both modes and q's bulk
    reach = max(target.separation + 10 * target.scale, abs(mu) + 10 * sigma)
    z = torch.linspace(-reach, reach, 40001, dtype=torch.float64)
    dz = z[1] - z[0]
    log_p, log_q = _target_log_prob(target, z), normal.log_prob(z)
    p, q = log_p.exp(), log_q.exp()
    kl_reverse = float(torch.sum(q * (log_q - log_p)) * dz)
    kl_forward = float(torch.sum(p * (log_p - log_q)) * dz)
    return Fit(direction, mu, sigma, left, 1.0 - left, kl_reverse, kl_forward)


def report(out: Path, target: Target = TARGET, seed: int = 0) -> tuple[list[Fit], Path]:
    """Fit both directions, plot the fitted densities over the target into `out`, and
    return the fits and the PNG's path."""
    make_directory(out, "output directory")  # before fitting: a bad --out fails at once
    fits = [fit(direction, target, seed=seed) for direction in DIRECTIONS]
    labelled = {f"{f.direction} KL: N({f.mean:.2f}, {f.std:.2f}^2), mass {f.mass_left:.0%} / "
                f"{f.mass_right:.0%}": (f.mean, f.std) for f in fits}
    path = plot_fits(labelled, out / "bimodal-toy.png", target=target,
                     title="One Gaussian fitted to two modes: reverse vs forward KL")
    return fits, path
