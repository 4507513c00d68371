"""The blurriness metric (Laplacian variance, Tolstikhin et al.'s WAE code) and its use."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import RunConfig
from bench.data import load_dataset
from bench.metrics.blur import blur_metrics, blurriness
from bench.models import build_model


def gaussian_blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = 3
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel_1d = torch.exp(-(xs**2) / (2 * sigma**2))
    kernel = torch.outer(kernel_1d, kernel_1d)
    kernel = (kernel / kernel.sum()).view(1, 1, 2 * radius + 1, 2 * radius + 1)
    return torch.nn.functional.conv2d(images.unsqueeze(1), kernel, padding=radius).squeeze(1)


def test_a_sharp_image_is_less_blurry_than_its_gaussian_blurred_copy():
    sharp = torch.zeros(1, 28, 28)
    sharp[0, 8:20, 8:20] = 1.0  # a white square: hard edges
    sharp[0, 12:16, 4:24] = 1.0
    blurred = gaussian_blur(sharp)
    assert blurriness(sharp)[0] > 5 * blurriness(blurred)[0] > 0


def test_a_constant_image_has_zero_blurriness():
    assert torch.equal(blurriness(torch.full((3, 10, 12), 0.7)), torch.zeros(3))


def test_the_laplacian_is_applied_without_padding():
    image = torch.zeros(1, 5, 5)
    image[0, 2, 2] = 1.0  # response: -4 at the centre, 1 at its 4 neighbours, 0 elsewhere (3x3)
    response = torch.tensor([0, 1, 0, 1, -4, 1, 0, 1, 0], dtype=torch.float32)
    assert blurriness(image)[0] == pytest.approx(float(response.var(unbiased=False)))


def test_blur_metrics_for_a_model_on_digits_and_nan_without_image_shape():
    data = load_dataset("digits", test_size=40)
    model = build_model(RunConfig(hidden=((16,),), latent=(4,)), data.dim)
    metrics = blur_metrics(model, data, generator=torch.Generator().manual_seed(0))
    assert metrics["blur_reason"] is None
    assert metrics["blur_data_mean"] > metrics["blur_data_min"] > 0
    assert metrics["sharpness_prior"] == pytest.approx(
        metrics["blur_prior_mean"] / metrics["blur_data_mean"])
    flat = type(data)(**{**data.__dict__, "image_shape": None})
    no_images = blur_metrics(model, flat)
    assert math.isnan(no_images["sharpness_prior"]) and "no image shape" in no_images["blur_reason"]


def test_flat_test_images_give_no_sharpness_ratio_and_say_why():
    # Guards against: sharpness = model blur / data blur dividing by a zero reference (a
    # ZeroDivisionError failing the whole run after training) when the test images are flat.
    data = load_dataset("digits", test_size=40)
    flat = type(data)(**{**data.__dict__, "test": torch.zeros_like(data.test),
                         "test_intensities": torch.full_like(data.test, 0.25)})
    model = build_model(RunConfig(hidden=((16,),), latent=(4,)), data.dim)
    metrics = blur_metrics(model, flat, generator=torch.Generator().manual_seed(0))
    assert metrics["blur_data_mean"] == 0.0
    assert math.isnan(metrics["sharpness_prior"]) and math.isnan(metrics["sharpness_recon"])
    assert metrics["blur_reason"] == "the digits test images are flat (blurriness 0)"
