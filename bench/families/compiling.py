"""When and how a family's training step and the test-set estimate run torch.compile'd.

`compile` = "auto" | "on" | "off" is a runner option (`--compile`), never part of a run's
identity: a compiled run follows the eager run's random stream (its noise is drawn
beforehand, in the eager order) and agrees with it within float tolerance. Families that
compile their step (bench.families.registry: `compiles`) ask `should_compile`; the estimate
asks `should_compile_eval`; both compile with `compile_options`.
"""

from __future__ import annotations

import math

import torch

from bench.config import RunConfig
from bench.errors import BenchError

#: compile = "auto" compiles a CPU run with at least this many optimiser steps (and every
#: CUDA run). Measured on 2 CPU cores (`make microbench`, the IWAE 1-layer model at MNIST
#: size): compiling costs 5-13 s per shape cold (about 2 s from inductor's on-disk cache;
#: an epoch's smaller last minibatch is a second shape) and the compiled step is 1.23-1.58x
#: the eager one, saving 0.5-0.8 ms per step at batch 20-100, k = 1; so it pays from
#: roughly 15,000-50,000 steps, and surely from 50,000.
COMPILE_MIN_STEPS = 50_000
COMPILE_MODES = ("auto", "on", "off")


def should_compile(cfg: RunConfig, n_train: int, device: torch.device | str,
                   mode: str) -> bool:
    """Whether a trainer compiles its step under compile `mode` (auto, on, off): auto on CUDA,
    and on a CPU from COMPILE_MIN_STEPS optimiser steps. Controlled capacity keeps Python
    state per step (its C), so it always runs eagerly and refuses "on"."""
    if mode not in COMPILE_MODES:
        raise BenchError(f"unknown compile mode '{mode}' (known: {', '.join(COMPILE_MODES)})")
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


def should_compile_eval(device: torch.device | str, mode: str) -> bool:
    """Whether the test-set estimate runs compiled (bench.metrics.likelihood.evaluate) under
    compile `mode`: on CUDA under auto; on a CPU only under "on", since it measured only
    1.0-1.3x the eager estimate there (1.5-1.8x its matmul floor against 1.8-2.5x, `make
    microbench`), which repays compiling (5-13 s per graph, up to four graphs) only past
    roughly 10^8 samples x examples."""
    if mode not in COMPILE_MODES:
        raise BenchError(f"unknown compile mode '{mode}' (known: {', '.join(COMPILE_MODES)})")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def compile_options(device: torch.device | str) -> dict:
    """torch.compile's options for a training step's loss graph on `device`: on CUDA mode
    "reduce-overhead", which replays the step's kernels as one CUDA graph (static shapes;
    the step never syncs with the host); on a CPU inductor's C++ wrapper, which calls the
    graph's kernels from C++ instead of Python (about 5 % off a batch-20 step, measured;
    compiling costs the same). Shapes are static (an epoch's last, smaller minibatch is a
    second graph): CUDA graphs need them, and a stack's vmap cannot trace symbolic sizes."""
    if torch.device(device).type == "cuda":
        return {"mode": "reduce-overhead", "dynamic": False}
    return {"options": {"cpp_wrapper": True}, "dynamic": False}
