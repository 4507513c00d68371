"""How a training step or the test-set estimate is torch.compile'd (when is
bench.families.compiling's question): the options per device, and `compile_fresh`, which
every compiled function in the package goes through. Imports torch only.

Dynamo keeps a function's compiled graphs on its code object, shared by every closure made
from it, and past `recompile_limit` (8) graphs it silently runs that code eagerly. A process
that trains many configurations in turn (a reused Ray worker, the test session) compiled
the trainers' one closure anew for each: measured, the 9th configuration (k = 9 after k = 1
to 8) ran eagerly while its row said compiled. So each compile gets a fresh copy of the
code, hence its own cache, and compiles with fullgraph=True: a graph break or a hit limit
is an error, never a quiet eager run.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch


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


def compile_fresh(fn: Callable, options: dict) -> Callable:
    """torch.compile(fn, fullgraph=True, **options) on a copy of fn with its own code object
    (module docstring): the copy shares fn's globals, defaults and closure, so it computes
    what fn computes, and starts with no compiled graphs."""
    fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                               fn.__defaults__, fn.__closure__)
    fresh.__kwdefaults__ = fn.__kwdefaults__
    return torch.compile(fresh, fullgraph=True, **options)
