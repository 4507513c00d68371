"""The Dataset a run trains on, how it is loaded, and the binarization protocol (see the
package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.config import IMAGE_DATASETS
from bench.data.cache import data_dir
from bench.data.digits import digits_arrays
from bench.data.mnist import CACHE_KEYS, MNIST_CACHE_NAME, fetch_mnist, read_cache
from bench.data.shapes import SHAPES_GRIDS
from bench.errors import BenchError

TEST_BINARIZATION_SEED = 20151001
DATASETS: tuple[str, ...] = IMAGE_DATASETS


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: intensities for training, a fixed (optionally binarized) test set."""

    name: str
    train: torch.Tensor  # (N, D) float32 in [0, 1], never binarized
    test: torch.Tensor  # (M, D) float32; exactly 0/1 when binarized
    train_labels: torch.Tensor  # (N,) int64
    test_labels: torch.Tensor  # (M,) int64
    image_shape: tuple[int, int] | None
    binarized: bool  # True: Bernoulli data, binarize train batches with binarize_dynamic
    test_intensities: torch.Tensor | None = None  # (M, D) the test images before binarization
    # generative factors of synthetic grids (shapes): (N, F) / (M, F) int64 indices into the
    # factor value lists, columns named by factor_names; None and () for other data sets
    train_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None
    factor_names: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        """Return the number of pixels (features) per example."""
        return int(self.train.shape[1])

    @property
    def pixel_mean(self) -> torch.Tensor:
        """(D,) float64 mean intensity of each pixel over the training images: the expected
        value of a dynamically binarized pixel (the authors' output-bias initialisation)."""
        return self.train.double().mean(0)


def binarize_dynamic(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a fresh Bernoulli(x) sample of 0/1 values with x's dtype and device."""
    return torch.bernoulli(x, generator=generator)


def drop_pixels(x: torch.Tensor, p: float, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """x with each entry set to 0 independently with probability p (no rescaling: a dropped
    pixel looks exactly like a missing one at inpainting time); one uniform draw per entry."""
    dropped = torch.rand(x.shape, generator=generator, device=x.device) < p
    return x.masked_fill(dropped, 0.0)


def load_dataset(
    name: str,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    binarize: bool = True,
) -> Dataset:
    """Return the named Dataset, keeping the first train_size/test_size examples if given.

    ``mnist`` is fetched on first use. With ``binarize`` the test set is binarized with
    TEST_BINARIZATION_SEED (see the module docstring); the training set stays intensities.
    """
    if name == "digits":
        train_v, train_y, test_v, test_y = digits_arrays()
        scale, image_shape = 16.0, (8, 8)
    elif name == "mnist":
        cache = data_dir() / MNIST_CACHE_NAME
        if not cache.exists():
            fetch_mnist()
        arrays = read_cache(cache)
        train_v, train_y, test_v, test_y = (arrays[k] for k in CACHE_KEYS)
        scale, image_shape = 256.0, (28, 28)
    elif name in SHAPES_GRIDS:
        return _load_shapes(name, train_size, test_size, binarize)
    else:
        raise BenchError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")

    n = _check_size(name, "train_size", train_size, len(train_v))
    m = _check_size(name, "test_size", test_size, len(test_v))
    test_intensities = test_v.astype(np.float32) / np.float32(scale)
    test_x = test_intensities
    if binarize:  # over the full test set, so a prefix is the same data as in a full load
        u = np.random.default_rng(TEST_BINARIZATION_SEED).random(test_x.shape)
        test_x = (u < test_x).astype(np.float32)
    return Dataset(
        name=name,
        train=torch.from_numpy(train_v[:n].astype(np.float32) / np.float32(scale)),
        test=torch.from_numpy(np.ascontiguousarray(test_x[:m])),
        test_intensities=torch.from_numpy(np.ascontiguousarray(test_intensities[:m])),
        train_labels=torch.from_numpy(train_y[:n].astype(np.int64)),
        test_labels=torch.from_numpy(test_y[:m].astype(np.int64)),
        image_shape=image_shape,
        binarized=binarize,
    )


def _load_shapes(name: str, train_size: int | None, test_size: int | None,
                 binarize: bool) -> Dataset:
    """The bench.data.shapes grid as a Dataset: fixed random split, shape index as the label."""
    # imported here: the grid is generated (seconds) and cached under data_dir() on first use
    from bench.data.shapes import FACTOR_NAMES, load_shapes

    grid = load_shapes(SHAPES_GRIDS[name])
    train_rows, test_rows = grid.split()
    n = _check_size(name, "train_size", train_size, len(train_rows))
    m = _check_size(name, "test_size", test_size, len(test_rows))
    train_rows, test_rows = train_rows[:n], test_rows[:m]  # unpack only the rows kept
    factors = torch.from_numpy(grid.factor_indices)
    train_f, test_f = factors[torch.from_numpy(train_rows)], factors[torch.from_numpy(test_rows)]
    test_x = torch.from_numpy(grid.pixels(test_rows))  # exactly 0/1: binarizing is the identity
    return Dataset(name=name, train=torch.from_numpy(grid.pixels(train_rows)), test=test_x,
                   test_intensities=test_x, train_labels=train_f[:, 0].clone(),
                   test_labels=test_f[:, 0].clone(), image_shape=(grid.spec.size,) * 2,
                   binarized=binarize, train_factors=train_f, test_factors=test_f,
                   factor_names=FACTOR_NAMES)


def _check_size(name: str, what: str, value: int | None, available: int) -> int:
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise BenchError(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= available:
        raise BenchError(f"{what} must be between 1 and {available} for {name}, got {value}")
    return int(value)
