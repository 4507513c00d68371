"""Profile training steps of one variant with torch.profiler.

`profile_variant(cfg, out_dir=...)` runs a few unprofiled warm-up steps, then `steps` training
steps (the trainer's own `training_step`) under `torch.profiler.profile`, each wrapped in a
`record_function("train_step")`, and writes into `out_dir`:

* ``trace.json``   Chrome trace (open in chrome://tracing or https://ui.perfetto.dev)
* ``top_ops.txt``  the profiler's table of the top operators by self time
* ``summary.json`` step time, top operators with their share of self time, kernel launches
  (CUDA) or operator calls (CPU) per step, analytic FLOP/step, achieved FLOP/s and the
  fraction of a float32 matmul peak measured on the same device just after.

The FLOP count is analytic (`training_flops_per_example * batch_size`, matmuls only), so
`peak_fraction` says how close the step comes to what the device does on a large matmul.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.config import RunConfig
from bench.data import binarize_dynamic, drop_pixels
from bench.errors import BenchError, make_directory
from bench.families.lvm import training_step
from bench.families.registry import FAMILIES
from bench.loop import load_data, make_generator
from bench.metrics.cost import forward_flops_per_example, training_flops_per_example
from bench.metrics.likelihood import evaluate
from bench.models import build_model
from bench.objectives import objective_for, views_for
from bench.optim import loss_scale, make_optimizer
from bench.suite import load_suite, resolve_suite_path

TOP_N = 15
_STEP_LABEL = "train_step"
EVAL_EXAMPLES, EVAL_SAMPLES = 32, 1000


@dataclass(frozen=True)
class ProfileResult:
    out_dir: Path
    trace_path: Path  # Chrome trace JSON
    table_path: Path  # text table of the top operators
    summary_path: Path  # JSON summary
    device: str
    steps: int
    step_seconds_median: float
    # name, self_cpu_time_us, self_device_time_us (0 on CPU), calls, share (of total self time)
    top_ops: list[dict] = field(default_factory=list)
    kernels_per_step: float = 0.0  # CUDA kernel launches (CUDA) or aten:: op calls (CPU)
    kernels_unit: str = "aten ops"  # what kernels_per_step counts
    flops_per_step: float = 0.0  # analytic: training_flops_per_example(model, k) * batch_size
    achieved_flops_per_s: float = 0.0
    matmul_peak_flops_per_s: float = 0.0  # float32 matmul measured on the same device
    peak_fraction: float = 0.0
    label: str = ""
    # the test-set estimate (bench.metrics.likelihood.evaluate) on EVAL_EXAMPLES test
    # examples x min(k_eval, EVAL_SAMPLES) samples: seconds per example per 1000 samples, and
    # that time over its floor (its forward matmul FLOPs at the measured matmul peak)
    eval_seconds_per_1000: float = 0.0
    eval_floor_ratio: float = 0.0
    eval_samples: int = 0  # its min(k_eval, EVAL_SAMPLES)
    eval_examples: int = 0  # its min(test examples, EVAL_EXAMPLES)


def sync_device(device: torch.device | str) -> None:
    """Wait for `device`'s queued kernels (a no-op on the CPU, whose kernels are synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: str, size: int | None = None, reps: int = 5) -> float:
    """FLOP/s of a large float32 matmul on `device` (median of `reps` timed runs, after one
    warm-up): size 2048 on CPU, 8192 on CUDA unless given."""
    dev = torch.device(device)
    if size is None:
        size = 8192 if dev.type == "cuda" else 2048
    if reps < 1:
        raise BenchError(f"reps must be >= 1, got {reps}")
    gen = make_generator(0, dev)
    a = torch.randn(size, size, device=dev, generator=gen)
    b = torch.randn(size, size, device=dev, generator=gen)
    torch.matmul(a, b)  # warm-up (allocations, library initialisation)
    sync_device(dev)
    times = []
    for _ in range(reps):
        sync_device(dev)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync_device(dev)
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def _self_device_us(evt) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(evt, attr, None)
        if value is not None:
            return float(value)
    return 0.0


def _is_device_event(evt) -> bool:
    dtype = getattr(evt, "device_type", None)
    return dtype is not None and "CUDA" in str(dtype)


def profile_variant(
    cfg: RunConfig,
    *,
    steps: int = 20,
    warmup: int = 3,
    out_dir: Path,
    device: str = "cpu",
    label: str = "",
) -> ProfileResult:
    """Profile `steps` training steps of `cfg` on `device` after `warmup` unprofiled ones;
    write the trace, table and summary into `out_dir` and return a ProfileResult."""
    if steps < 1 or warmup < 0:
        raise BenchError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, "
                         f"warmup={warmup}")
    if FAMILIES.of(cfg).toy:
        raise BenchError(f"profiling covers the image data sets; dataset '{cfg.dataset}' is a "
                         f"toy (bench.toys)")
    if cfg.model != "lvm":
        raise BenchError(f"profiling covers model 'lvm' (bench.families.lvm.training_step); model "
                         f"'{cfg.model}' trains with its own family code (bench.families)")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device '{device}' requested but CUDA is not available")
    out_dir = make_directory(Path(out_dir), "profile directory")

    dataset = load_data(cfg)
    x_train = dataset.train.to(dev)
    n = x_train.shape[0]
    model = build_model(cfg, dataset.dim, image_shape=dataset.image_shape,
                        pixel_mean=dataset.pixel_mean).to(dev)
    optimizer = make_optimizer(model, cfg)
    bound_fn = objective_for(cfg)
    generator = make_generator(cfg.seed, dev)
    views = views_for(cfg)
    batch = min(cfg.batch_size, n)

    # minibatches as the trainer draws them: slices of a random permutation, reshuffled
    # whenever one runs out
    state = {"order": torch.randperm(n, generator=generator, device=dev), "lo": 0}

    def next_batch() -> torch.Tensor:
        if state["lo"] + batch > n:
            state["order"] = torch.randperm(n, generator=generator, device=dev)
            state["lo"] = 0
        idx = state["order"][state["lo"] : state["lo"] + batch]
        state["lo"] += batch
        xb = x_train[idx]
        return binarize_dynamic(xb, generator) if dataset.binarized else xb

    def step() -> None:
        xb = next_batch()
        x_in = drop_pixels(xb, cfg.input_dropout, generator) if cfg.input_dropout else None
        training_step(model, optimizer, bound_fn, xb, cfg.k, generator,
                      views=views, x_in=x_in, loss_scale=loss_scale(cfg, len(xb)))

    model.train()
    for _ in range(warmup):
        step()
    sync_device(dev)

    activities = [ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    times: list[float] = []
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            sync_device(dev)
            start = time.perf_counter()
            with record_function(_STEP_LABEL):
                step()
            sync_device(dev)
            times.append(time.perf_counter() - start)

    trace_path = out_dir / "trace.json"
    table_path = out_dir / "top_ops.txt"
    summary_path = out_dir / "summary.json"
    prof.export_chrome_trace(str(trace_path))

    on_gpu = dev.type == "cuda"
    sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    averages = [e for e in prof.key_averages() if e.key != _STEP_LABEL]
    table = prof.key_averages().table(sort_by=sort_key, row_limit=TOP_N)
    table_path.write_text(table + "\n")

    def self_time(evt) -> float:
        return _self_device_us(evt) if on_gpu else float(evt.self_cpu_time_total)

    total_self = sum(self_time(e) for e in averages) or 1.0
    ranked = sorted(averages, key=self_time, reverse=True)[:TOP_N]
    top_ops = [
        {
            "name": e.key,
            "self_cpu_time_us": float(e.self_cpu_time_total),
            "self_device_time_us": _self_device_us(e) if on_gpu else 0.0,
            "calls": int(e.count),
            "share": self_time(e) / total_self,
        }
        for e in ranked
    ]

    if on_gpu:
        launches = sum(1 for e in prof.events() if _is_device_event(e) and e.name != _STEP_LABEL)
        unit = "CUDA kernels"
    else:
        launches = sum(e.count for e in averages if e.key.startswith("aten::"))
        unit = "aten ops"
    kernels_per_step = launches / steps

    step_median = statistics.median(times)
    flops_per_step = training_flops_per_example(model, cfg.k, views.split) * batch
    achieved = flops_per_step / step_median if step_median > 0 else 0.0
    peak = measure_matmul_peak(device)
    fraction = achieved / peak if peak > 0 else 0.0
    eval_seconds, eval_floor = _time_evaluation(model, dataset.test, cfg, dev, peak)

    result = ProfileResult(
        out_dir=out_dir, trace_path=trace_path, table_path=table_path,
        summary_path=summary_path, device=_device_name(dev), steps=steps,
        step_seconds_median=step_median, top_ops=top_ops, kernels_per_step=kernels_per_step,
        kernels_unit=unit, flops_per_step=flops_per_step, achieved_flops_per_s=achieved,
        matmul_peak_flops_per_s=peak, peak_fraction=fraction, label=label or cfg.label,
        eval_seconds_per_1000=eval_seconds, eval_floor_ratio=eval_floor,
        eval_samples=min(cfg.k_eval, EVAL_SAMPLES),
        eval_examples=min(dataset.test.shape[0], EVAL_EXAMPLES),
    )
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    summary.update(
        kernels_per_step_counts=("CUDA kernel launches per step" if on_gpu
                                 else "aten:: operator calls per step"),
        step_seconds=times, warmup=warmup, batch_size=batch, k=cfg.k,
        config_hash=cfg.config_hash, torch_version=torch.__version__,
        threads=torch.get_num_threads(),
    )
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _time_evaluation(model, x_test: torch.Tensor, cfg: RunConfig, dev: torch.device,
                     peak: float) -> tuple[float, float]:
    """(seconds per example per 1000 samples, ratio to the matmul floor) of the eager
    test-set estimate on the first EVAL_EXAMPLES test examples, median of three."""
    x = x_test[:EVAL_EXAMPLES].to(dev)
    k = min(cfg.k_eval, EVAL_SAMPLES)
    generator = make_generator(cfg.seed, dev)
    times = []
    for _ in range(4):  # the first warms up
        sync_device(dev)
        start = time.perf_counter()
        evaluate(model, x, k, generator=generator)
        sync_device(dev)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    floor = x.shape[0] * forward_flops_per_example(model, k) / peak if peak > 0 else 0.0
    return seconds / x.shape[0] / (k / 1000), seconds / floor if floor > 0 else 0.0


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def profile_suite_variant(
    suite: str,
    variant: str,
    *,
    budget: str | None = None,
    steps: int = 20,
    out_dir: Path,
    device: str = "cpu",
) -> ProfileResult:
    """Profile the named variant of a suite (its first seed) at `budget`."""
    loaded = load_suite(resolve_suite_path(suite), budget)
    match = next((v for v in loaded.variants if v.name == variant), None)
    if match is None:
        names = dict.fromkeys(v.name for v in loaded.variants)
        raise BenchError(f"suite '{loaded.name}' has no variant '{variant}' "
                         f"(known: {', '.join(names)})")
    label = f"{loaded.name}/{match.name} (budget {loaded.budget}, seed {match.seed})"
    return profile_variant(match.config, steps=steps, out_dir=out_dir, device=device,
                           label=label)


def _short(name: str, width: int = 40) -> str:
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 1] + "~"


def format_profile(result: ProfileResult, top: int = 8) -> str:
    """A human-readable summary of a ProfileResult."""
    on_gpu = result.device.startswith("cuda")
    lines = [
        f"profile {result.label}".rstrip(),
        f"  device        {result.device}",
        f"  step time     {result.step_seconds_median * 1e3:.3f} ms (median of {result.steps})",
        f"  top ops by self {'device' if on_gpu else 'CPU'} time:",
    ]
    for op in result.top_ops[:top]:
        us = op["self_device_time_us"] if on_gpu else op["self_cpu_time_us"]
        lines.append(f"    {op['share'] * 100:5.1f}%  {_short(op['name']):40s} "
                     f"{us / result.steps:9.1f} us/step  {op['calls'] / result.steps:6.1f} "
                     f"calls/step")
    lines += [
        f"  {result.kernels_unit} per step  {result.kernels_per_step:.1f}",
        f"  FLOP/step     {result.flops_per_step:.3e} (analytic, matmuls)",
        f"  achieved      {result.achieved_flops_per_s / 1e9:.2f} GFLOP/s vs measured "
        f"matmul peak {result.matmul_peak_flops_per_s / 1e9:.2f} GFLOP/s "
        f"= {result.peak_fraction * 100:.1f}% of peak",
        f"  evaluation    {result.eval_seconds_per_1000 * 1e3:.2f} ms per test example per "
        f"1000 samples = {result.eval_floor_ratio:.2f}x its matmul floor (eager, "
        f"{result.eval_examples} examples x {result.eval_samples} samples)",
        f"  files         {result.trace_path}, {result.table_path}, {result.summary_path}",
    ]
    return "\n".join(lines)
