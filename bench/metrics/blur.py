"""Blurriness as in Tolstikhin et al.'s WAE code: the variance of the Laplacian of an image.

Images in [0, 1] (decoder means, never Bernoulli samples; grayscale) are convolved with
[[0, 1, 0], [1, -4, 1], [0, 1, 0]] without padding and the variance of the result is taken
per image. Sharp edges give a large variance; a constant image gives exactly 0. The
sharpness ratio model / data is 1.0 when samples are as sharp as the test images.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bench.data import Dataset
from bench.models.lvm import LatentVariableModel

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def blurriness(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance of the Laplacian response, (N,), for images (N, H, W) in [0, 1]."""
    if images.dim() != 3 or images.shape[-1] < 3 or images.shape[-2] < 3:
        raise ValueError(f"expected (N, H, W) images with H, W >= 3, got {tuple(images.shape)}")
    kernel = LAPLACIAN.to(images.device, images.dtype).view(1, 1, 3, 3)
    response = torch.nn.functional.conv2d(images.unsqueeze(1), kernel)  # (N, 1, H-2, W-2)
    return response.flatten(1).var(dim=1, unbiased=False)


def blur_metrics(
    model: LatentVariableModel,
    dataset: Dataset,
    *,
    n_images: int = 1000,
    generator: torch.Generator | None = None,
) -> dict:
    """Blurriness (mean, min) of prior samples, of reconstructions of test images and of the
    test images themselves, and the sharpness ratios model / data. Data with no image shape
    get NaN and `blur_reason`."""
    names = [f"blur_{w}_{s}" for w in ("data", "prior", "recon") for s in ("mean", "min")]
    if dataset.image_shape is None or min(dataset.image_shape) < 3:
        nan = float("nan")
        return {**dict.fromkeys([*names, "sharpness_prior", "sharpness_recon"], nan),
                "blur_reason": f"{dataset.name} has no image shape"}
    h, w = dataset.image_shape
    n = min(n_images, dataset.test.shape[0])
    device = next(model.parameters()).device
    data = dataset.test_intensities if dataset.test_intensities is not None else dataset.test
    images = {
        "data": data[:n].to(device),
        "prior": model.sample_prior(n, generator=generator),
        "recon": model.reconstruct(dataset.test[:n].to(device), generator=generator),
    }
    out: dict = {"blur_reason": None}
    for which, x in images.items():
        blur = blurriness(x.clamp(0, 1).reshape(-1, h, w).float())
        out[f"blur_{which}_mean"], out[f"blur_{which}_min"] = float(blur.mean()), float(blur.min())
    reference = out["blur_data_mean"]
    if reference > 0:
        out["sharpness_prior"] = out["blur_prior_mean"] / reference
        out["sharpness_recon"] = out["blur_recon_mean"] / reference
    else:  # flat test images: nothing to be as sharp as
        out["sharpness_prior"] = out["sharpness_recon"] = float("nan")
        out["blur_reason"] = f"the {dataset.name} test images are flat (blurriness 0)"
    return out


def image_rows(kinds: Mapping[str, torch.Tensor], image_shape: tuple[int, int]
               ) -> list[dict]:
    """Report image rows from {kind: (n, h*w) images}: (kind, index, height, width, pixels
    clamped to [0, 1]), kinds in the mapping's order (the report draws one row per kind)."""
    h, w = image_shape
    return [
        {"kind": kind, "index": i, "height": h, "width": w,
         "pixels": image.clamp(0, 1).float().cpu().tolist()}
        for kind, images in kinds.items()
        for i, image in enumerate(images)
    ]


def sample_records(
    model: LatentVariableModel,
    dataset: Dataset,
    *,
    n_prior: int = 64,
    n_recon: int = 16,
    generator: torch.Generator | None = None,
) -> list[dict]:
    """Images for the report's grids, as rows (kind, index, height, width, pixels in [0,1]):
    prior samples (decoder means), and test inputs with their reconstructions."""
    if dataset.image_shape is None:
        return []
    device = next(model.parameters()).device
    originals = dataset.test[:n_recon].to(device)
    kinds = {
        "prior": model.sample_prior(n_prior, generator=generator),
        "original": originals,
        "reconstruction": model.reconstruct(originals, generator=generator),
    }
    return image_rows(kinds, dataset.image_shape)
