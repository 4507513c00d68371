"""scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16) with a fixed
split: the examples permuted by numpy.random.default_rng(DIGITS_SPLIT_SEED), the first 1500
for training and the last DIGITS_TEST_SIZE = 297 for testing. No download."""

from __future__ import annotations

import numpy as np

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 297


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # slow import; only needed here

    bunch = load_digits()
    values, labels = bunch.data.astype(np.uint8), bunch.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(values))
    train, test = perm[: len(perm) - DIGITS_TEST_SIZE], perm[len(perm) - DIGITS_TEST_SIZE :]
    return values[train], labels[train], values[test], labels[test]
