"""The VAE family (model "lvm"): train one variant and evaluate it, `train(cfg, dataset) ->
TrainResult`.

The loop is deliberately plain: data stays on the device as one tensor, each epoch is a
random permutation sliced into minibatches, the k samples are one batched tensor, and the
loss is accumulated on the device so the hot loop never synchronises with the host. The
only sync is once per epoch, where a non-finite loss ends the run as `diverged`.

Randomness comes from one `torch.Generator` seeded from the config (shuffling, dynamic
binarisation, reparameterisation noise) and weights are initialised from the same seed, so
the same config and seed on the same CPU setup reproduce the same metrics bit for bit.

Input dropout (`input_dropout` = p > 0): the encoder sees each minibatch with every pixel
zeroed independently with probability p (a fresh mask per minibatch, drawn from the training
generator after binarisation) while p(x | z) still scores the full x, so q(z | x_masked) is
trained towards q(z | x) and the encoder learns to infer from partly observed images
(scored by `eval_inpainting`, see bench.metrics.imputation). With p = 0 nothing is drawn
and the loop is exactly the plain one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from bench.compiler import compile_fresh, compile_options
from bench.config import RunConfig
from bench.data import Dataset, binarize_dynamic, drop_pixels
from bench.eta import ProgressLines
from bench.families.compiling import should_compile, should_compile_eval
from bench.loop import (
    BOUND_STREAM,
    EVAL_STREAM,
    TRAIN_STREAM,
    Checkpointing,
    EpochRecord,
    load_state,
    make_generator,
    save_state,
    train_epochs,
    training_record,
)
from bench.metrics.blur import blur_metrics, sample_records
from bench.metrics.cost import PeakMemory, training_flops_per_example
from bench.metrics.factors import factor_metrics, has_factors
from bench.metrics.imputation import evaluate_inpainting
from bench.metrics.likelihood import TestMetrics, compiled_passes, evaluate, test_bounds
from bench.metrics.snr import gradient_snr, snr_batch
from bench.models import LatentVariableModel, build_model
from bench.models.lvm import PLAIN, Views
from bench.objectives import ControlledCapacity, Objective, objective_for, views_for
from bench.optim import load_optimizer_state, loss_scale, make_optimizer


@dataclass
class TrainResult:
    status: str  # "finished" or "diverged"
    config: RunConfig
    model: LatentVariableModel
    curves: list[EpochRecord]
    test: TestMetrics | None  # None when the run diverged
    train_seconds: float
    diverged_epoch: int | None = None
    cost: dict = field(default_factory=dict)  # peak memory, FLOPs per example, FLOP/s
    images: dict = field(default_factory=dict)  # blurriness and sharpness (finished runs)
    samples: list[dict] = field(default_factory=list)  # image rows for the report's grids
    inpainting: dict = field(default_factory=dict)  # inpaint_* metrics (cfg.eval_inpainting)
    factors: dict = field(default_factory=dict)  # disentanglement, per-unit KL (shapes data)
    bounds: dict = field(default_factory=dict)  # test_bound, test_iwae_k, kl_gap_k (finished)
    snr: dict = field(default_factory=dict)  # gradient SNR at init and after training
    compiled: bool = False  # whether the training step ran torch.compile'd
    eval_compiled: bool = False  # whether the test-set estimate ran torch.compile'd

    def metrics(self) -> dict:
        """Flat metric dict for printing and storing (nats per example, seconds, samples/s)."""
        out = training_record(self.status, self.curves, self.train_seconds,
                              self.diverged_epoch)
        if self.test is not None:
            out.update(self.test.to_dict())
        out.update(self.bounds)
        out.update(self.snr)
        out.update(self.images)
        out.update(self.inpainting)
        out.update(self.factors)
        out.update(self.cost)
        if math.isfinite(out["train_samples_per_s"]) and "flops_per_example" in self.cost:
            out["train_flops_per_s"] = self.cost["flops_per_example"] * out["train_samples_per_s"]
        return out


def compiled_training_step(model: LatentVariableModel, optimizer: torch.optim.Optimizer,
                           bound_fn: Objective, k: int, views: Views = PLAIN,
                           options: dict | None = None) -> Callable[..., torch.Tensor]:
    """`training_step` compiled, as a function of (xb, x_in, noise, loss_scale): the forward
    pass and bound as one torch.compile'd graph (its backward compiled with it); the
    optimiser steps with its own multi-tensor kernels (`train` makes Adam fused, 0.18 ms
    against a compiled foreach step's 0.35 ms; BurdaAdam is foreach, and compiling it would
    recompile every step, its step count being a Python number). The noise comes in drawn
    (the model's `draw_noise`, after binarisation and input dropout, the order the eager
    step draws in), so the run's random stream is the eager one and the graph holds no
    generator. `options`: torch.compile's (default `compile_options` of the model's device).
    """
    def loss_of(xb: torch.Tensor, x_in: torch.Tensor | None,
                noise: list[torch.Tensor]) -> torch.Tensor:
        sample = model(xb, k, views=views, x_in=x_in, noise=noise)
        return -bound_fn(sample).mean()

    device = next(model.parameters()).device
    compiled_loss = compile_fresh(loss_of, compile_options(device) if options is None
                                  else options)

    def step(xb: torch.Tensor, x_in: torch.Tensor | None, noise: list[torch.Tensor],
             scale: float) -> torch.Tensor:
        if device.type == "cuda":  # a new iteration: the last step's graph outputs are used
            torch.compiler.cudagraph_mark_step_begin()
        loss = compiled_loss(xb, x_in, noise)
        optimizer.zero_grad(set_to_none=True)
        (loss if scale == 1 else loss * scale).backward()  # x 1 costs an op, changes nothing
        optimizer.step()
        return loss.detach()

    return step


def training_step(
    model: LatentVariableModel,
    optimizer: torch.optim.Optimizer,
    bound_fn: Objective,
    xb: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    views: Views = PLAIN,
    x_in: torch.Tensor | None = None,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """One optimiser step on minibatch xb (B, D); returns the loss (negative mean bound) as a
    0-d tensor still on the device, so the caller decides when to synchronise. `x_in`, if
    given, is the encoder's input in place of xb (input dropout); the bound still scores xb.
    The gradient is that of loss * loss_scale (bench.optim.loss_scale: B sums the loss)."""
    sample = model(xb, k, generator=generator, views=views, x_in=x_in)
    loss = -bound_fn(sample).mean()
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale).backward()  # x 1 is exact: adam's gradients are unchanged
    optimizer.step()
    return loss.detach()


def train(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
    checkpointing: Checkpointing | None = None,
    compile: str = "off",
    progress: ProgressLines | None = None,
) -> TrainResult:
    """Train `cfg` on `dataset`, then evaluate on its test set with cfg.k_eval samples.

    `on_epoch(record, total_epochs)` is called after every epoch (progress display). With
    `checkpointing`, state is saved every `every_epochs` epochs and a run whose checkpoint
    exists continues from it, giving the same result as an uninterrupted run. `compile`
    (auto, on, off; `should_compile`) runs the step torch.compile'd: the same random stream,
    metrics equal to the eager run's within float tolerance; not part of the run's identity.
    `progress`: where the long evaluation's lines with an ETA go (bench.eta)."""
    device = torch.device(device)
    memory = PeakMemory(device)
    memory.start()
    x_train = dataset.train.to(device)
    n = x_train.shape[0]
    model = build_model(cfg, dataset.dim, image_shape=dataset.image_shape,
                        pixel_mean=dataset.pixel_mean).to(device)
    compiled = should_compile(cfg, n, device, compile)
    optimizer = make_optimizer(model, cfg, fused=compiled)
    bound_fn = objective_for(cfg)
    generator = make_generator(cfg.seed + TRAIN_STREAM, device)
    epoch_lrs = cfg.epoch_lrs()

    curves: list[EpochRecord] = []
    elapsed_before = 0.0  # training seconds spent before a resume
    snr_x = snr_batch(cfg, dataset, device) if cfg.snr_draws else None
    snr_init: dict = {}
    if checkpointing is not None and checkpointing.path.exists():
        curves, elapsed_before, snr_init = _load_checkpoint(
            checkpointing.path, cfg, model, optimizer, generator
        )
    elif snr_x is not None:  # the estimator's SNR at the initial weights
        snr_init = {f"{name}_init": value for name, value in
                    gradient_snr(model, cfg, snr_x, cfg.snr_draws).items()}
    if isinstance(bound_fn, ControlledCapacity):  # C follows the optimisation steps taken
        bound_fn.steps_done = len(curves) * math.ceil(n / cfg.batch_size)
    start = time.perf_counter() - elapsed_before

    views = views_for(cfg)  # what the objective needs of the sample
    fast = (compiled_training_step(model, optimizer, bound_fn, cfg.k, views=views)
            if compiled else None)

    def step(rows: torch.Tensor) -> torch.Tensor:
        xb = x_train[rows]
        if dataset.binarized:
            xb = binarize_dynamic(xb, generator)
        x_in = drop_pixels(xb, cfg.input_dropout, generator) if cfg.input_dropout else None
        if fast is not None:
            noise = model.draw_noise(xb.shape[0], cfg.k, generator, device)
            return fast(xb, x_in, noise, loss_scale(cfg, xb.shape[0]))
        return training_step(model, optimizer, bound_fn, xb, cfg.k, generator,
                             views=views, x_in=x_in,
                             loss_scale=loss_scale(cfg, xb.shape[0]))

    def after_epoch(epoch: int, now: float) -> None:
        if snr_x is not None and cfg.snr_every and (
            epoch % cfg.snr_every == 0 and epoch < len(epoch_lrs)
        ):  # (the last epoch's SNR is the run's snr_* metrics)
            for name, value in gradient_snr(model, cfg, snr_x, cfg.snr_draws).items():
                setattr(curves[-1], name, value)
        if checkpointing is not None and (
            epoch % checkpointing.every_epochs == 0 and epoch < len(epoch_lrs)
        ):
            _save_checkpoint(checkpointing.path, cfg, model, optimizer, generator, curves,
                             now - start, snr_init)

    diverged_epoch = train_epochs(
        epoch_lrs[len(curves):], step, n=n, batch_size=cfg.batch_size, optimizer=optimizer,
        generator=generator, curves=curves, start=start, on_epoch=on_epoch,
        total=len(epoch_lrs), after_epoch=after_epoch)
    train_seconds = time.perf_counter() - start
    return finish(cfg, dataset, model, device=device, curves=curves,
                  train_seconds=train_seconds, diverged_epoch=diverged_epoch, memory=memory,
                  compiled=compiled, compile=compile, snr_init=snr_init, progress=progress)


def finish(cfg: RunConfig, dataset: Dataset, model: LatentVariableModel, *,
           device: torch.device, curves: list[EpochRecord], train_seconds: float,
           diverged_epoch: int | None, memory: PeakMemory, compiled: bool,
           compile: str = "off", snr_init: dict | None = None,
           progress: ProgressLines | None = None) -> TrainResult:
    """The TrainResult of a trained model: a finished run (diverged_epoch None) evaluated on
    the test set (test LL with cfg.k_eval samples, blur, samples, inpainting, factors) from
    the run's evaluation stream; a diverged one with its training record only. Its own
    function so a stack (bench.families.stack) evaluates each variant as a solo run does.
    `compiled`: the training step ran compiled; `compile`: the run's mode, which decides
    whether the test-set estimate runs compiled (`should_compile_eval`). `snr_init`: the
    gradient SNR measured at initialisation (cfg.snr_draws > 0), stored with the final one.
    `progress`: where the test-set estimate and the disentanglement metrics write lines with
    an ETA while they run (bench.eta), None for none."""
    status = "finished" if diverged_epoch is None else "diverged"
    eval_compiled = status == "finished" and should_compile_eval(
        dataset.test.shape[0] * cfg.k_eval, device, compile)
    test, images, samples, inpainting, factors, bounds = None, {}, [], {}, {}, {}
    snr = dict(snr_init or {})
    if status == "finished":
        x_test = dataset.test.to(device)
        eval_generator = make_generator(cfg.seed + EVAL_STREAM, device)
        test = evaluate(model, x_test, cfg.k_eval, generator=eval_generator,
                        passes=compiled_passes() if eval_compiled else None,
                        progress=progress)
        images = blur_metrics(model, dataset, generator=eval_generator)
        samples = sample_records(model, dataset, generator=eval_generator)
        if cfg.eval_inpainting:  # last, so the metrics above are the same with or without it
            inpainting, inpaint_rows = evaluate_inpainting(
                model, dataset, generator=eval_generator, input_dropout=cfg.input_dropout)
            samples += inpaint_rows
        if has_factors(dataset):  # known generative factors: disentanglement and traversals
            factor_start = time.perf_counter()
            factors, traversals = factor_metrics(model, dataset, seed=cfg.seed, config=cfg,
                                                 progress=progress)
            factors["factor_seconds"] = time.perf_counter() - factor_start
            samples += traversals
        # from a stream of their own: every metric above is what it was without them
        own = None if cfg.capacity_max > 0 else objective_for(cfg)  # C: a training schedule
        bounds = test_bounds(model, x_test, cfg.k, own,
                             generator=make_generator(cfg.seed + BOUND_STREAM, device))
        bounds["kl_gap_k"] = test.test_ll - bounds["test_iwae_k"]
        if cfg.snr_draws:
            snr.update(gradient_snr(model, cfg, snr_batch(cfg, dataset, device),
                                    cfg.snr_draws))
    cost = {
        "flops_per_example": training_flops_per_example(model, cfg.k, views_for(cfg).split),
        "peak_memory_bytes": memory.peak_bytes(),
    }
    return TrainResult(
        status=status,
        config=cfg,
        model=model,
        curves=curves,
        test=test,
        train_seconds=train_seconds,
        diverged_epoch=diverged_epoch,
        cost=cost,
        images=images,
        samples=samples,
        inpainting=inpainting,
        factors=factors,
        bounds=bounds,
        snr=snr,
        compiled=compiled,
        eval_compiled=eval_compiled,
    )


def _save_checkpoint(path, cfg, model, optimizer, generator, curves, elapsed,
                     snr_init) -> None:
    """Write the state needed to continue exactly where training stands."""
    save_state(path, {
        "config_hash": cfg.config_hash,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "curves": [asdict(r) for r in curves],
        "elapsed": elapsed,
        "device_type": generator.device.type,  # RNG states do not move between device types
        "snr_init": snr_init,
    })


def _load_checkpoint(path, cfg, model, optimizer, generator
                     ) -> tuple[list[EpochRecord], float, dict]:
    state = load_state(path, cfg.config_hash, generator.device.type)
    model.load_state_dict(state["model"])
    load_optimizer_state(optimizer, state["optimizer"])
    generator.set_state(state["generator"])
    return ([EpochRecord(**r) for r in state["curves"]], float(state["elapsed"]),
            dict(state.get("snr_init", {})))
