"""Normalizing-flow posteriors: q(z_K | h) from a Gaussian q0(z_0 | h) pushed through K steps.

    z_0 = mu(h) + sigma(h) * eps,   z_k = f_k(z_{k-1}),
    log q(z_K | h) = log q0(z_0 | h) - sum_k log |det df_k / dz_{k-1}|

Three families, each registered in `bench.components.POSTERIORS`:

    planar  f(z) = z + u_hat tanh(w^T z + b)                 (Rezende & Mohamed 2015, 4.1, A.1)
    radial  f(z) = z + beta h(alpha, r) (z - z_ref)          (Rezende & Mohamed 2015, 4.1)
    iaf     z = sigma z + (1 - sigma) m,  (m, s) = MADE(z, c) (Kingma et al. 2016, eq. 10-14)

Amortisation: planar and radial read every step's parameters (u, w, b; z_ref, alpha, beta)
per example from one linear head on the trunk features of the Gaussian q0, and broadcast them
over the k samples. IAF's MADE weights are global (as in the paper); the per-example part is
the context c, which enters each step's first hidden layer.

Every step is also available as a plain function of a vector (`steps_for`, `planar_step`,
`radial_step`, `IAFStep`) so tests can compare log-determinants with autograd Jacobians.
There is no closed-form KL or posterior mean: `PosteriorSample.kl_standard_normal` is None
(objectives fall back to the Monte Carlo KL) and `mean` is the sample z_K itself (the
evaluator averages it over the k samples). Imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.posteriors import LOG_2PI, ConditionalGaussian, PosteriorSample, draw_eps

Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _log_positive(x: torch.Tensor) -> torch.Tensor:
    """log(x + tiny) for x >= 0: tiny = the smallest normal float of x's dtype (1e-38 in
    float32, 2e-308 in float64). It changes no representable nonzero x beyond rounding and
    keeps the log finite should x underflow to 0 (a determinant at the edge of invertibility)."""
    return torch.log(x + torch.finfo(x.dtype).tiny)


# ---------------------------------------------------------------------- planar
def planar_reparam(
    u: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u_hat, w_eff, 1 + w_eff^T u_hat) from raw (u, w), all (..., d) except the last (...).

    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(a) = -1 + softplus(a) (Rezende &
    Mohamed 2015, A.1), so w^T u_hat = m(w^T u) > -1 whatever the raw values. The last output
    is that quantity plus one, taken as softplus(w^T u) directly instead of via the (possibly
    cancelling) dot product. A w with ||w||^2 below the dtype's smallest normal float would
    make w / ||w||^2 overflow; such a step is taken as w = 0 (a translation by u, det 1)."""
    a = (w * u).sum(-1, keepdim=True)
    norm2 = (w * w).sum(-1, keepdim=True)
    ok = norm2 > torch.finfo(w.dtype).tiny
    safe_norm2 = torch.where(ok, norm2, torch.ones_like(norm2))
    correction = torch.where(ok, (F.softplus(a) - 1.0 - a) / safe_norm2, torch.zeros_like(a))
    w_eff = torch.where(ok, w, torch.zeros_like(w))
    u_hat = u + correction * w_eff
    one_plus_wu = torch.where(ok, F.softplus(a), torch.ones_like(a)).squeeze(-1)
    return u_hat, w_eff, one_plus_wu


def planar_step(
    z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One planar step on z (..., d) with raw u, w (..., d) and b (..., 1) broadcasting
    against it: (f(z), log |det J|) with f(z) = z + u_hat tanh(w^T z + b).

    det J = 1 + u_hat^T psi, psi = (1 - tanh^2) w, i.e. 1 + (1 - t^2) w^T u_hat; written as
    t^2 + (1 - t^2) softplus(w^T u), a sum of non-negative terms, it is positive in floating
    point too (no cancellation, no sign flip, whatever the raw parameters)."""
    u_hat, w_eff, one_plus_wu = planar_reparam(u, w)
    t = torch.tanh((w_eff * z).sum(-1, keepdim=True) + b)  # (..., 1)
    z_new = z + u_hat * t
    t2 = (t * t).squeeze(-1)
    log_det = _log_positive(t2 + (1.0 - t2) * one_plus_wu)
    return z_new, log_det


# ---------------------------------------------------------------------- radial
def radial_params(
    alpha_raw: torch.Tensor, beta_raw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) = (softplus(alpha_raw), -alpha + softplus(beta_raw)): alpha > 0 and
    beta >= -alpha for any raw values, the radial flow's invertibility condition."""
    alpha = F.softplus(alpha_raw)
    return alpha, F.softplus(beta_raw) - alpha


def radial_step(
    z: torch.Tensor, z_ref: torch.Tensor, alpha_raw: torch.Tensor, beta_raw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One radial step on z (..., d) with reference point z_ref (..., d) and raw alpha, beta
    (..., 1): (f(z), log |det J|), f(z) = z + beta h (z - z_ref), h = 1 / (alpha + r).

    With s = alpha + beta = softplus(beta_raw) >= 0 and r = ||z - z_ref||:
        1 + beta h              = (s + r) / (alpha + r)
        1 + beta h + beta h' r  = 1 + beta alpha / (alpha + r)^2
                                = (r^2 + alpha (2 r + s)) / (alpha + r)^2
    so log|det J| = (d - 1) log(1 + beta h) + log(1 + beta h + beta h' r) is evaluated from
    sums of non-negative terms (no cancellation as beta approaches -alpha)."""
    alpha = F.softplus(alpha_raw)
    s = F.softplus(beta_raw)
    diff = z - z_ref
    r = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
    z_new = z_ref + diff * ((s + r) / (alpha + r))  # = z + beta h (z - z_ref)
    d = z.shape[-1]
    log_ar = _log_positive(alpha + r)
    log_det = (d - 1) * (_log_positive(s + r) - log_ar) + (
        _log_positive(r * r + alpha * (2.0 * r + s)) - 2.0 * log_ar
    )
    return z_new, log_det.squeeze(-1)


# ---------------------------------------------------------------------- IAF
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """One IAF step: a MADE (Germain et al. 2015) maps (z, c) to (m, s), and
    z' = sigma z + (1 - sigma) m, sigma = sigmoid(s + forget_bias), log|det| = sum log sigma
    (Kingma et al. 2016, the numerically stable "LSTM-type" update, eq. 14 and sec. 4).

    `order` is the autoregressive order: order[p] is the dimension at position p; (m_i, s_i)
    depend on z only through the dimensions before i in that order, so the Jacobian is
    triangular after permuting rows and columns by `order` (lower triangular), with diagonal
    sigma. Hidden unit degrees run 0..d-1 cyclically; the degree-0 units see the context only,
    which lets the first dimension's (m, s) depend on c. The context enters the first hidden
    layer unmasked, as a precomputed term `context_term` (..., hidden[0])."""

    def __init__(
        self, n_latent: int, hidden: tuple[int, ...], order: torch.Tensor, forget_bias: float
    ):
        super().__init__()
        if not hidden:
            raise ValueError("an IAF step needs at least one hidden layer")
        d = n_latent
        self.forget_bias = forget_bias
        self.register_buffer("order", order.clone(), persistent=False)
        degree_in = torch.empty(d, dtype=torch.long)
        degree_in[order] = torch.arange(1, d + 1)  # dimension order[p] has degree p + 1
        layers: list[nn.Module] = []
        prev_degree, prev_size = degree_in, d
        for size in hidden:
            degree = torch.arange(size) % d  # 0..d-1: unit sees inputs of degree <= its own
            layers.append(MaskedLinear(prev_size, size, degree[:, None] >= prev_degree[None, :]))
            prev_degree, prev_size = degree, size
        self.hidden_layers = nn.ModuleList(layers)
        out_mask = degree_in[:, None] > prev_degree[None, :]  # strictly earlier inputs only
        self.out = MaskedLinear(prev_size, 2 * d, out_mask.repeat(2, 1))  # [m | s]

    def forward(
        self, z: torch.Tensor, context_term: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.elu(self.hidden_layers[0](z) + context_term)
        for layer in self.hidden_layers[1:]:
            x = F.elu(layer(x))
        m, s = self.out(x).chunk(2, dim=-1)
        gate = s + self.forget_bias
        sigma = torch.sigmoid(gate)
        z_new = sigma * z + torch.sigmoid(-gate) * m  # 1 - sigma without cancellation
        return z_new, F.logsigmoid(gate).sum(-1)


# ---------------------------------------------------------------------- posteriors
class FlowPosterior(nn.Module):
    """Base class: Gaussian q0 (the GaussianPosterior's trunk and heads) followed by K steps.

    Subclasses define `step_params(features)` (per step, a tuple of tensors (..., n) computed
    from the trunk features (..., width)) and `step(i, z, *params) -> (z', log|det J|)`."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_latent: int, steps: int):
        super().__init__()
        if steps < 1:
            raise ValueError(f"a flow posterior needs steps >= 1, got {steps}")
        self.net = ConditionalGaussian(n_in, hidden, n_latent)
        self.n_latent = n_latent
        self.steps = steps
        self.width = hidden[-1] if hidden else n_in

    def step_params(self, features: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def step(self, i: int, z: torch.Tensor, *params: torch.Tensor):
        raise NotImplementedError

    def forward(
        self, h: torch.Tensor, k: int | None, generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> PosteriorSample:
        """Sample from q(z_K|h). h is (B, n_in) with k samples drawn per row, or already
        (k, B, n_in) (one sample per row, k=None) when this layer sits on top of another.
        `eps`, if given, is q0's standard normal noise, drawn beforehand."""
        mean, logvar, features = self.net.params(h)
        if eps is None:
            eps = draw_eps(mean, k, generator)
        z = mean + torch.exp(0.5 * logvar) * eps  # z_0, (k, B, d)
        log_q = -0.5 * (eps**2 + logvar + LOG_2PI).sum(-1)  # log q0(z_0 | h), via eps
        params = self.step_params(features)  # per example; broadcast over the k samples
        for i, p in enumerate(params):
            if k is not None:
                p = tuple(t.unsqueeze(0) for t in p)
            z, log_det = self.step(i, z, *p)
            log_q = log_q - log_det
        return PosteriorSample(z=z, log_q=log_q, mean=z, kl_standard_normal=None)

    def base_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q0(z_0 | h)."""
        mean, logvar, _ = self.net.params(h)
        return mean, logvar

    def steps_for(self, h: torch.Tensor) -> list[Step]:
        """The K steps for one example h (n_in,), each a function z (d,) -> (f(z), log|det|)
        with that example's parameters bound (for checking log-dets against autograd)."""
        _, _, features = self.net.params(h)
        return [partial(self._bound_step, i, p) for i, p in enumerate(self.step_params(features))]

    def _bound_step(self, i: int, params: tuple[torch.Tensor, ...], z: torch.Tensor):
        return self.step(i, z, *params)


class PlanarPosterior(FlowPosterior):
    """K planar steps; per step one linear head output [u (d) | w (d) | b (1)] per example."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_latent: int, steps: int):
        super().__init__(n_in, hidden, n_latent, steps)
        self.flow_head = nn.Linear(self.width, steps * (2 * n_latent + 1))

    def step_params(self, features: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        d = self.n_latent
        raw = self.flow_head(features).unflatten(-1, (self.steps, 2 * d + 1))
        return [tuple(raw[..., i, :].split([d, d, 1], dim=-1)) for i in range(self.steps)]

    def step(self, i, z, u, w, b):
        return planar_step(z, u, w, b)


class RadialPosterior(FlowPosterior):
    """K radial steps; per step one linear head output [z_ref (d) | alpha_raw | beta_raw]."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_latent: int, steps: int):
        super().__init__(n_in, hidden, n_latent, steps)
        self.flow_head = nn.Linear(self.width, steps * (n_latent + 2))

    def step_params(self, features: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        d = self.n_latent
        raw = self.flow_head(features).unflatten(-1, (self.steps, d + 2))
        return [tuple(raw[..., i, :].split([d, 1, 1], dim=-1)) for i in range(self.steps)]

    def step(self, i, z, z_ref, alpha_raw, beta_raw):
        return radial_step(z, z_ref, alpha_raw, beta_raw)


class IAFPosterior(FlowPosterior):
    """K IAF steps, each a MADE with `made_layers` hidden layers of max(2 d, 32) ELU units.

    The context c is the Gaussian trunk's features (width hidden[-1], or n_in without hidden
    layers): the encoder's last hidden layer, which the paper's encoder also emits as h. Each
    step adds its own linear projection of c to its first hidden layer; all K projections are
    one matmul per example (`context_head`), broadcast over the k samples. Step i uses the
    order 0..d-1 for even i and its reverse for odd i. forget_bias = 1 starts every step at
    sigma = sigmoid(1) ~ 0.73, "sufficiently positive" as Kingma et al. (2016) advise."""

    def __init__(
        self,
        n_in: int,
        hidden: tuple[int, ...],
        n_latent: int,
        steps: int,
        made_layers: int = 2,
        forget_bias: float = 1.0,
    ):
        super().__init__(n_in, hidden, n_latent, steps)
        self.made_hidden = max(2 * n_latent, 32)
        made = (self.made_hidden,) * made_layers
        forward_order = torch.arange(n_latent)
        self.made_steps = nn.ModuleList(
            [
                IAFStep(
                    n_latent,
                    made,
                    forward_order if i % 2 == 0 else forward_order.flip(0),
                    forget_bias,
                )
                for i in range(steps)
            ]
        )
        self.context_head = nn.Linear(self.width, steps * self.made_hidden, bias=False)

    def step_params(self, features: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        terms = self.context_head(features).unflatten(-1, (self.steps, self.made_hidden))
        return [(terms[..., i, :],) for i in range(self.steps)]

    def step(self, i, z, context_term):
        return self.made_steps[i](z, context_term)
