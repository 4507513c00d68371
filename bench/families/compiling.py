"""When and how a family's training step and the test-set estimate run torch.compile'd.

`compile` = "auto" | "on" | "off" is a runner option (`--compile`), never part of a run's
identity: a compiled run follows the eager run's random stream (its noise is drawn
beforehand, in the eager order) and agrees with it within float tolerance. Families that
compile their step (bench.families.registry: `compiles`) ask `should_compile`; the estimate
asks `should_compile_eval`; how they compile is bench.compiler's.
"""

from __future__ import annotations

import math

import torch

from bench.config import RunConfig
from bench.errors import BenchError

#: compile = "auto" compiles a CPU run with at least this many optimiser steps (and every
#: CUDA run). Measured on 2 CPU cores (`make microbench`, the IWAE 1-layer model at MNIST
#: size): compiling costs 5-13 s per shape cold (about 2 s from inductor's on-disk cache;
#: an epoch's smaller last minibatch is a second shape) and the compiled step is 1.3-1.7x
#: the eager one, saving 0.5-1 ms per step at batch 20-100, k = 1; so one or two shapes
#: (5-26 s) pay from 5,000-52,000 steps, and 50,000 covers all but the slowest compile.
COMPILE_MIN_STEPS = 50_000
#: compile = "auto" compiles a CPU run's test-set estimate from this many test examples x
#: k_eval samples (and every CUDA run's). Measured on 2 CPU cores, the MNIST model, eager
#: and compiled side by side: 4.3-4.6 against 3.1-3.3 us per sample at k_eval 1000 (`make
#: microbench`), 6.2 against 3.9 at k_eval 5000 (1 thread: 8.9 against 6.5), so compiling
#: saves 1.0-2.4 us per sample; its graphs (two to four, one per slice shape) cost 15-30 s
#: cold, which pays from 0.6-3 x 10^7 samples: the paper's 10,000 x 5000 compiles, the
#: cpu budget's 1000 x 1000 does not.
EVAL_COMPILE_MIN_SAMPLES = 10_000_000
COMPILE_MODES = ("auto", "on", "off")


def _check_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise BenchError(f"unknown compile mode '{mode}' (known: {', '.join(COMPILE_MODES)})")


def should_compile(cfg: RunConfig, n_train: int, device: torch.device | str,
                   mode: str) -> bool:
    """Whether a trainer compiles its step under compile `mode` (auto, on, off): auto on CUDA,
    and on a CPU from COMPILE_MIN_STEPS optimiser steps. Controlled capacity keeps Python
    state per step (its C), so it always runs eagerly and refuses "on"."""
    _check_mode(mode)
    if mode == "off":
        return False
    if cfg.capacity_max > 0:
        if mode == "on":
            raise BenchError("compile 'on' does not support controlled capacity "
                             "(capacity_max > 0): its target C changes every step")
        return False
    if mode == "on" or torch.device(device).type == "cuda":
        return True
    return len(cfg.epoch_lrs()) * math.ceil(n_train / cfg.batch_size) >= COMPILE_MIN_STEPS


def should_compile_eval(samples: int, device: torch.device | str, mode: str) -> bool:
    """Whether the test-set estimate of `samples` test examples x k_eval runs compiled
    (bench.metrics.likelihood.evaluate) under compile `mode`: on CUDA under auto; on a CPU
    from EVAL_COMPILE_MIN_SAMPLES (and always under "on")."""
    _check_mode(mode)
    if mode != "auto":
        return mode == "on"
    return torch.device(device).type == "cuda" or samples >= EVAL_COMPILE_MIN_SAMPLES
