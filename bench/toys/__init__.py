"""Small experiments with known answers, where a claim of the lecture can be seen and tested.

Each toy also runs as a suite run (`dataset = "gmm"`, `"bimodal"` or `"snr_gaussian"`):
`run_toy(cfg)` maps the config onto the toy (k = particles or samples per step,
kl_direction = reverse / forward, iterations or params, seed) and returns its metrics for
the results store.
"""

from __future__ import annotations

import time

from bench.config import RunConfig


def run_toy(cfg: RunConfig) -> dict:
    """Train the toy `cfg.dataset` and return its metrics (plus train_seconds)."""
    from bench.toys import bimodal, gmm, snr_gaussian

    start = time.perf_counter()
    if cfg.dataset == "gmm":
        result = gmm.train(cfg.kl_direction, cfg.k, iterations=cfg.iterations, seed=cfg.seed)
        metrics = {"mixture_weight_error": result.mixture_weight_error,
                   "posterior_kl": result.posterior_kl}
    elif cfg.dataset == "bimodal":
        fit = bimodal.fit(cfg.kl_direction, steps=cfg.iterations, k=cfg.k, seed=cfg.seed)
        metrics = {"q_mean": fit.mean, "q_std": fit.std,
                   "mass_left": fit.mass_left, "mass_right": fit.mass_right,
                   "mass_dominant_mode": fit.mass_on_dominant_mode,
                   "kl_reverse": fit.kl_reverse, "kl_forward": fit.kl_forward}
    elif cfg.dataset == "snr_gaussian":
        metrics = snr_gaussian.measure(
            cfg.objective, cfg.k, draws=cfg.param("draws"), seed=cfg.seed,
            points=cfg.param("points"), perturbation=cfg.param("perturbation"),
            m=dict(cfg.params).get("m", 1), beta=cfg.beta)
    else:
        raise ValueError(f"no toy named {cfg.dataset!r}")
    return {**metrics, "train_seconds": time.perf_counter() - start}
