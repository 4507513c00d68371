"""Weight initialisation: PyTorch's default, or the IWAE authors' (yburda/iwae).

The authors' code (`nnet.py`, `iwae.py`, `datasets.py`) draws every linear layer's weights
uniformly on +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010), sets every bias to 0, and
sets the Bernoulli decoder's output bias to logit(clip(mean training pixel, 1e-3, 1 - 1e-3)),
so that an untrained model already predicts each pixel's marginal intensity. Without that
bias, the first epochs are spent walking the ~600 background pixels' logits down, which is
most of what a short (CPU-budget) run measures.

`init_authors(model, output_layer, pixel_mean)` applies it to any module: every nn.Linear,
nn.Conv2d and nn.ConvTranspose2d gets Glorot-uniform weights and zero biases (for
convolutions, fan counts include the kernel area, as torch's xavier_uniform_), then
`output_layer`'s bias is set from `pixel_mean`. A layer with one bias per channel (the conv
decoder's last transposed convolution) gets the logit of the mean over all pixels. Draws
come from torch's global generator: callers seed it (bench.models.build_model does). Imports
torch only.
"""

from __future__ import annotations

import torch
from torch import nn

#: clip of the pixel means before the logit, as the authors' `get_train_bias_np`
MEAN_CLIP = 1e-3
_GLOROT_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def output_bias(pixel_mean: torch.Tensor) -> torch.Tensor:
    """logit(clip(pixel_mean, 1e-3, 1 - 1e-3)), elementwise."""
    return torch.logit(pixel_mean.clamp(MEAN_CLIP, 1.0 - MEAN_CLIP))


@torch.no_grad()
def init_authors(model: nn.Module, output_layer: nn.Module | None,
                 pixel_mean: torch.Tensor | None) -> None:
    """Glorot-uniform weights and zero biases for every linear and convolutional layer of
    `model`, then `output_layer.bias` = output_bias(pixel_mean) (see the module doc)."""
    for module in model.modules():
        if isinstance(module, _GLOROT_LAYERS):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if output_layer is None or pixel_mean is None:
        return
    bias = output_layer.bias
    mean = pixel_mean.to(device=bias.device, dtype=torch.float64)
    if bias.shape != mean.shape:  # one bias per channel: the mean over every pixel
        mean = mean.mean().expand(bias.shape)
    bias.copy_(output_bias(mean).to(bias.dtype))
