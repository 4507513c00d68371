"""Where and with what a run executed: recorded beside every result, never part of its id.
Torch is imported when a run's provenance is collected, not with this module (the CLI and
the runner import it without training anything)."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import socket
import subprocess
from functools import cache
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


@cache
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, object]:
    """Git commit of the vaebench checkout and whether it had uncommitted changes."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": bool(status) if commit else None}


def device_name(device) -> str:
    """GPU model for CUDA devices (a str or torch.device); the CPU model (from /proc/cpuinfo
    where there is one)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def collect(device) -> dict[str, object]:
    """Provenance of a run executing now on `device` in this process."""
    import torch

    try:  # the installed version, without importing Ray (0.2-0.5 s a local runner)
        ray_version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # the local executor does not need Ray
        ray_version = None
    return {
        **code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ray": ray_version,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


def execution(compiled: bool | None, eval_compiled: bool | None,
              stack_size: int | None) -> str:
    """How a stored run executed, from its sys_compiled, sys_eval_compiled and sys_stack_size
    as plain values (None where a row lacks them: rows older than these columns ran eager
    and solo): "eager", "compiled step", "compiled estimate" or "compiled step and
    estimate", then ", stack of N" for a run trained in a stack. Its speed and memory
    compare only with runs of the same execution (bench.compare); the report counts them."""
    step, estimate = bool(compiled), bool(eval_compiled)
    text = ("compiled step and estimate" if step and estimate else "compiled step" if step
            else "compiled estimate" if estimate else "eager")
    if stack_size is not None and stack_size > 1:
        text += f", stack of {int(stack_size)}"
    return text


def executions(runs) -> list[str]:
    """`execution` of each row of a DataFrame of stored runs (bench.store.load_runs); a
    column it lacks, or a null in it (NaN beside newer rows), reads as None."""
    def column(name: str) -> list:
        if name not in runs.columns:
            return [None] * len(runs)
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                for v in runs[name]]

    return [execution(*values) for values in zip(
        column("sys_compiled"), column("sys_eval_compiled"), column("sys_stack_size"),
        strict=True)]
