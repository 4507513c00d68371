"""The Gaussian model of Rainforth et al. 2018 ("Tighter variational bounds are not
necessarily better"), where every gradient estimator's draw is closed form, so the
signal-to-noise ratio (SNR) of the encoder's and the decoder's gradients can be measured from
10^5-10^6 draws in seconds.

    generative  z ~ N(mu, I),  x | z ~ N(z, I)            (D = 20; the exact posterior is
                                                           N((mu + x) / 2, I / 2))
    inference   q(z | x) = N(A x + b, (2/3) I)            (the variance fixed, not learned)
    data        N = 1024 points x_n drawn from the model with mu_true ~ N(0, I) (fixed seed)
    optimum     mu* = mean x, A* = I / 2, b* = mu* / 2   (q's mean is the posterior mean)

A run measures one estimator at one k (the config's objective and k) at parameters perturbed
from the optimum by N(0, perturbation^2) each (seeded by cfg.seed): `draws` independent
gradient draws of the bound at the first `points` data points (their mean; 1 = the first
point), and from them, per parameter, SNR = |mean| / std over the draws, averaged over the 20
coordinates of b (the encoder) and of mu (the decoder), as in Rainforth et al.'s definition;
and the directional SNR, the mean over draws of |g . u| / |g - (g . u) u| with u the unit
mean gradient of the same draws. An SNR estimated from N draws cannot go below about
1 / sqrt(N) (`snr_floor`): a mean of N draws of pure noise is that far from zero.

Why it is cheap. With z_i = m + s eps_i (m = A x + b, s^2 = 2/3), log w_i = log p(z_i) +
log p(x | z_i) - log q(z_i | x) = s (x - m - (m - mu)) . eps_i + (1/2 - s^2) |eps_i|^2 + c,
and d log w_i / d z_i at q's parameters stopped = (mu + x - 2 z_i) + eps_i / s. So every
estimator's gradient with respect to b and mu is a weighted sum of the eps_i:

    encoder  sum_i a_i (mu + x - 2 m - 2 s eps_i) + sum_i c_i eps_i / s
    decoder  sum_i d_i (m - mu + s eps_i)

with weights (a, c, d) per estimator (w~ the self-normalised weights over the k samples):

    iwae  (w~, 0, w~)            stl   (w~, w~, w~)          dreg  (w~^2, w~^2, w~)
    vae   (1/k, 0, 1/k)          miwae (w~_group / M, 0, the same)
    ciwae (beta/k + (1 - beta) w~, 0, the same)              piwae (miwae's, 0, w~)
    rws_dreg (w~ - w~^2, w~ - w~^2, w~): the wake-phi update, which ascends no bound

(IWAE's encoder gradient has no eps_i / s term: the reparameterised log q(z_i | x) is
-|eps_i|^2 / 2 + const, free of b.) Each draw is then one batched matrix product.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from bench.errors import BenchError
from bench.families.registry import SNR_TOY_OBJECTIVES

DIM = 20
N_POINTS = 1024
Q_VARIANCE = 2.0 / 3.0
DATA_SEED = 0  # the data set is the same for every run; cfg.seed draws the perturbation
ESTIMATORS = SNR_TOY_OBJECTIVES
#: draws per chunk x k x points x DIM kept below this many floats (memory and cache)
CHUNK_FLOATS = 4_000_000


@dataclass(frozen=True)
class Problem:
    """The data and the (perturbed) parameters one measurement is made at."""

    x: torch.Tensor  # (N_POINTS, DIM)
    mu: torch.Tensor  # (DIM,) the decoder's prior mean
    a: torch.Tensor  # (DIM, DIM) the encoder's A
    b: torch.Tensor  # (DIM,) the encoder's b


def data() -> torch.Tensor:
    """The 1024 data points (float64), drawn from the model with mu_true ~ N(0, I)."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    mu_true = torch.randn(DIM, generator=generator, dtype=torch.float64)
    z = mu_true + torch.randn(N_POINTS, DIM, generator=generator, dtype=torch.float64)
    return z + torch.randn(N_POINTS, DIM, generator=generator, dtype=torch.float64)


def optimum(x: torch.Tensor) -> Problem:
    """The closed-form optimum: mu* = mean x, A* = I / 2, b* = mu* / 2."""
    mu = x.mean(0)
    return Problem(x, mu, torch.eye(DIM, dtype=torch.float64) / 2, mu / 2)


def perturbed(seed: int, scale: float) -> Problem:
    """The optimum with N(0, scale^2) added to every coordinate of mu, A and b."""
    best = optimum(data())
    generator = torch.Generator().manual_seed(seed)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return t + scale * torch.randn(t.shape, generator=generator, dtype=torch.float64)

    return Problem(best.x, noise(best.mu), noise(best.a), noise(best.b))


def _weights(estimator: str, log_w: torch.Tensor, m: int, beta: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, c, d), each (n, k, P): the estimator's weights on the full derivative, on the
    eps / s term of the encoder's gradient, and on the decoder's (module docstring)."""
    n, k, points = log_w.shape
    w = torch.softmax(log_w, dim=1)
    zero = torch.zeros_like(w)
    if estimator == "iwae":
        return w, zero, w
    if estimator == "stl":
        return w, w, w
    if estimator == "dreg":
        return w * w, w * w, w
    if estimator == "rws_dreg":
        return w - w * w, w - w * w, w
    if estimator == "vae":
        flat = torch.full_like(w, 1.0 / k)
        return flat, zero, flat
    if estimator in ("miwae", "piwae"):
        grouped = torch.softmax(log_w.reshape(n, m, k // m, points), dim=2).reshape(n, k, points)
        grouped = grouped / m
        return grouped, zero, (grouped if estimator == "miwae" else w)
    if estimator == "ciwae":
        mixed = beta / k + (1 - beta) * w
        return mixed, zero, mixed
    raise BenchError(f"the snr_gaussian toy has no closed form for objective '{estimator}' "
                     f"(known: {', '.join(ESTIMATORS)})")


def closed_form(problem: Problem, estimator: str, eps: torch.Tensor, *, m: int = 1,
                beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimator's gradient draws with respect to b and to mu, each (n, DIM) float64, at
    the standard normal noise eps (n, P, k, DIM) for the first P data points (the gradient of
    the mean of their bounds): weighted sums of the eps_i (module docstring)."""
    points = eps.shape[1]
    x = problem.x[:points]  # (P, D)
    mean = x @ problem.a.T + problem.b  # q's mean per point, (P, D)
    s = math.sqrt(Q_VARIANCE)
    direction = (s * (x - 2 * mean + problem.mu)).to(eps.dtype).unsqueeze(-1)  # (P, D, 1)
    log_w = (eps @ direction).squeeze(-1) + (0.5 - Q_VARIANCE) * eps.square().sum(-1)
    a, c, d = (t.transpose(1, 2) for t in _weights(
        estimator, log_w.transpose(1, 2).double(), m, beta))  # each (n, P, k)
    sums = (torch.stack([a, c, d], dim=2).to(eps.dtype) @ eps).double()  # sum_i weight_i eps_i
    full_at_mean = problem.mu + x - 2 * mean  # (P, D): d log w / d z at eps = 0
    g_b = a.sum(-1, keepdim=True) * full_at_mean - 2 * s * sums[:, :, 0] + sums[:, :, 1] / s
    g_mu = d.sum(-1, keepdim=True) * (mean - problem.mu) + s * sums[:, :, 2]
    return g_b.mean(1), g_mu.mean(1)


def gradient_draws(problem: Problem, estimator: str, k: int, draws: int, *, points: int = 1,
                   m: int = 1, beta: float = 0.5, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`draws` independent draws of the estimator's gradient of the bound (its mean over the
    first `points` data points) with respect to b and to mu: two (draws, DIM) float64
    tensors. The noise is drawn in float32 chunks of a fixed size, chunk j from its own
    generator seeded (seed, j), on torch.get_num_threads() threads: the draws are the same
    whatever the number of threads."""
    if estimator not in ESTIMATORS:
        _weights(estimator, torch.zeros(1, 1, 1), m, beta)  # raises, naming the estimator
    per_chunk = max(1, CHUNK_FLOATS // (k * points * DIM))

    def chunk(j: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(per_chunk, draws - j * per_chunk)
        generator = torch.Generator().manual_seed(seed * 2**24 + j)
        eps = torch.randn((n, points, k, DIM), generator=generator)
        return closed_form(problem, estimator, eps, m=m, beta=beta)

    chunks = range(math.ceil(draws / per_chunk))
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        parts = list(pool.map(chunk, chunks))  # random numbers dominate: one stream a thread
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass(frozen=True)
class SNR:
    snr: float  # mean over coordinates of |mean| / std
    dsnr: float  # mean over draws of |g . u| / |g - (g . u) u|, u = mean / |mean|


def snr_of(draws: torch.Tensor) -> SNR:
    """SNR and directional SNR of gradient draws (n, P) (module docstring)."""
    mean = draws.mean(0)
    std = draws.std(0)
    snr = float((mean.abs() / std).mean())
    u = mean / torch.linalg.vector_norm(mean)
    along = draws @ u
    across = torch.linalg.vector_norm(draws - along.unsqueeze(1) * u, dim=1)
    return SNR(snr, float((along.abs() / across).mean()))


def measure(estimator: str, k: int, *, draws: int, seed: int = 0, points: int = 1,
            perturbation: float = 0.01, m: int = 1, beta: float = 0.5) -> dict[str, float]:
    """One measurement: the metrics of a run of this toy (module docstring)."""
    if draws < 2 or k < 1 or not 1 <= points <= N_POINTS or k % m:
        raise BenchError(f"snr_gaussian needs draws >= 2, k >= 1, 1 <= points <= {N_POINTS} "
                         f"and k a multiple of m (got draws {draws}, k {k}, points {points}, "
                         f"m {m})")
    problem = perturbed(seed, perturbation)
    encoder, decoder = gradient_draws(problem, estimator, k, draws, points=points, m=m,
                                      beta=beta, seed=seed)
    enc, dec = snr_of(encoder), snr_of(decoder)
    return {"snr_encoder": enc.snr, "snr_decoder": dec.snr, "dsnr_encoder": enc.dsnr,
            "dsnr_decoder": dec.dsnr, "snr_floor": 1.0 / math.sqrt(draws)}
