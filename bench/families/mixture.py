"""A mixture of Bernoullis fitted by EM, with the exact log-likelihood (`model = "mixture"`).

The model (Bishop 2006, "Pattern Recognition and Machine Learning", sec. 9.3.3) has one
discrete latent z in {1..K} and D binary pixels that are independent given z:

    p(z = c) = pi_c,        p(x | z = c) = prod_d mu_cd^x_d (1 - mu_cd)^(1 - x_d)
    log p(x, c) = log pi_c + x . (log mu_c - log(1 - mu_c)) + sum_d log(1 - mu_cd)
    log p(x) = log sum_c p(x, c)                      (exact: a log-sum-exp over K terms)

so log p(x | c) for all examples and components is one (N, D) x (D, K) matmul. It is computed
in float64 throughout (x is exactly 0/1, so nothing is lost in the conversion), which makes
the log-sum-exp and the per-iteration likelihood exact to ~1e-13 relative.

EM (Dempster, Laird & Rubin 1977). For any q(z|x), log p(x) = ELBO(q) + KL(q || p(z|x)).
E-step: q(z|x) = p(z|x), the responsibilities r_nc = exp(log p(x_n, c) - log p(x_n)),
computed in log space; the bound then equals log p(x) exactly (KL = 0). M-step: maximise the
expected complete log-likelihood Q = sum_n sum_c r_nc log p(x_n, c):

    pi_c = (1/N) sum_n r_nc,        mu_c = clip(sum_n r_nc x_n / sum_n r_nc, eps, 1 - eps).

Why clipping keeps EM monotone: for one (c, d), Q depends on mu_cd only through
A log mu + B log(1 - mu) (A, B >= 0 the responsibility-weighted counts of ones and zeros),
a concave function of mu with its maximum at A / (A + B). A concave function of one variable
restricted to an interval is maximised at the unconstrained maximiser clipped to the
interval, so the clipped mean is the exact maximiser of Q over [eps, 1 - eps]. The M-step is
therefore a true maximisation over the constrained parameter set (which contains the old
parameters), Q does not decrease, and log p(x) = Q + H(q) - KL does not decrease either. A
component whose total responsibility is zero does not appear in Q at all; any mu is a
maximiser and it keeps its old one (its pi becomes 0 and it stays empty). Clipping also keeps
every log p(x | c) finite, so a test image with a pixel never seen on in training costs
log(eps) nats instead of -inf. EPS = 1e-4 bounds the per-pixel cost at 9.2 nats.

Data. EM needs one fixed training set: the training intensities are binarized ONCE with a CPU
generator seeded from cfg.seed (`binarize_training_set`), so the training set is the same
bits on every device. The test set is `dataset.test`, binarized once by the data module for
every model, so `test_ll` is an exact baseline beside the VAE/IWAE estimates of log p(x).

Initialisation: pi uniform; component c starts at a distinct random training example x_(c)
(drawn with the same seeded CPU generator, after the binarization draws), Laplace-smoothed:
mu_c = (x_(c) + 1) / 3, the posterior mean of mu under a uniform Beta(1, 1) prior after that
one observation, so every mean is 1/3 or 2/3 and no log mu is infinite. Starting at examples
breaks the symmetry between components at once: on MNIST (K = 50, seed 0) the training
log-likelihood after 31 iterations was -144.16 nats against -144.73 from Bishop's uniform
means in [0.25, 0.75], and after 56 iterations -144.05 against -144.26.

Prior IWAE. With q = p(z) the IWAE estimate is log (1/k) sum_i p(x | z_i), z_i ~ pi. Since z
is discrete, sum_i p(x | z_i) = sum_c n_c p(x | c) with n = the counts of the k draws, and the
counts of k i.i.d. Cat(pi) draws are Mult(k, pi): drawing n ~ Mult(k, pi) per example gives
exactly the same random variable as k draws, at a cost independent of k. The counts are
drawn by the conditional-binomial method, n_c ~ Bin(k - sum_{j<c} n_j, pi_c / sum_{j>=c} pi_j).
By Jensen E[estimate] <= log p(x), and the estimate converges to log p(x) as k grows: the
`prior_iwae_k*` metrics show how many samples a prior proposal needs against the exact value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench import eta
from bench.config import RunConfig
from bench.data import Dataset
from bench.errors import BenchError
from bench.families import FamilyResult
from bench.loop import EVAL_STREAM, TRAIN_STREAM, EpochRecord, make_generator
from bench.metrics.blur import image_rows

EPS = 1e-4  # mu is kept in [EPS, 1 - EPS]
PRIOR_IWAE_KS = (1, 10, 100, 1_000, 10_000, 100_000)  # the prior_iwae_k{k} metrics
N_IMAGES = 16  # images per sample kind
ROWS_PER_CHUNK = 8192  # examples per matmul: bounds the (rows, K) float64 buffers
DTYPE = torch.float64


@dataclass(frozen=True)
class Mixture:
    """Parameters of a mixture of Bernoullis: pi (K,) summing to 1, mu (K, D) in (0, 1)."""

    pi: torch.Tensor
    mu: torch.Tensor

    @property
    def components(self) -> int:
        return int(self.pi.shape[0])


@dataclass(frozen=True)
class Statistics:
    """One pass over data: the exact log-likelihood sum and the E-step's sufficient statistics
    (total responsibility per component (K,), responsibility-weighted sum of x (K, D))."""

    log_likelihood_sum: torch.Tensor  # 0-d, on the device
    counts: torch.Tensor
    weighted_sums: torch.Tensor
    n: int


# ----------------------------------------------------------------------------- the model
def log_px_given_z(x: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """log p(x_n | z = c) for binary x (N, D): (N, K), one matmul in the mixture's dtype."""
    mu = mixture.mu
    log_mu, log_1m_mu = torch.log(mu), torch.log1p(-mu)
    return x.to(mu.dtype) @ (log_mu - log_1m_mu).T + log_1m_mu.sum(dim=1)


def log_joint(x: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """log p(x_n, z = c) = log pi_c + log p(x_n | c): (N, K); -inf for components with pi 0."""
    return log_px_given_z(x, mixture) + torch.log(mixture.pi)


def log_likelihood(x: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """The exact log p(x_n) per example (N,), in chunks of ROWS_PER_CHUNK examples."""
    parts = [torch.logsumexp(log_joint(x[lo : lo + ROWS_PER_CHUNK], mixture), dim=1)
             for lo in range(0, x.shape[0], ROWS_PER_CHUNK)]
    return torch.cat(parts)


def log_posterior(x: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """log p(z = c | x_n) (N, K): the E-step's responsibilities, in log space."""
    joint = log_joint(x, mixture)
    return joint - torch.logsumexp(joint, dim=1, keepdim=True)


def elbo(x: torch.Tensor, mixture: Mixture, q: torch.Tensor) -> torch.Tensor:
    """The bound sum_c q_nc (log p(x_n, c) - log q_nc) per example (N,) for any q (N, K)
    whose rows sum to 1; terms with q_nc = 0 contribute 0. Equals log p(x) iff q = p(z|x)."""
    joint = log_joint(x, mixture)
    q = q.to(joint.dtype)
    terms = torch.where(q > 0, q * (joint - torch.log(q)), torch.zeros_like(joint))
    return terms.sum(dim=1)


# --------------------------------------------------------------------------------- EM
def statistics(x: torch.Tensor, mixture: Mixture) -> Statistics:
    """The E-step over all of x (N, D) in chunks: log p(x) summed, and the responsibilities'
    sufficient statistics. Everything stays on the device (no host synchronisation)."""
    k, d = mixture.mu.shape
    ll_sum = torch.zeros((), dtype=mixture.mu.dtype, device=x.device)
    counts = torch.zeros(k, dtype=mixture.mu.dtype, device=x.device)
    sums = torch.zeros(k, d, dtype=mixture.mu.dtype, device=x.device)
    for lo in range(0, x.shape[0], ROWS_PER_CHUNK):
        xb = x[lo : lo + ROWS_PER_CHUNK].to(mixture.mu.dtype)
        joint = log_joint(xb, mixture)
        log_px = torch.logsumexp(joint, dim=1, keepdim=True)
        resp = torch.exp(joint - log_px)  # exact posterior p(z | x), rows sum to 1
        ll_sum += log_px.sum()
        counts += resp.sum(dim=0)
        sums += resp.T @ xb
    return Statistics(ll_sum, counts, sums, int(x.shape[0]))


def m_step(stats: Statistics, old: Mixture, eps: float = EPS) -> Mixture:
    """The maximiser of the expected complete log-likelihood over mu in [eps, 1 - eps]
    (see the module docstring); a component with zero responsibility keeps its old mu."""
    counts = stats.counts
    used = (counts > 0).unsqueeze(1)
    mu = torch.where(used, stats.weighted_sums / counts.clamp_min(1e-300).unsqueeze(1), old.mu)
    return Mixture(pi=counts / stats.n, mu=mu.clamp(eps, 1.0 - eps))


def em_step(x: torch.Tensor, mixture: Mixture, eps: float = EPS) -> tuple[Mixture, float]:
    """One EM iteration on x: (the new mixture, mean log p(x) under the OLD mixture)."""
    stats = statistics(x, mixture)
    return m_step(stats, mixture, eps), float(stats.log_likelihood_sum) / stats.n


def init_mixture(x: torch.Tensor, components: int, generator: torch.Generator) -> Mixture:
    """Uniform pi; mu_c = (x_(c) + 1) / 3 for `components` distinct random rows x_(c) of the
    binary x (N, D), drawn with `generator` (on x's device, which must be the generator's)."""
    if not 1 <= components <= x.shape[0]:
        raise ValueError(f"need 1 <= components <= {x.shape[0]} examples, got {components}")
    rows = torch.randperm(x.shape[0], generator=generator, device=x.device)[:components]
    pi = torch.full((components,), 1.0 / components, dtype=DTYPE, device=x.device)
    return Mixture(pi=pi, mu=(x[rows].to(DTYPE) + 1.0) / 3.0)


def binarize_training_set(train: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The one fixed training set EM sees: Bernoulli(intensity) per pixel, drawn once."""
    return torch.bernoulli(train.to(generator.device, torch.float32), generator=generator)


# ------------------------------------------------------------------------ prior IWAE
def multinomial_counts(
    pi: torch.Tensor, k: int, n: int, generator: torch.Generator
) -> torch.Tensor:
    """n independent draws of Mult(k, pi): (n, K) counts (float64) summing to k per row, by
    conditional binomials n_c ~ Bin(k - sum_{j<c} n_j, pi_c / sum_{j>=c} pi_j)."""
    p = pi.to(DTYPE)
    tail = torch.flip(torch.cumsum(torch.flip(p, [0]), 0), [0])  # sum_{j>=c} p_j
    # p_c / tail_c is exactly 1 at the last component with mass (x / x == 1 in IEEE), so
    # every draw is used; components after it have tail 0 and get probability 0
    cond = torch.where(tail > 0, p / tail.clamp_min(1e-300), torch.zeros_like(p)).clamp(0, 1)
    remaining = torch.full((n,), float(k), dtype=DTYPE, device=p.device)
    counts = torch.empty(n, p.shape[0], dtype=DTYPE, device=p.device)
    for c in range(p.shape[0]):
        drawn = torch.binomial(remaining, cond[c].expand(n).contiguous(), generator=generator)
        counts[:, c] = drawn
        remaining = remaining - drawn
    return counts


def prior_iwae_estimate(
    x: torch.Tensor,
    mixture: Mixture,
    k: int,
    generator: torch.Generator,
    *,
    log_px_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """The IWAE estimate with q = p(z), log (1/k) sum_{i<=k} p(x_n | z_i), z_i ~ pi, per
    example (N,), drawn as multinomial counts: log sum_c (n_c / k) p(x_n | c). Pass
    `log_px_z` (N, K) to reuse log p(x | c) across several k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if log_px_z is None:
        log_px_z = log_px_given_z(x, mixture)
    counts = multinomial_counts(mixture.pi, k, log_px_z.shape[0], generator)
    return torch.logsumexp(torch.log(counts) + log_px_z, dim=1) - math.log(k)


# ----------------------------------------------------------------------- the family
def run(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: torch.device | str,
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
    checkpointing: object = None,
    progress: eta.ProgressLines | None = None,
) -> FamilyResult:
    """Fit a K = cfg.components mixture by cfg.iterations EM iterations on the once-binarized
    training set, then evaluate exactly on dataset.test. One EpochRecord per iteration, its
    train_bound the exact mean training log p(x) AFTER that iteration's M-step.
    `checkpointing` is accepted and unused: EM runs are short and restart when retried.
    `progress`: where lines with an ETA go during the EM iterations (bench.eta)."""
    device = torch.device(device)
    n_train = int(dataset.train.shape[0])
    if not dataset.binarized:
        raise BenchError(f"model 'mixture' needs binary data: dataset '{dataset.name}' was "
                         "loaded without binarization (likelihood must be 'bernoulli')")
    if cfg.components > n_train:
        raise BenchError(f"key 'components' = {cfg.components} exceeds the {n_train} training "
                         f"examples of '{dataset.name}' (train_size {cfg.train_size}): "
                         "a mixture needs at most one component per example")

    # all training randomness on the CPU: the same training bits and start on every device
    train_generator = make_generator(cfg.seed + TRAIN_STREAM, "cpu")
    x_cpu = binarize_training_set(dataset.train, train_generator)
    mixture = init_mixture(x_cpu, cfg.components, train_generator)
    mixture = Mixture(mixture.pi.to(device), mixture.mu.to(device))
    x_train = x_cpu.to(device, DTYPE)
    del x_cpu

    curves: list[EpochRecord] = []
    status, diverged_epoch = "finished", None
    start = time.perf_counter()
    stats = statistics(x_train, mixture)  # E-step at the initial parameters
    meter = eta.meter(progress, f"EM ({cfg.components} components)", cfg.iterations, "iterations")
    for iteration in range(1, cfg.iterations + 1):
        iteration_start = time.perf_counter()
        mixture = m_step(stats, mixture)
        stats = statistics(x_train, mixture)  # E-step: log p(x) after this M-step
        train_ll = float(stats.log_likelihood_sum) / n_train  # the one host sync
        now = time.perf_counter()
        # EM has no learning rate: lr is NaN; train_bound is exact, not a bound
        record = EpochRecord(epoch=iteration, lr=math.nan, train_bound=train_ll,
                             samples_per_s=n_train / (now - iteration_start),
                             wall_seconds=now - start)
        curves.append(record)
        if on_epoch is not None:
            on_epoch(record, cfg.iterations)
        meter.update(iteration)
        if not math.isfinite(train_ll):
            status, diverged_epoch = "diverged", iteration
            break
    meter.finish()
    train_seconds = time.perf_counter() - start
    if status != "finished":
        return FamilyResult(status, curves, train_seconds, diverged_epoch=diverged_epoch)

    eval_start = time.perf_counter()
    eval_generator = make_generator(cfg.seed + EVAL_STREAM, device)
    x_test = dataset.test.to(device, DTYPE)
    metrics = {"test_ll": float(log_likelihood(x_test, mixture).mean()),
               "train_ll": curves[-1].train_bound}
    log_px_z = torch.cat([log_px_given_z(x_test[lo : lo + ROWS_PER_CHUNK], mixture)
                          for lo in range(0, x_test.shape[0], ROWS_PER_CHUNK)])
    for k in PRIOR_IWAE_KS:
        estimate = prior_iwae_estimate(x_test, mixture, k, eval_generator, log_px_z=log_px_z)
        metrics[f"prior_iwae_k{k}"] = float(estimate.mean())
    samples = sample_records(mixture, dataset, eval_generator)
    metrics["eval_seconds"] = time.perf_counter() - eval_start
    return FamilyResult("finished", curves, train_seconds, family_metrics=metrics,
                        samples=samples)


def sample_records(mixture: Mixture, dataset: Dataset, generator: torch.Generator) -> list[dict]:
    """Report images: the N_IMAGES components with the largest pi (their means, by decreasing
    pi) and N_IMAGES binary samples x ~ p(x); an empty list without an image shape."""
    if dataset.image_shape is None:
        return []
    order = torch.argsort(mixture.pi, descending=True, stable=True)[:N_IMAGES]
    z = torch.multinomial(mixture.pi.float(), N_IMAGES, replacement=True, generator=generator)
    draws = torch.bernoulli(mixture.mu[z], generator=generator)
    kinds = {"component means": mixture.mu[order], "samples": draws}
    return image_rows(kinds, dataset.image_shape)
