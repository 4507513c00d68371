"""Train one variant and evaluate it: `train(cfg, dataset) -> TrainResult`.

The loop is deliberately plain: data stays on the device as one tensor, each epoch is a
random permutation sliced into minibatches, the k samples are one batched tensor, and the
loss is accumulated on the device so the hot loop never synchronises with the host. The
only sync is once per epoch, where a non-finite loss ends the run as `diverged`.

Randomness comes from one `torch.Generator` seeded from the config (shuffling, dynamic
binarisation, reparameterisation noise) and weights are initialised from the same seed, so
the same config and seed on the same CPU setup reproduce the same metrics bit for bit.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.config import RunConfig
from bench.data import Dataset, binarize_dynamic
from bench.metrics.likelihood import TestMetrics, evaluate
from bench.models import LatentVariableModel, build_model
from bench.objectives import Objective, objective_for

# Offsets that derive independent streams from the one user-facing seed.
_TRAIN_STREAM = 0
_EVAL_STREAM = 1_000_003


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    lr: float
    train_bound: float  # mean training objective over the epoch, nats per example
    samples_per_s: float
    wall_seconds: float  # since the start of training


@dataclass
class TrainResult:
    status: str  # "finished" or "diverged"
    config: RunConfig
    model: LatentVariableModel
    curves: list[EpochRecord]
    test: TestMetrics | None  # None when the run diverged
    train_seconds: float
    diverged_epoch: int | None = None

    def metrics(self) -> dict:
        """Flat metric dict for printing and storing (nats per example, seconds, samples/s)."""
        rates = [r.samples_per_s for r in self.curves]
        steady = rates[1:] or rates
        out = {
            "status": self.status,
            "epochs_done": len(self.curves),
            "final_train_bound": self.curves[-1].train_bound if self.curves else math.nan,
            # median over epochs after the first (the first pays warm-up costs)
            "train_samples_per_s": statistics.median(steady) if steady else math.nan,
            "train_seconds": self.train_seconds,
            "diverged_epoch": self.diverged_epoch,
        }
        if self.test is not None:
            out.update(self.test.to_dict())
        return out


def training_step(
    model: LatentVariableModel,
    optimizer: torch.optim.Optimizer,
    bound_fn: Objective,
    xb: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One Adam step on minibatch xb (B, D); returns the loss (negative mean bound) as a
    0-d tensor still on the device, so the caller decides when to synchronise."""
    loss = -bound_fn(model(xb, k, generator=generator)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def train(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
    rows_per_eval_chunk: int | None = None,
) -> TrainResult:
    """Train `cfg` on `dataset`, then evaluate on its test set with cfg.k_eval samples.

    `on_epoch(record, total_epochs)` is called after every epoch (progress display)."""
    device = torch.device(device)
    x_train = dataset.train.to(device)
    x_test = dataset.test.to(device)
    n = x_train.shape[0]
    model = build_model(cfg, dataset.dim).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
    )
    bound_fn = objective_for(cfg)
    generator = make_generator(cfg.seed + _TRAIN_STREAM, device)
    total_epochs = sum(epochs for epochs, _ in cfg.lr_stages())

    curves: list[EpochRecord] = []
    status, diverged_epoch = "finished", None
    start = time.perf_counter()
    epoch = 0
    for stage_epochs, lr in cfg.lr_stages():
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(stage_epochs):
            epoch += 1
            epoch_start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            order = torch.randperm(n, generator=generator, device=device)
            for lo in range(0, n, cfg.batch_size):
                xb = x_train[order[lo : lo + cfg.batch_size]]
                if dataset.binarized:
                    xb = binarize_dynamic(xb, generator)
                loss = training_step(model, optimizer, bound_fn, xb, cfg.k, generator)
                loss_sum += loss * xb.shape[0]
            mean_loss = float(loss_sum) / n  # the one host sync per epoch
            now = time.perf_counter()
            record = EpochRecord(
                epoch=epoch,
                lr=lr,
                train_bound=-mean_loss,
                samples_per_s=n / (now - epoch_start),
                wall_seconds=now - start,
            )
            curves.append(record)
            if on_epoch is not None:
                on_epoch(record, total_epochs)
            if not math.isfinite(mean_loss):
                status, diverged_epoch = "diverged", epoch
                break
        if status == "diverged":
            break
    train_seconds = time.perf_counter() - start

    test = None
    if status == "finished":
        eval_kwargs = {} if rows_per_eval_chunk is None else {"rows_per_chunk": rows_per_eval_chunk}
        test = evaluate(
            model,
            x_test,
            cfg.k_eval,
            generator=make_generator(cfg.seed + _EVAL_STREAM, device),
            **eval_kwargs,
        )
    return TrainResult(
        status=status,
        config=cfg,
        model=model,
        curves=curves,
        test=test,
        train_seconds=train_seconds,
        diverged_epoch=diverged_epoch,
    )
