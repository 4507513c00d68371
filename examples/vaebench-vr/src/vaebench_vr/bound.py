"""The Renyi variational bound of Li & Turner 2016 ("Renyi Divergence Variational
Inference"), as a function of the k importance log-weights log w_i = log p(x, z_i) -
log q(z_i|x), z_i ~ q(z|x):

    L_alpha = 1 / (1 - alpha) * log (1/k) sum_i w_i^(1 - alpha)

Its gradient weighs each sample's grad log w_i by softmax((1 - alpha) log w)_i. alpha = 0 is
the IWAE bound (the same arithmetic: (1 - 0) * log w is log w exactly); alpha -> 1 is the
mean of log w (the ELBO), which alpha = 1 computes; alpha = -inf is VR-max, max_i log w_i,
whose gradient flows through the largest weight only.
"""

from __future__ import annotations

import math

import torch


def vr_bound(log_w: torch.Tensor, alpha: float) -> torch.Tensor:
    """(B,) the VR-alpha bound of (k, B) log-weights."""
    if alpha == 1.0:
        return log_w.mean(0)
    if alpha == -math.inf:
        return log_w.max(0).values
    scaled = (1.0 - alpha) * log_w
    return (torch.logsumexp(scaled, dim=0) - math.log(log_w.shape[0])) / (1.0 - alpha)
