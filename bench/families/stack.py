"""Many same-shape VAE-family variants trained as one stacked model (issue 16, part 3).

Variants that share everything but their seed and their scalar loss weights (beta, gamma)
have parameters of the same shapes, so N of them train as one model whose every parameter
has a leading variant axis (`torch.func.stack_module_state`), run through the model's own
forward under `vmap(functional_call)`: one batched matmul per layer instead of N small ones,
one Python loop, one optimiser step. On a GPU that is what keeps the device busy at batch 20;
on a CPU it ran at 0.93-1.35x the speed of the variants one after another, on one task's
CPUs where solo runs would fill every CPU slot, so the runner stacks only where runs get
GPUs (`--stack auto`).

Each variant stays exactly its solo run, within float tolerance (batched matmuls sum in
another order):
- its weights are initialised from its own seed (`build_model`);
- it has its own training generator, seeded as its solo run's, drawing in the solo order:
  the epoch's permutation, then per minibatch the binarisation, the input-dropout mask and
  the reparameterisation noise;
- the loss is the sum of the variants' losses, so each variant's gradient is its own, and
  one optimiser over the stack (Adam, BurdaAdam: elementwise) updates each exactly as its
  own optimiser would;
- a variant whose loss turns non-finite is recorded as diverged at that epoch, as its solo
  run would be, while the others train on (its NaNs stay in its slice);
- after training each variant is unstacked into its own model and evaluated by
  `bench.families.lvm.finish`, from its own evaluation stream.

Shared by the stack, and stated in each variant's row: wall time (train_seconds is the
stack's), peak memory, and samples/s (each variant's own examples per second; the stack
processed N times as many). Checkpoints hold the whole stack (`stack_id`) and resume it.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch.func import functional_call, stack_module_state, vmap

from bench.compiler import compile_fresh, compile_options
from bench.config import RunConfig
from bench.data import Dataset, binarize_dynamic, drop_pixels
from bench.errors import BenchError
from bench.families.compiling import should_compile
from bench.families.lvm import TrainResult, finish
from bench.families.registry import FAMILIES
from bench.loop import (
    TRAIN_STREAM,
    Checkpointing,
    EpochRecord,
    load_state,
    make_generator,
    save_state,
)
from bench.metrics.cost import PeakMemory
from bench.models import LatentVariableModel, build_model
from bench.objectives import objective_builder, objective_for, views_for
from bench.optim import load_optimizer_state, loss_scale, make_optimizer

#: the config keys variants of one stack may differ in; every other key is shared
FREE_KEYS = ("seed", "beta", "gamma")
#: the most variants one stack holds (the issue measured N = 4 and 16)
MAX_STACK = 16

StackEpoch = Callable[[int, EpochRecord, int], None]  # (variant index, record, total epochs)


def stack_key(cfg: RunConfig) -> str | None:
    """Configs with equal keys train as one stack; None for a config that never stacks (a
    family other than the VAE family: their loops are their own)."""
    if FAMILIES.of(cfg).name != "lvm" or cfg.snr_draws:  # SNR: measured on a solo model
        return None
    return cfg.replace(**{key: getattr(RunConfig, key) for key in FREE_KEYS}).config_hash


def stack_id(cfgs: Sequence[RunConfig]) -> str:
    """The stack's name, from its members' run_ids in order: `stack-<12 hex>`."""
    digest = hashlib.sha256(" ".join(c.run_id for c in cfgs).encode()).hexdigest()
    return f"stack-{digest[:12]}"


def group(cfgs: Sequence[RunConfig], max_size: int = MAX_STACK) -> list[list[int]]:
    """Indices of `cfgs` grouped into stacks of compatible configs (at most max_size each,
    in order of appearance); a config that stacks with nothing is a group of one."""
    groups: dict[str | int, list[list[int]]] = {}
    for i, cfg in enumerate(cfgs):
        key = stack_key(cfg)
        chunks = groups.setdefault(i if key is None else key, [[]])
        if len(chunks[-1]) == max_size:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


def train_stack(
    cfgs: Sequence[RunConfig],
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    on_epoch: StackEpoch | None = None,
    checkpointing: Checkpointing | None = None,
    compile: str = "off",
) -> list[TrainResult | VariantFailure]:
    """Train the variants `cfgs` (one `stack_key`) as one stacked model, then evaluate each;
    returns one TrainResult per config, in order, each equal to its solo `train` within
    float tolerance (a VariantFailure for a variant whose evaluation raised).
    `on_epoch(i, record, total)` follows variant i. With `checkpointing` the stack saves and
    resumes as one (its path should name the stack, `stack_id`). `compile` as `train`'s
    (auto: CUDA, or a long enough run)."""
    cfgs = list(cfgs)
    keys = {stack_key(c) for c in cfgs}
    if not cfgs or None in keys or len(keys) != 1:
        raise BenchError("a stack needs VAE-family configs that differ only in "
                         f"{', '.join(FREE_KEYS)}")
    base_cfg = cfgs[0]
    device = torch.device(device)
    memory = PeakMemory(device)
    memory.start()
    x_train = dataset.train.to(device)
    n, size = x_train.shape[0], len(cfgs)
    models = [build_model(c, dataset.dim, image_shape=dataset.image_shape,
                          pixel_mean=dataset.pixel_mean).to(device) for c in cfgs]
    params, buffers = stack_module_state(models)
    compiled = should_compile(base_cfg, n, device, compile)
    optimizer = make_optimizer(params.values(), base_cfg, fused=compiled)
    generators = [make_generator(c.seed + TRAIN_STREAM, device) for c in cfgs]
    epoch_lrs = base_cfg.epoch_lrs()
    steps_per_epoch = math.ceil(n / base_cfg.batch_size)

    curves: list[list[EpochRecord]] = [[] for _ in cfgs]
    diverged: list[int | None] = [None] * size
    elapsed_before, done = 0.0, 0  # training seconds and epochs before a resume
    if checkpointing is not None and checkpointing.path.exists():
        state = load_state(checkpointing.path, stack_id(cfgs), device.type)  # its members
        with torch.no_grad():
            for name, value in state["params"].items():
                params[name].copy_(value)
        load_optimizer_state(optimizer, state["optimizer"])
        for generator, saved in zip(generators, state["generators"], strict=True):
            generator.set_state(saved)
        curves = [[EpochRecord(**r) for r in rows] for rows in state["curves"]]
        diverged, elapsed_before, done = state["diverged"], state["elapsed"], state["epochs"]
    start = time.perf_counter() - elapsed_before

    step = stacked_step(models[0], optimizer, base_cfg, cfgs, params, buffers, device,
                         compiled, steps_done=done * steps_per_epoch)
    for epoch, lr in enumerate(epoch_lrs[done:], start=done + 1):
        if all(d is not None for d in diverged):
            break
        for group_ in optimizer.param_groups:
            group_["lr"] = lr
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros(size, device=device)
        orders = [torch.randperm(n, generator=g, device=g.device) for g in generators]
        for lo in range(0, n, base_cfg.batch_size):
            rows = [order[lo: lo + base_cfg.batch_size] for order in orders]
            batch = rows[0].shape[0]
            inputs = stack_inputs(models[0], base_cfg, x_train, rows, generators,
                                  binarized=dataset.binarized)
            loss_sum += step(*inputs, loss_scale(base_cfg, batch)) * batch
        mean_losses = (loss_sum / n).tolist()  # the one host sync per epoch
        now = time.perf_counter()
        for i, mean_loss in enumerate(mean_losses):
            if diverged[i] is not None:
                continue
            record = EpochRecord(epoch=epoch, lr=lr, train_bound=-mean_loss,
                                 samples_per_s=n / (now - epoch_start), wall_seconds=now - start)
            curves[i].append(record)
            if on_epoch is not None:
                on_epoch(i, record, len(epoch_lrs))
            if not math.isfinite(mean_loss):
                diverged[i] = epoch
        if checkpointing is not None and (
            epoch % checkpointing.every_epochs == 0 and epoch < len(epoch_lrs)
        ):
            save_state(checkpointing.path, {
                "config_hash": stack_id(cfgs),  # names every member's run_id
                "params": {name: p.detach() for name, p in params.items()},
                "optimizer": optimizer.state_dict(),
                "generators": [g.get_state() for g in generators],
                "curves": [[asdict(r) for r in rows] for rows in curves],
                "diverged": diverged,
                "epochs": epoch,
                "elapsed": now - start,
                "device_type": device.type,
            })
    train_seconds = time.perf_counter() - start

    results: list[TrainResult | VariantFailure] = []
    stacked = {**params, **buffers}
    for i, (cfg, model) in enumerate(zip(cfgs, models, strict=True)):
        with torch.no_grad():  # variant i's slice of the stack, back into its own model
            for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                tensor.copy_(stacked[name][i])
        try:  # one variant's failing evaluation must not cost the others theirs
            results.append(finish(cfg, dataset, model, device=device, curves=curves[i],
                                  train_seconds=train_seconds, diverged_epoch=diverged[i],
                                  memory=memory, compiled=compiled, compile=compile))
        except Exception as err:
            results.append(VariantFailure(err, traceback.format_exc()))
    return results


@dataclass(frozen=True)
class VariantFailure:
    """A stacked variant whose evaluation raised (its training finished with the stack)."""

    error: Exception
    traceback: str


def stack_inputs(template: LatentVariableModel, cfg: RunConfig, x_train: torch.Tensor,
                 rows: Sequence[torch.Tensor], generators: Sequence[torch.Generator], *,
                 binarized: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """One step's (xb, x_in, noise) for the stack, each with a leading variant axis:
    variant i's minibatch x_train[rows[i]], binarised, its input-dropout mask and its
    reparameterisation noise, all drawn from generators[i] in its solo run's order."""
    xbs, x_ins, noises = [], [], []
    for i, generator in enumerate(generators):
        xb = x_train[rows[i]]
        if binarized:
            xb = binarize_dynamic(xb, generator)
        if cfg.input_dropout:
            x_ins.append(drop_pixels(xb, cfg.input_dropout, generator))
        xbs.append(xb)
        noises.append(template.draw_noise(xb.shape[0], cfg.k, generator, xb.device))
    noise = [torch.stack(layer) for layer in zip(*noises, strict=True)]
    return torch.stack(xbs), torch.stack(x_ins) if x_ins else None, noise


def stacked_step(template: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: RunConfig, cfgs: Sequence[RunConfig], params: dict, buffers: dict,
                 device: torch.device, compiled: bool, steps_done: int,
                 options: dict | None = None) -> Callable[..., torch.Tensor]:
    """The stack's training step, a function of (xb, x_in, noise, scale), each with a
    leading variant axis (x_in None without input dropout): every variant's loss under
    vmap, their sum backwards, one optimiser step; returns the (N,) detached losses.
    `options`: torch.compile's (default `compile_options(device)`)."""
    base = copy.deepcopy(template).to("meta")  # the architecture; weights come from params
    betas = torch.tensor([c.beta for c in cfgs], device=device)
    gammas = torch.tensor([c.gamma for c in cfgs], device=device)
    capacity = objective_for(cfg) if cfg.capacity_max > 0 else None  # a ControlledCapacity
    objective = objective_builder(cfg)  # resolved here: nothing imports inside the graph
    views = views_for(cfg)
    if capacity is not None:
        capacity.steps_done = steps_done

    def variant_loss(p, b, xb, x_in, noise, beta, gamma, target):
        sample = functional_call(base, (p, b), (xb, cfg.k),
                                 {"views": views, "x_in": x_in, "noise": noise})
        if capacity is not None:
            return -capacity.bound(sample, target, gamma).mean()
        return -objective(beta)(sample).mean()

    dims = (0, 0, 0, 0 if cfg.input_dropout else None, 0, 0, 0, None)
    losses_of = vmap(variant_loss, in_dims=dims)
    if compiled:  # the optimiser's own multi-tensor step, as compiled_training_step's
        losses_of = compile_fresh(losses_of, compile_options(device) if options is None
                                  else options)

    def step(xb, x_in, noise, scale) -> torch.Tensor:
        target = 0.0
        if capacity is not None:  # C follows the optimisation steps taken, as solo
            target = capacity.capacity(capacity.steps_done)
            capacity.steps_done += 1
        if compiled and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        losses = losses_of(params, buffers, xb, x_in, noise, betas, gammas, target)
        optimizer.zero_grad(set_to_none=True)
        (losses.sum() * scale).backward()
        optimizer.step()
        return losses.detach()

    return step
