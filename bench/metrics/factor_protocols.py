"""How each factor metric (MIG, DCI, beta-VAE) of a run is estimated, in words, for the report.

Torch-free on purpose: the report names every factor metric's protocol beside its value, and
a report loads no torch (bench.metrics.factors, which computes the metrics, needs it).
"""

from __future__ import annotations

from bench.data.shapes import SHAPES_GRIDS, get_spec
from bench.metrics.disentanglement import (
    BETA_VAE_BATCH,
    BETA_VAE_TEST,
    BETA_VAE_TRAIN,
    DCI_TEST_FRACTION,
    MIG_BINS,
)

FACTOR_POINTS = 10000  # grid images MIG and DCI are computed on (disentanglement_lib: 10000)
# report names of bench.config.DCI_ESTIMATORS
DCI_ESTIMATOR_NAMES = {"forest": "random forest", "boosting": "gradient-boosted trees"}


def metric_protocols(dataset: str | None = None, dci_estimator: str = "forest",
                     dci_train: int = 0, dci_test: int = 0) -> dict[str, str]:
    """How each factor metric of a run on `dataset` with these DCI keys is estimated, for
    the report: {"mig": "20-bin histogram, 6,144 points", "dci": "random forest, 2:1 split
    of 6,144 points" or "gradient-boosted trees, 10,000/5,000 independent draws",
    "beta_vae": "logistic regression, 10,000/5,000 points of 64 pairs"}. An unknown (or
    missing) dataset gives "up to 10,000 points"."""
    if dataset in SHAPES_GRIDS:
        points = f"{min(get_spec(SHAPES_GRIDS[dataset]).count, FACTOR_POINTS):,} points"
    else:
        points = f"up to {FACTOR_POINTS:,} points"
    estimator = DCI_ESTIMATOR_NAMES.get(dci_estimator, str(dci_estimator))
    if dci_train or dci_test:
        dci_points = f"{dci_train:,}/{dci_test:,} independent draws"
    else:
        train_parts = round(1 / DCI_TEST_FRACTION) - 1
        dci_points = f"{train_parts}:1 split of {points}"
    return {
        "mig": f"{MIG_BINS}-bin histogram, {points}",
        "dci": f"{estimator}, {dci_points}",
        "beta_vae": f"logistic regression, {BETA_VAE_TRAIN:,}/{BETA_VAE_TEST:,} points of "
                    f"{BETA_VAE_BATCH} pairs",
    }
