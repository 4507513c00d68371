"""The pieces every trainer's loop shares (the lvm trainer in bench.families.lvm, the CVAE,
M2 and mixture families): the per-epoch record and the training record built from it, the
minibatch epoch loop that sets each epoch's learning rate, the seeded generators of the
training and evaluation streams, the data a config trains on, and where checkpoints go.

Randomness comes from one `torch.Generator` per stream, seeded from the config's one seed
(`make_generator(cfg.seed + TRAIN_STREAM, device)`, and EVAL_STREAM for evaluation), so the
same config and seed on the same CPU setup reproduce the same metrics bit for bit.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import RunConfig
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.families.registry import FAMILIES

# Offsets that derive independent streams from the one user-facing seed: training, the
# test-set evaluation, the gradient SNR's draws (bench.metrics.snr) and the test-set bounds
# at the training k (bench.metrics.likelihood.test_bounds), each its own so that measuring
# one never moves another.
TRAIN_STREAM = 0
EVAL_STREAM = 1_000_003
SNR_STREAM = 2_000_003
BOUND_STREAM = 3_000_017


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    lr: float
    train_bound: float  # mean training objective over the epoch, nats per example
    samples_per_s: float
    wall_seconds: float  # since the start of training
    # minus the mean validation loss after the epoch (same estimator as train_bound), for
    # trainers with a held-out validation split (bench.families.cvae); None otherwise
    valid_bound: float | None = None
    # the gradient SNR after the epoch (bench.metrics.snr), at the epochs cfg.snr_every names
    snr_encoder: float | None = None
    snr_decoder: float | None = None
    dsnr_encoder: float | None = None
    dsnr_decoder: float | None = None


def training_record(status: str, curves: list[EpochRecord], train_seconds: float,
                    diverged_epoch: int | None) -> dict:
    """The metrics every trainer reports about its training: status, epochs, the final
    bound, throughput (median over epochs after the first, which pays warm-up costs)."""
    rates = [r.samples_per_s for r in curves]
    steady = rates[1:] or rates
    return {
        "status": status,
        "epochs_done": len(curves),
        "final_train_bound": curves[-1].train_bound if curves else math.nan,
        "train_samples_per_s": statistics.median(steady) if steady else math.nan,
        "train_seconds": train_seconds,
        "diverged_epoch": diverged_epoch,
    }


def train_epochs(
    lrs: Sequence[float],
    step: Callable[[torch.Tensor], torch.Tensor],
    *,
    n: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    curves: list[EpochRecord],
    start: float,
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
    total: int | None = None,
    after_epoch: Callable[[int, float], None] | None = None,
) -> int | None:
    """The minibatch epochs every trainer runs, one per learning rate in `lrs`: set the lr,
    draw ONE permutation of the n examples from `generator`, call `step(rows)` per minibatch
    (it returns the minibatch's detached 0-d loss, still on the device), then append an
    EpochRecord numbered len(curves) + 1 (train_bound = minus the epoch's mean loss) and
    call `on_epoch(record, total)` and `after_epoch(epoch, now)`. One host sync per epoch.
    Returns the epoch whose loss was not finite (training stops there), else None."""
    device = optimizer.param_groups[0]["params"][0].device
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(n, generator=generator, device=generator.device)
        for lo in range(0, n, batch_size):
            rows = order[lo : lo + batch_size]
            loss_sum += step(rows) * rows.shape[0]
        mean_loss = float(loss_sum) / n  # the one host sync per epoch
        now = time.perf_counter()
        record = EpochRecord(epoch=len(curves) + 1, lr=lr, train_bound=-mean_loss,
                             samples_per_s=n / (now - epoch_start), wall_seconds=now - start)
        curves.append(record)
        if on_epoch is not None:
            on_epoch(record, total if total is not None else len(lrs))
        if not math.isfinite(mean_loss):
            return record.epoch
        if after_epoch is not None:
            after_epoch(record.epoch, now)
    return None


def load_data(cfg: RunConfig) -> Dataset:
    """The data set a config trains on: its first train_size / test_size examples, binarized
    (dynamically for training, once for the test set) when the likelihood is Bernoulli and
    cfg.binarize (false: grey levels, scored by the Bernoulli cross-entropy)."""
    if FAMILIES.of(cfg).toy:
        raise BenchError(f"dataset '{cfg.dataset}' is a toy with no data to load: run it with "
                         f"`vaebench toy {cfg.dataset}` or as a suite run")
    return load_dataset(cfg.dataset, train_size=cfg.train_size, test_size=cfg.test_size,
                        binarize=cfg.likelihood == "bernoulli" and cfg.binarize)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often `train` saves its state (model, optimizer, RNG, epoch, curves)."""

    path: Path
    every_epochs: int = 10


def save_state(path: Path, state: dict) -> None:
    """Atomically write a checkpoint's `state` (torch.save) to `path`: a reader sees the old
    file or the whole new one, never a torn write. A process killed while writing leaves its
    temp file; the run's next attempt removes it (bench.runner._execute)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise


def load_state(path: Path, config_hash: str, device_type: str) -> dict:
    """The checkpoint state at `path`, refused (BenchError) when unreadable, written for
    another `config_hash` or on another device type (RNG states do not move between them)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: never resume from it silently
        reason = type(err).__name__
        raise BenchError(f"unreadable checkpoint {path} ({reason}); delete it") from None
    if not isinstance(state, dict) or state.get("config_hash") != config_hash:
        raise BenchError(f"checkpoint {path} belongs to another config; delete it")
    saved = state.get("device_type", device_type)
    if saved != device_type:
        raise BenchError(f"checkpoint {path} was written on {saved}, this run is on "
                         f"{device_type}: resume it on {saved} or delete it")
    return state
