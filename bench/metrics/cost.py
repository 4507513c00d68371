"""What a run costs: analytic FLOPs (linear and convolution layers) and peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch
from torch import nn

from bench.models.lvm import LatentVariableModel


def _linear_macs(module: nn.Module) -> int:
    """Multiply-adds of one example through `module`'s linear and convolution layers."""
    linear = sum(m.in_features * m.out_features for m in module.modules()
                 if isinstance(m, nn.Linear))
    return linear + _conv_macs(module)


def _conv_macs(module: nn.Module) -> int:
    """Multiply-adds of the conv layers of a conv network (bench.models.conv), measured by
    passing one zero example through it with hooks on every (transposed) convolution."""
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        return 0
    nets = [m for m in module.modules() if hasattr(m, "height") and hasattr(m, "width")]
    macs = 0

    def count(layer, inputs, output):
        nonlocal macs
        k = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, nn.Conv2d):  # each output value: in_channels * k products
            macs += output[0].numel() * layer.in_channels * k
        else:  # each input value is spread over out_channels * k outputs
            macs += inputs[0][0].numel() * layer.out_channels * k

    hooks = [c.register_forward_hook(count) for c in convs]
    try:
        with torch.no_grad():
            for net in nets:
                first = next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
                width = net.height * net.width if isinstance(first, nn.Conv2d) \
                    else first.in_features
                param = next(net.parameters())
                net(torch.zeros(1, width, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return macs


def training_flops_per_example(model: LatentVariableModel, k: int, split: bool = False
                               ) -> float:
    """Analytic FLOPs of one training example: forward + backward ~= 3x the forward pass
    (`forward_flops_per_example`). `split` (an estimator's split view, bench.models.lvm.Views:
    DReG, PIWAE) runs the generative networks forward a second time, and its backward
    propagates their input gradients twice: + 2x their forward per sample."""
    generative = sum(_linear_macs(p) for p in model.priors) + _linear_macs(model.decoder)
    return 3.0 * forward_flops_per_example(model, k) + (2.0 * 2.0 * k * generative
                                                         if split else 0.0)


def forward_flops_per_example(model: LatentVariableModel, k: int) -> float:
    """Analytic FLOPs of one forward pass of one example with k samples (an evaluation's
    floor with k = k_eval): matmuls only, 2 FLOPs per multiply-add. q(z_1|x) runs once per
    example; every network that takes a sample (upper encoders, priors, the decoder, IAF's
    MADEs) runs k times. The elementwise work of planar and radial steps (O(d) per sample)
    is not counted."""
    made = getattr(model.encoders[0], "made_steps", None)  # IAF: MADEs act on each sample
    made_macs = _linear_macs(made) if made is not None else 0
    first = _linear_macs(model.encoders[0]) - made_macs
    per_sample = (
        made_macs
        + sum(_linear_macs(e) for e in model.encoders[1:])
        + sum(_linear_macs(p) for p in model.priors)
        + _linear_macs(model.decoder)
    )
    return 2.0 * (first + k * per_sample)


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
