"""GPU throughput of the VAE family's training step (issue 16, part 5).

    .venv/bin/python benchmarks/gpu_throughput.py [--out results/gpu_throughput.json]

On one CUDA device, for the IWAE paper's models at its protocol (bench suite iwae_table1,
budget paper: BurdaAdam, batch 20) with batch 20 and 100 and k in {1, 5, 50} (1-layer; the
2-layer model at batch 20, for the projection), it measures training samples per second of

    alone       one run's step: eager, and graphed (torch.compile mode reduce-overhead:
                the step's kernels replayed as CUDA graphs), as the trainer runs them
    processes   N runs at once in N processes on the one GPU, each with its own CUDA
                context, Python loop and kernel launches: what N fractional-GPU Ray tasks
                are (eager, and graphed)
    stacked     N runs as one stacked step (bench.families.stack): eager, compiled
                (no graphs) and graphed

each step with the trainer's own per-step work (minibatch gather, dynamic binarisation, the
noise drawn from each run's generator), plus CUDA kernels per step and the GPU's busy
fraction (kernel time over wall time, torch.profiler) and the test-set estimate's speed;
then it projects the wall time of `vaebench run iwae_table1 --budget paper` with 3 seeds
(36 runs of 9.84 million steps and a k = 5000 estimate on 10,000 test images) in each mode.

It stays under --time-limit (default 450 s; measurements that would not fit are skipped and
listed). Without CUDA it says so and exits 0; `--device cpu` runs the same measurements on
the CPU as a functional check (no graphs there). Needs torch alone (no Ray, pandas): run it
from the repository root.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import queue
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, str(REPO))

try:
    import torch
except ModuleNotFoundError:  # a system Python: one line, not a traceback
    sys.exit("gpu_throughput: this Python has no torch: run it with .venv/bin/python "
             "(make install) or any Python with torch")

from bench.profile import sync_device  # noqa: E402

D, N_TRAIN, N_TEST, PAPER_SEEDS = 784, 60_000, 10_000, 3
BATCHES, KS = (20, 100), (1, 5, 50)
ALONE_MODES, PROCESS_MODES, STACK_MODES = ("eager", "graphed"), ("eager", "graphed"), (
    "eager", "compiled", "graphed")


@dataclass(frozen=True)
class Case:
    layers: int
    batch: int
    k: int

    @property
    def name(self) -> str:
        return f"{self.layers}layer-b{self.batch}-k{self.k}"


@dataclass
class Measure:
    case: str
    setting: str  # alone / processes / stacked
    mode: str  # eager / compiled / graphed
    runs: int  # runs trained at once
    samples_per_s: float  # all runs together
    step_ms: float  # wall time of one step (of the stack, or of each process)
    kernels_per_step: float | None = None
    busy_fraction: float | None = None
    compile_s: float | None = None  # not measured for processes


@dataclass
class Report:
    device: str
    torch_version: str
    measures: list[Measure] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)
    projection: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def paper_config(case: Case):
    """The iwae_table1 cell at budget paper with this case's layers, batch and k."""
    from bench.suite import load_suite, resolve_suite_path

    suite = load_suite(resolve_suite_path("iwae_table1"), "paper")
    name = f"{case.layers}layer"
    objective = "iwae" if case.k > 1 else "vae"
    for variant in suite.variants:
        cfg = variant.config
        if variant.name.startswith(name) and cfg.objective == objective and cfg.k in (1, 5, 50):
            return cfg.replace(k=case.k, batch_size=case.batch)
    raise SystemExit(f"iwae_table1 has no {name} {objective} variant")


def _compile_options(mode: str, device: torch.device) -> dict:
    """torch.compile's options of a mode: graphed is the trainer's CUDA choice (CUDA
    graphs); compiled is the trainer's choice on a CPU, and on CUDA the same graph without
    CUDA graphs."""
    from bench.compiler import compile_options

    if mode == "graphed" or device.type != "cuda":
        return compile_options(device)
    return {"dynamic": False}


def solo_step(case: Case, mode: str, device: torch.device, seed: int = 0):
    """The trainer's step for one run (bench.families.lvm), with its per-step draws."""
    from bench.data import binarize_dynamic
    from bench.families.lvm import compiled_training_step, training_step
    from bench.loop import make_generator
    from bench.models import build_model
    from bench.objectives import objective_for
    from bench.optim import loss_scale, make_optimizer

    cfg = paper_config(case).replace(seed=seed)
    model = build_model(cfg, D).to(device)
    optimizer = make_optimizer(model, cfg, fused=mode != "eager")
    bound, generator = objective_for(cfg), make_generator(seed, device)
    x_train = torch.rand((N_TRAIN // 10, D), generator=generator, device=device)
    scale = loss_scale(cfg, case.batch)
    fast = (compiled_training_step(model, optimizer, bound, case.k,
                                   options=_compile_options(mode, device))
            if mode != "eager" else None)

    def step() -> torch.Tensor:
        rows = torch.randint(0, x_train.shape[0], (case.batch,), generator=generator,
                             device=device)
        xb = binarize_dynamic(x_train[rows], generator)
        if fast is None:
            return training_step(model, optimizer, bound, xb, case.k, generator,
                                 loss_scale=scale)
        return fast(xb, None, model.draw_noise(case.batch, case.k, generator, device), scale)

    return step


def stacked(case: Case, mode: str, n: int, device: torch.device):
    """The stacked trainer's step for n seeds (bench.families.stack), with its draws."""
    from torch.func import stack_module_state

    from bench.families.stack import stack_inputs, stacked_step
    from bench.loop import make_generator
    from bench.models import build_model
    from bench.optim import loss_scale, make_optimizer

    cfgs = [paper_config(case).replace(seed=s) for s in range(n)]
    models = [build_model(c, D).to(device) for c in cfgs]
    params, buffers = stack_module_state(models)
    optimizer = make_optimizer(params.values(), cfgs[0], fused=mode != "eager")
    step = stacked_step(models[0], optimizer, cfgs[0], cfgs, params, buffers, device,
                        compiled=mode != "eager", steps_done=0,
                        options=_compile_options(mode, device))
    generators = [make_generator(s, device) for s in range(n)]
    x_train = torch.rand((N_TRAIN // 10, D), generator=generators[0], device=device)
    scale = loss_scale(cfgs[0], case.batch)

    def one() -> torch.Tensor:
        rows = [torch.randint(0, x_train.shape[0], (case.batch,), generator=g, device=device)
                for g in generators]
        return step(*stack_inputs(models[0], cfgs[0], x_train, rows, generators,
                                  binarized=True), scale)

    return one


def time_steps(step, device: torch.device, seconds: float, warmup: int = 3
               ) -> tuple[float, float]:
    """(compile and warm-up seconds, median seconds per step over blocks of steps)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync_device(device)
    compile_s = time.perf_counter() - start
    block, per_step = 10, []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(per_step) < 3:
        sync_device(device)
        t0 = time.perf_counter()
        for _ in range(block):
            step()
        sync_device(device)
        per_step.append((time.perf_counter() - t0) / block)
    return compile_s, statistics.median(per_step)


def kernel_profile(step, device: torch.device, step_s: float, steps: int = 5
                   ) -> tuple[float | None, float | None]:
    """(CUDA kernels per step, kernel time / wall time) from torch.profiler; (None, None)
    on a CPU."""
    if device.type != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync_device(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.device_time for e in kernels) / steps
    return len(kernels) / steps, min(1.0, busy_us * 1e-6 / step_s)


def _process_worker(case: Case, mode: str, seed: int, device: str, seconds: float,
                    barrier, results) -> None:
    torch.set_num_threads(1)
    dev = torch.device(device)
    step = solo_step(case, mode, dev, seed=seed)
    for _ in range(3):  # compiles and warms up before the common start
        step()
    sync_device(dev)
    barrier.wait()
    start, steps = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        for _ in range(10):
            step()
        steps += 10
    sync_device(dev)
    results.put((start, time.monotonic(), steps))


def processes(case: Case, mode: str, n: int, device: torch.device, seconds: float
              ) -> tuple[float, float]:
    """(samples/s of all n processes together, seconds per step of each) with n processes
    training at once from a common start."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(n), context.Queue()
    workers = [context.Process(target=_process_worker,
                               args=(case, mode, seed, str(device), seconds, barrier, results))
               for seed in range(n)]
    for worker in workers:
        worker.start()
    spans = []
    while len(spans) < n:  # a worker that dies (a crash, out of memory) is an error, not a hang
        try:
            spans.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:
                for worker in workers:
                    worker.kill()
                raise RuntimeError(f"a benchmark process exited with code {dead[0]}") from None
    for worker in workers:
        worker.join()
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    steps = sum(s for _, _, s in spans)
    return steps * case.batch / wall, wall / (steps / n)


def evaluation_speed(device: torch.device, compiled: bool, examples: int = 64) -> float:
    """Seconds per test example per 1000 samples of the k_eval estimate (1-layer model) on
    `examples` test examples."""
    from bench.loop import make_generator
    from bench.metrics.likelihood import compiled_passes, evaluate
    from bench.models import build_model

    cfg = paper_config(Case(1, 20, 1))
    model = build_model(cfg, D).to(device)
    generator = make_generator(0, device)
    x = torch.bernoulli(torch.full((examples, D), 0.13, device=device), generator=generator)
    passes = compiled_passes() if compiled else None
    evaluate(model, x, 5000, generator=generator, passes=passes)  # compiles, warms
    times = []
    for _ in range(3):
        sync_device(device)
        t0 = time.perf_counter()
        evaluate(model, x, 5000, generator=generator, passes=passes)
        sync_device(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / examples / 5


def project(report: Report, seeds: int = PAPER_SEEDS) -> dict:
    """Projected hours of iwae_table1 at budget paper with `seeds` seeds in each mode: the
    12 cells' runs one after another (alone), the seeds of a cell as processes sharing the
    GPU, or as one stack (measured with `seeds` runs; None otherwise, or when a cell's case
    was not measured); plus each run's k = 5000 estimate of the test set, eager for mode
    eager and compiled for the others (as --compile auto / off run it). Approximations: the
    estimate's speed is the 1-layer model's for all 12 cells (the 2-layer cells' estimates
    are longer), and the estimates of a cell's seeds count one after another, also where
    the seeds themselves train at once."""
    from bench.suite import load_suite, resolve_suite_path

    suite = load_suite(resolve_suite_path("iwae_table1"), "paper")
    cells = [v.config for v in suite.variants if v.seed == suite.seeds[0]]
    by = {(m.case, m.setting, m.mode): m for m in report.measures}
    out: dict[str, float | None] = {}
    for setting, modes in (("alone", ALONE_MODES), ("processes", PROCESS_MODES),
                           ("stacked", STACK_MODES)):
        for mode in modes:
            kind = "eager" if mode == "eager" else "compiled"
            eval_s = report.evaluation.get(f"{kind}_s_per_example_per_1000", math.nan)
            eval_run = N_TEST * 5 * eval_s  # k_eval 5000 = 5 x 1000 samples per example
            total = 0.0
            for cfg in cells:
                case = Case(len(cfg.latent), cfg.batch_size, cfg.k).name
                steps = len(cfg.epoch_lrs()) * math.ceil(N_TRAIN / cfg.batch_size)
                m = by.get((case, setting, mode))
                if m is None or m.runs != (1 if setting == "alone" else seeds):
                    total = math.nan
                    break
                # alone: seeds one after another; processes and stacks: the seeds at once
                total += (seeds if setting == "alone" else 1) * steps * m.step_ms / 1e3
                total += seeds * eval_run
            out[f"{setting}/{mode}"] = None if math.isnan(total) else total / 3600
    return out


def run(args) -> Report:
    device = torch.device(args.device)
    report = Report(device=(torch.cuda.get_device_name(device) if device.type == "cuda"
                            else f"cpu ({torch.get_num_threads()} threads)"),
                    torch_version=torch.__version__)
    began = time.perf_counter()
    cases = [Case(1, b, k) for b in args.batches for k in args.ks]
    cases += [Case(2, 20, k) for k in args.ks if 20 in args.batches and args.two_layer]
    modes = [m for m in args.modes if device.type == "cuda" or m != "graphed"]
    plan = [(case, setting, mode) for case in cases
            for setting, known in (("alone", ALONE_MODES), ("stacked", STACK_MODES),
                                   ("processes", PROCESS_MODES))
            for mode in known if setting in args.settings and mode in modes]
    for case, setting, mode in plan:
        if time.perf_counter() - began > args.time_limit:
            report.skipped.append(f"{case.name} {setting} {mode} (time limit)")
            continue
        n = 1 if setting == "alone" else args.n
        if setting == "processes":
            samples, step_s = processes(case, mode, n, device, args.seconds)
            measure = Measure(case.name, setting, mode, n, samples, step_s * 1e3)
        else:
            step = (solo_step(case, mode, device) if setting == "alone"
                    else stacked(case, mode, n, device))
            compile_s, step_s = time_steps(step, device, args.seconds)
            kernels, busy = kernel_profile(step, device, step_s)
            measure = Measure(case.name, setting, mode, n, n * case.batch / step_s,
                              step_s * 1e3, kernels, busy, compile_s)
        report.measures.append(measure)
        print(_line(measure), flush=True)
    if "evaluation" in args.settings:
        report.evaluation = {
            f"{kind}_s_per_example_per_1000": evaluation_speed(device, compiled,
                                                               args.eval_examples)
            for kind, compiled in (("eager", False), ("compiled", True))}
    report.projection = project(report)
    report.seconds = time.perf_counter() - began
    return report


def _line(m: Measure) -> str:
    extra = "" if m.kernels_per_step is None else (
        f"  {m.kernels_per_step:.0f} kernels/step  busy {m.busy_fraction:.0%}")
    return (f"{m.case:<18} {m.setting:<9} {m.mode:<8} x{m.runs:<3} "
            f"{m.samples_per_s:>12,.0f} samples/s  {m.step_ms:8.3f} ms/step{extra}")


def markdown(report: Report) -> str:
    lines = [f"GPU throughput on {report.device} (torch {report.torch_version}, "
             f"{report.seconds:.0f} s)", "",
             "| case | setting | mode | runs | samples/s | ms/step | kernels/step | busy | "
             "compile s |", "|---|---|---|---|---|---|---|---|---|"]
    for m in report.measures:
        kernels = "" if m.kernels_per_step is None else f"{m.kernels_per_step:.0f}"
        busy = "" if m.busy_fraction is None else f"{m.busy_fraction:.0%}"
        lines.append(f"| {m.case} | {m.setting} | {m.mode} | {m.runs} | "
                     f"{m.samples_per_s:,.0f} | {m.step_ms:.3f} | {kernels} | {busy} | "
                     f"{'' if m.compile_s is None else f'{m.compile_s:.1f}'} |")
    if report.evaluation:
        lines += ["", "Test-set estimate: " + ", ".join(
            f"{k.split('_')[0]} {v * 1e3:.2f} ms per example per 1000 samples"
            for k, v in report.evaluation.items())]
    lines += ["", f"Projected wall time of iwae_table1 --budget paper, {PAPER_SEEDS} seeds "
              "(hours; training + k = 5000 estimates):", ""]
    lines += [f"- {mode}: " + ("not measured" if hours is None else f"{hours:,.1f} h")
              for mode, hours in report.projection.items()]
    if report.skipped:
        lines += ["", "Skipped: " + "; ".join(report.skipped)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check)")
    parser.add_argument("--n", type=int, default=PAPER_SEEDS,
                        help=f"runs per stack and per set of processes (default "
                             f"{PAPER_SEEDS}: the seeds of a cell)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--eval-examples", type=int, default=64,
                        help="test examples the estimate's speed is timed on (default 64)")
    parser.add_argument("--no-two-layer", dest="two_layer", action="store_false",
                        help="skip the 2-layer cases (then no projection)")
    parser.add_argument("--settings", nargs="+",
                        default=["alone", "stacked", "processes", "evaluation"],
                        choices=["alone", "stacked", "processes", "evaluation"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled", "graphed"],
                        choices=["eager", "compiled", "graphed"],
                        help="the step modes to measure (graphed needs CUDA)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds per measurement after warm-up (default 2)")
    parser.add_argument("--time-limit", type=float, default=450.0,
                        help="stop starting measurements after this many seconds "
                             "(default 450; the rest are listed as skipped)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.n < 1 or args.seconds <= 0:
        parser.error("--n must be >= 1 and --seconds > 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; nothing measured (use --device cpu for a "
              "functional check)")
        return 0
    report = run(args)
    print(markdown(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
