"""Convolutional encoder and decoder networks of Burgess et al. 2018 ("Understanding
disentangling in beta-VAE", appendix A.1), the architecture of the beta-VAE papers:

    encoder  4 x [conv 32 channels, 4x4 kernel, stride 2, padding 1, ReLU]
             -> 2 x [fully connected 256, ReLU] -> features for the posterior's linear head
    decoder  z -> 2 x [fully connected 256, ReLU] -> fully connected to 32 x (H/16) x (W/16)
             -> 4 x [transposed conv 4x4, stride 2] (32, 32, 32, then 1 channel of Bernoulli
             logits), ReLU between

The paper's images are 64x64 (4x4 after four halvings). Any other size is zero-padded on the
bottom and right to the next multiple of 16 before the encoder, and the decoder's output is
cropped back, so MNIST (28x28) and the digits (8x8) work too. Tensors keep any leading
(k, B) dimensions: inputs and outputs are flat (..., H*W) like the MLP networks'.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CHANNELS = 32
FEATURES = 256  # width of the fully connected layers
HALVINGS = 4  # stride-2 convolutions


def _padded(side: int) -> int:
    step = 2**HALVINGS
    return max(step, math.ceil(side / step) * step)


class ConvEncoderNet(nn.Module):
    """(..., H*W) images -> (..., 256) features."""

    def __init__(self, image_shape: tuple[int, int]):
        super().__init__()
        self.height, self.width = image_shape
        self.pad_h, self.pad_w = _padded(self.height), _padded(self.width)
        layers: list[nn.Module] = []
        for i in range(HALVINGS):
            layers += [nn.Conv2d(1 if i == 0 else CHANNELS, CHANNELS, 4, 2, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        flat = CHANNELS * (self.pad_h >> HALVINGS) * (self.pad_w >> HALVINGS)
        self.fc = nn.Sequential(nn.Linear(flat, FEATURES), nn.ReLU(),
                                nn.Linear(FEATURES, FEATURES), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        images = x.reshape(-1, 1, self.height, self.width)
        images = nn.functional.pad(images, (0, self.pad_w - self.width,
                                            0, self.pad_h - self.height))
        return self.fc(self.conv(images).flatten(1)).reshape(*lead, FEATURES)


class ConvDecoderNet(nn.Module):
    """(..., n_latent) -> (..., H*W) logits, the encoder mirrored."""

    def __init__(self, n_latent: int, image_shape: tuple[int, int]):
        super().__init__()
        self.height, self.width = image_shape
        self.pad_h, self.pad_w = _padded(self.height), _padded(self.width)
        self.grid = (CHANNELS, self.pad_h >> HALVINGS, self.pad_w >> HALVINGS)
        self.fc = nn.Sequential(nn.Linear(n_latent, FEATURES), nn.ReLU(),
                                nn.Linear(FEATURES, FEATURES), nn.ReLU(),
                                nn.Linear(FEATURES, math.prod(self.grid)), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(HALVINGS):
            last = i == HALVINGS - 1
            layers.append(nn.ConvTranspose2d(CHANNELS, 1 if last else CHANNELS, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        grid = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.grid)
        logits = self.deconv(grid)[:, 0, : self.height, : self.width]
        return logits.reshape(*lead, self.height * self.width)
