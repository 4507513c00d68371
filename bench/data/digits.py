"""scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16) with a fixed
split: the examples permuted by numpy.random.default_rng(DIGITS_SPLIT_SEED), the first 1500
for training and the last DIGITS_TEST_SIZE = 297 for testing. No download.

The table is read from the file scikit-learn ships it in (sklearn/datasets/data/
digits.csv.gz, parsed as sklearn.datasets.load_digits parses it: the same values), found
without importing scikit-learn: that import pulls in scipy.stats and costs about a second
(0.8-1.4 s on 2 cores), a third of a runner's start-up, for a 1797 x 65 table read in 40 ms.
A scikit-learn that keeps the file elsewhere is read through load_digits. The table is read
once per process (read-only) and shared by the runs of a grid that train on digits.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 297
SHIPPED_CSV = ("datasets", "data", "digits.csv.gz")  # inside the sklearn package


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train values, train labels, test values, test labels): new arrays on each call."""
    values, labels = _digits_table()
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(values))
    train, test = perm[: len(perm) - DIGITS_TEST_SIZE], perm[len(perm) - DIGITS_TEST_SIZE :]
    return values[train], labels[train], values[test], labels[test]


@functools.cache
def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images' values (uint8, 1797 x 64) and labels (int64), read-only."""
    path = shipped_csv()
    if path is not None:
        with gzip.open(path, mode="rt", encoding="utf-8") as text:
            table = np.loadtxt(text, delimiter=",")
        data, target = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits  # the file moved: let scikit-learn find it

        bunch = load_digits()
        data, target = bunch.data, bunch.target
    values, labels = data.astype(np.uint8), target.astype(np.int64)
    values.setflags(write=False)
    labels.setflags(write=False)
    return values, labels


def shipped_csv() -> Path | None:
    """Where the installed scikit-learn keeps digits.csv.gz (None: not there), found
    without importing it."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root).joinpath(*SHIPPED_CSV)
        if path.is_file():
            return path
    return None
