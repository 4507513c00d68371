"""Test-set evaluation: the IWAE log-likelihood estimate and what comes out of the same samples.

For each test example we draw k_eval samples from q(z|x) in chunks (so memory stays bounded
whatever k_eval is) and combine the chunks' log-sum-exp in float64:

    log p(x) ~= log (1/k) sum_i p(x, z_i) / q(z_i | x)            (Burda et al. 2015, eq. 14)

The same samples give the ELBO, rate (KL) and distortion (-E log p(x|z)), the effective
sample size of the normalised weights, and the active units of Burda et al. (2015, sec. 5.2):
unit u is active if Var_x E_q[z_u | x] > 0.01.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from bench import eta
from bench.compiler import compile_fresh
from bench.eta import ProgressLines
from bench.models.lvm import LatentVariableModel, ModelSample

ACTIVE_UNIT_THRESHOLD = 0.01
#: samples x examples whose noise is drawn at once: this fixes which random numbers each
#: test example gets (the estimate's identity), so it never changes with the speed tuning
DEFAULT_ROWS_PER_CHUNK = 32768
#: samples x examples per forward pass: a chunk's drawn noise goes through the model in
#: slices this size (whenever k_eval fills one), so each layer's output (2048 x 784 floats,
#: 6.4 MB, for the MNIST decoder) stays in cache and is reused by the allocator. Measured
#: on 2 CPU cores, MNIST-sized model, k_eval 1000, in a fresh process: 8.2 ms per example
#: per 1000 samples with one 32768-row pass, 4.0-4.7 ms with 2048-row slices (1024: 5.0;
#: 4096: 7.6 until glibc's allocator raises its mmap threshold, 4.5 after); compiled
#: (`compiled_passes`), 3.1-3.3 ms at 2048. The estimate is the same to float rounding
#: (summed in another order), the noise being the same; the last bits depend on this size,
#: so changing it bumps bench.config.PROTOCOL (3 brought in these slices).
ROWS_PER_PASS = 2048


@dataclass(frozen=True)
class TestMetrics:
    test_ll: float  # IWAE estimate of log p(x) at k_eval, mean over test examples, nats
    test_elbo: float  # ELBO = -(distortion + rate), nats
    rate: float  # mean KL(q(z|x) || p(z)), nats (closed form where it exists)
    distortion: float  # mean -E_q log p(x|z), nats
    ess: float  # mean effective sample size of the normalised weights / k_eval, in (0, 1]
    active_units: int
    active_units_by_layer: list[int]
    k_eval: int
    n_test: int
    eval_seconds: float
    eval_samples_per_s: float  # examples x k_eval per second

    def to_dict(self) -> dict:
        return asdict(self)


class PassSums(NamedTuple):
    """What one slice of k samples of a batch B of examples adds to the estimates, (B,) each
    in float64: log sum w, log sum w^2, sum log p(x|z), sum of log q - log p (the Monte Carlo
    KL), the closed-form KL (None without one) and per layer the sum over the k samples of
    E_q[z | parent] (B, d_l)."""

    lse: torch.Tensor
    lse2: torch.Tensor
    log_px_z: torch.Tensor
    kl_mc: torch.Tensor
    kl_analytic: torch.Tensor | None
    means: list[torch.Tensor]


def _pass_sums(model: LatentVariableModel, xb: torch.Tensor, noise: list[torch.Tensor]
               ) -> PassSums:
    s = model(xb, noise[0].shape[0], noise=noise)
    log_w = s.log_weights.double()  # (k, B)
    draws = log_w.shape[0]
    return PassSums(
        lse=torch.logsumexp(log_w, 0),
        lse2=torch.logsumexp(2 * log_w, 0),
        log_px_z=s.log_px_given_z.double().sum(0),
        kl_mc=(s.log_qz - s.log_pz).double().sum(0),
        kl_analytic=s.kl_analytic,
        means=[m.double().sum(0) * (draws / m.shape[0]) for m in s.z_means],
    )


@torch.no_grad()
def test_bounds(model: LatentVariableModel, x: torch.Tensor, k: int,
                objective: Callable[[ModelSample], torch.Tensor] | None, *,
                generator: torch.Generator | None = None,
                rows_per_pass: int = ROWS_PER_PASS) -> dict[str, float]:
    """The run's own bound (`objective`'s value; None: not measured) and the IWAE bound, both
    at the training k, as means over the test examples x, from the same k samples per example
    (noise drawn in slices of about rows_per_pass samples x examples): {"test_bound",
    "test_iwae_k"}. Runs of different objectives and gradient estimators compare on the
    second; the first is what the run maximised, measured on held-out data."""
    batch = max(1, rows_per_pass // k)
    own = torch.zeros((), dtype=torch.float64, device=x.device)
    iwae = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo in range(0, x.shape[0], batch):
        sample = model(x[lo : lo + batch], k, generator=generator).valued()
        log_w = sample.log_weights.double()  # (k, B)
        iwae += (torch.logsumexp(log_w, 0) - math.log(k)).sum()
        if objective is not None:
            own += objective(sample).double().sum()
    out = {"test_iwae_k": float(iwae) / x.shape[0]}
    if objective is not None:
        out["test_bound"] = float(own) / x.shape[0]
    return out


PassFn = Callable[[LatentVariableModel, torch.Tensor, list[torch.Tensor]], PassSums]


def compiled_passes() -> PassFn:
    """The estimate's slice function torch.compile'd, for `evaluate(passes=...)`: one graph
    per slice shape (static shapes: a smaller last slice or batch is one more), compiled on
    first use. Make one per run; reuse it only to time repeated estimates."""
    return compile_fresh(_pass_sums, {"dynamic": False})


@torch.no_grad()
def evaluate(
    model: LatentVariableModel,
    x: torch.Tensor,
    k_eval: int,
    *,
    generator: torch.Generator | None = None,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
    rows_per_pass: int = ROWS_PER_PASS,
    passes: PassFn | None = None,
    progress: ProgressLines | None = None,
) -> TestMetrics:
    """Evaluate `model` on the test examples `x` (N, D) with k_eval importance samples each.
    The noise is drawn chunk by chunk (`rows_per_chunk` samples x examples, which fixes the
    estimate) and goes through the model in slices of `rows_per_pass` (the speed depends
    on it, and the estimate's last bits: the order of the sum), each by `passes` (default:
    eagerly; `compiled_passes()`: one torch.compile'd graph per slice, the same noise, the
    estimate equal to float rounding). `progress`: where lines with an ETA go while it runs
    (bench.eta: none for an estimate of a few seconds)."""
    if k_eval < 1:
        raise ValueError(f"k_eval must be >= 1, got {k_eval}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    n = x.shape[0]
    batch = max(1, min(n, rows_per_chunk // min(k_eval, rows_per_chunk)))
    k_chunk = max(1, rows_per_chunk // batch)
    sums_of = _pass_sums if passes is None else passes

    log_px = torch.empty(n, dtype=torch.float64, device=x.device)
    log_ess = torch.empty(n, dtype=torch.float64, device=x.device)
    distortion = torch.empty(n, dtype=torch.float64, device=x.device)
    rate = torch.empty(n, dtype=torch.float64, device=x.device)
    posterior_means: list[torch.Tensor] = []
    meter = eta.meter(progress, f"eval test_ll (k_eval {k_eval:,})", n, "examples")
    for lo in range(0, n, batch):
        xb = x[lo : lo + batch]
        lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        lse2 = lse.clone()  # log sum w^2, for the effective sample size
        sum_log_px_z = torch.zeros_like(lse)
        sum_kl_mc = torch.zeros_like(lse)
        kl_analytic = None
        sum_means: list[torch.Tensor] | None = None
        done = 0
        k_pass = max(1, rows_per_pass // xb.shape[0])
        while done < k_eval:
            k = min(k_chunk, k_eval - done)
            noise = model.draw_noise(xb.shape[0], k, generator, x.device)  # forward's draws
            for first in range(0, k, k_pass):
                sums = sums_of(model, xb, [layer[first : first + k_pass] for layer in noise])
                lse = torch.logaddexp(lse, sums.lse)
                lse2 = torch.logaddexp(lse2, sums.lse2)
                sum_log_px_z += sums.log_px_z
                sum_kl_mc += sums.kl_mc
                kl_analytic = sums.kl_analytic
                sum_means = sums.means if sum_means is None else [
                    a + b for a, b in zip(sum_means, sums.means, strict=True)
                ]
            done += k
        rows = slice(lo, lo + xb.shape[0])
        log_px[rows] = lse - math.log(k_eval)
        log_ess[rows] = 2 * lse - lse2  # ESS = (sum w)^2 / sum w^2
        distortion[rows] = -sum_log_px_z / k_eval
        rate[rows] = kl_analytic.double() if kl_analytic is not None else sum_kl_mc / k_eval
        posterior_means.append(torch.cat([m / k_eval for m in sum_means], dim=-1))
        meter.update(lo + xb.shape[0])
    meter.finish()

    means = torch.cat(posterior_means)  # (N, sum of latent sizes): E_q[z | x]
    active = (means.var(dim=0) > ACTIVE_UNIT_THRESHOLD).cpu()
    by_layer = [int(part.sum()) for part in torch.split(active, list(model.latent))]
    seconds = time.perf_counter() - start
    model.train(was_training)
    return TestMetrics(
        test_ll=float(log_px.mean()),
        test_elbo=float(-(distortion + rate).mean()),
        rate=float(rate.mean()),
        distortion=float(distortion.mean()),
        ess=float((log_ess.exp() / k_eval).mean()),
        active_units=sum(by_layer),
        active_units_by_layer=by_layer,
        k_eval=k_eval,
        n_test=n,
        eval_seconds=seconds,
        eval_samples_per_s=n * k_eval / seconds,
    )
