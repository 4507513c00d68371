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
from dataclasses import asdict, dataclass

import torch

from bench.models.lvm import LatentVariableModel

ACTIVE_UNIT_THRESHOLD = 0.01
# samples x examples evaluated in one forward pass; bounds eval memory to ~100 MB for MNIST
DEFAULT_ROWS_PER_CHUNK = 32768


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


@torch.no_grad()
def evaluate(
    model: LatentVariableModel,
    x: torch.Tensor,
    k_eval: int,
    *,
    generator: torch.Generator | None = None,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
) -> TestMetrics:
    """Evaluate `model` on the test examples `x` (N, D) with k_eval importance samples each."""
    if k_eval < 1:
        raise ValueError(f"k_eval must be >= 1, got {k_eval}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    n = x.shape[0]
    batch = max(1, min(n, rows_per_chunk // min(k_eval, rows_per_chunk)))
    k_chunk = max(1, rows_per_chunk // batch)

    log_px = torch.empty(n, dtype=torch.float64, device=x.device)
    log_ess = torch.empty(n, dtype=torch.float64, device=x.device)
    distortion = torch.empty(n, dtype=torch.float64, device=x.device)
    rate = torch.empty(n, dtype=torch.float64, device=x.device)
    posterior_means: list[torch.Tensor] = []
    for lo in range(0, n, batch):
        xb = x[lo : lo + batch]
        lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        lse2 = lse.clone()  # log sum w^2, for the effective sample size
        sum_log_px_z = torch.zeros_like(lse)
        sum_kl_mc = torch.zeros_like(lse)
        kl_analytic = None
        sum_means: list[torch.Tensor] | None = None
        done = 0
        while done < k_eval:
            k = min(k_chunk, k_eval - done)
            s = model(xb, k, generator=generator)
            log_w = s.log_weights.double()  # (k, B)
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0))
            sum_log_px_z += s.log_px_given_z.double().sum(0)
            sum_kl_mc += (s.log_qz - s.log_pz).double().sum(0)
            kl_analytic = s.kl_analytic
            chunk_means = [m.double().sum(0) * (k / m.shape[0]) for m in s.z_means]
            sum_means = chunk_means if sum_means is None else [
                a + b for a, b in zip(sum_means, chunk_means, strict=True)
            ]
            done += k
        rows = slice(lo, lo + xb.shape[0])
        log_px[rows] = lse - math.log(k_eval)
        log_ess[rows] = 2 * lse - lse2  # ESS = (sum w)^2 / sum w^2
        distortion[rows] = -sum_log_px_z / k_eval
        rate[rows] = kl_analytic.double() if kl_analytic is not None else sum_kl_mc / k_eval
        posterior_means.append(torch.cat([m / k_eval for m in sum_means], dim=-1))

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
