"""What a run costs: analytic FLOPs of the MLP models and the process's peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch
from torch import nn

from bench.models.lvm import LatentVariableModel


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def training_flops_per_example(model: LatentVariableModel, k: int) -> float:
    """Analytic FLOPs of one training example: matmuls only (2 FLOPs per multiply-add),
    forward + backward ~= 3x forward. q(z_1|x) runs once per example; every network that
    takes a sample (upper encoders, priors, the decoder, IAF's MADEs) runs k times. The
    elementwise work of planar and radial steps (O(d) per sample) is not counted."""
    made = getattr(model.encoders[0], "made_steps", None)  # IAF: MADEs act on each sample
    made_macs = _linear_macs(made) if made is not None else 0
    first = _linear_macs(model.encoders[0]) - made_macs
    per_sample = (
        made_macs
        + sum(_linear_macs(e) for e in model.encoders[1:])
        + sum(_linear_macs(p) for p in model.priors)
        + _linear_macs(model.decoder)
    )
    return 3.0 * 2.0 * (first + k * per_sample)


class PeakMemory:
    """Peak memory of this run: CUDA max allocated on a GPU; on CPU the process's peak RSS
    since `start()` (Linux resets the high-water mark via /proc/self/clear_refs; elsewhere
    it is the process's lifetime peak)."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)
        except OSError:
            pass

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
