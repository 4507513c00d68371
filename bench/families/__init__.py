"""Model families beyond the VAE family: each trains one config and returns a `FamilyResult`.

    lvm             bench.families.lvm: VAE, IWAE, beta-VAE, flows, forward KL (the default)
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
from typing import TYPE_CHECKING

from bench.errors import BenchError

if TYPE_CHECKING:
    import torch

    from bench.config import RunConfig
    from bench.data import Dataset
    from bench.eta import ProgressLines
    from bench.families.lvm import TrainResult
    from bench.loop import Checkpointing, EpochRecord


@dataclass
class FamilyResult:
    """What a non-lvm family returns: its own metrics, plus the common training record."""

    status: str  # "finished" or "diverged"
    curves: list[EpochRecord]
    train_seconds: float
    family_metrics: dict = field(default_factory=dict)  # the family's own metrics
    samples: list[dict] = field(default_factory=list)
    diverged_epoch: int | None = None
    compiled: bool = False  # whether the training step ran torch.compile'd
    eval_compiled: bool = False  # no family's own estimate compiles (the lvm's does)

    def metrics(self) -> dict:
        from bench.loop import training_record

        return {**training_record(self.status, self.curves, self.train_seconds,
                                  self.diverged_epoch), **self.family_metrics}


OnEpoch = Callable[["EpochRecord", int], None]


def train_model(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    on_epoch: OnEpoch | None = None,
    checkpointing: Checkpointing | None = None,
    compile: str = "off",
    progress: ProgressLines | None = None,
) -> TrainResult | FamilyResult:
    """Train and evaluate `cfg` with its family's trainer (bench.families.registry). Only
    the lvm trainer checkpoints; the other families are short and restart from scratch
    when retried. `compile` (auto, on, off) reaches the families that compile their step
    (lvm, m2, cvae, conditional_nn); the others run eagerly, and refuse "on". Toys need no
    data set: they run through `run_toy`. `progress`: where lines with an ETA go during long
    evaluation and EM, for the families that write them (Family.progress)."""
    from bench.families.registry import FAMILIES

    family = FAMILIES.of(cfg)
    if family.toy:
        raise ValueError(f"'{family.name}' is a toy: run it with bench.families.run_toy")
    extra = {"compile": compile} if family.compiles else {}
    if family.progress:
        extra["progress"] = progress
    if not family.compiles and compile == "on":
        compiling = ", ".join(f.name for f in FAMILIES if f.compiles)
        raise BenchError(f"model '{family.name}' runs its training loop eagerly: compile "
                         f"'on' applies to models {compiling} (use auto or off)")
    return family.trainer()(cfg, dataset, device=device, on_epoch=on_epoch,
                            checkpointing=checkpointing, **extra)


def run_toy(cfg: RunConfig) -> dict:
    """Run the toy `cfg.dataset` (a family registered with toy=True) and return its metrics."""
    from bench.families.registry import FAMILIES

    family = FAMILIES.of(cfg)
    if not family.toy:
        raise ValueError(f"dataset '{cfg.dataset}' is not a toy")
    return family.trainer()(cfg)
