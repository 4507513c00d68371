"""Model families beyond the VAE family: each trains one config and returns a `FamilyResult`.

    lvm             bench.train.train: VAE, IWAE, beta-VAE, flows, forward KL (the default)
    mixture         bench.families.mixture: a mixture of Bernoullis fitted by EM, exact log p(x)
    cvae            bench.families.cvae: conditional VAE (class labels, or MNIST quadrants)
    conditional_nn  bench.families.cvae: the deterministic baseline of the quadrant task
    m2              bench.families.m2: the semi-supervised VAE of Kingma et al. 2014
    classifier      bench.families.m2: M2's classifier alone on the labelled subset (the
                    supervised-only baseline)

`train_model(cfg, dataset, ...)` is the one entry point the runner and the CLI call; it
hands `cfg.model` to its family. A family's result has the same surface as the lvm
trainer's `TrainResult`: `status`, `curves` (EpochRecord per epoch or EM iteration),
`samples` (image rows for the report) and `metrics()` (a flat dict, status included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.config import RunConfig
from bench.data import Dataset
from bench.train import Checkpointing, EpochRecord, TrainResult, train, training_record


@dataclass
class FamilyResult:
    """What a non-lvm family returns: its own metrics, plus the common training record."""

    status: str  # "finished" or "diverged"
    curves: list[EpochRecord]
    train_seconds: float
    family_metrics: dict = field(default_factory=dict)  # the family's own metrics
    samples: list[dict] = field(default_factory=list)
    diverged_epoch: int | None = None

    def metrics(self) -> dict:
        return {**training_record(self.status, self.curves, self.train_seconds,
                                  self.diverged_epoch), **self.family_metrics}


OnEpoch = Callable[[EpochRecord, int], None]


def train_model(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    on_epoch: OnEpoch | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainResult | FamilyResult:
    """Train and evaluate `cfg` with its model family. Only the lvm trainer checkpoints; the
    other families are short and restart from scratch when retried."""
    if cfg.model == "lvm":
        return train(cfg, dataset, device=device, on_epoch=on_epoch, checkpointing=checkpointing)
    if cfg.model == "mixture":
        from bench.families import mixture as family
    elif cfg.model in ("cvae", "conditional_nn"):
        from bench.families import cvae as family
    elif cfg.model in ("m2", "classifier"):
        from bench.families import m2 as family
    else:  # config validation makes this unreachable
        raise ValueError(f"no model family {cfg.model!r}")
    return family.run(cfg, dataset, device=torch.device(device), on_epoch=on_epoch)
