"""The projected cost of planned runs, for `vaebench run --dry-run`: FLOPs and wall time.

Per run still to run:

    FLOPs   training: `training_flops_per_example` (its model, k, the objective's split view)
            x training examples x epochs of its budget; evaluation: the test-set estimate
            (`forward_flops_per_example` at k_eval x test examples) plus the test-set bounds
            at the training k (bench.metrics.likelihood.test_bounds: its own stream, one more
            forward pass of k samples per test example). Not counted: the blur metrics and
            sample grids (a few hundred decoder passes), imputation, the disentanglement
            metrics' forests, gradient-SNR draws. Known for the VAE family (model lvm); for
            other families (EM mixture, CVAE, M2, the toys) the FLOPs are "unknown", not
            guessed.
    time    from a measured rate, its source named per run:
            stored      the stored train_samples_per_s and eval_samples_per_s of a finished
                        run of the same variant (its config but the seed) on this machine
                        (the same sys_hostname, sys_device_name and, on a CPU,
                        sys_torch_threads = --cpus-per-run); for families without FLOPs its
                        stored sys_wall_seconds
            calibrated  a few timed eager training steps of the run's model at its batch size
                        and k on random data, and a short timed estimate; once per distinct
                        shape, cached in the Projector (0.8 s each for iwae_table1's
                        1-layer models on 2 shared CPU cores, after the first's imports)
            GPU         with `--rates FILE` (benchmarks/gpu_throughput.py --out FILE): the
                        measured samples/s of the matching (layers, batch, k) entry of the
                        IWAE paper's MNIST models, or else the nearest entry of the same depth
                        scaled by FLOPs per example (named "nearest"); the estimate from the
                        file's evaluation speed (the 1-layer model's) scaled by forward FLOPs

Totals: the sums, and the time here divided by the runner's slots (runs at once: Ray on
this machine runs cpu_count // --cpus-per-run, the local executor one).

A Projector holds its caches (models per architecture, calibrations per shape, the stored
rates' index); nothing is global. Dataset sizes come from the data sets' fixed splits, so
nothing is loaded or downloaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import RunConfig, config_from_dict
from bench.errors import BenchError
from bench.eta import clock_text
from bench.families.registry import FAMILIES

#: the MNIST models of gpu_throughput.py's cases (bench suite iwae_table1): layers -> model
PAPER_DIM = 784
PAPER_MODELS = {1: (((200, 200),), (50,)), 2: (((200, 200), (100, 100)), (100, 50))}
CALIBRATE_SECONDS = 0.5  # timed training steps per shape (after two warm-up steps)
CALIBRATE_EVAL_SECONDS = 0.2  # timed test-set estimate per shape
CALIBRATE_EVAL_SAMPLES = 1000  # its samples per example (k_eval when smaller)


@dataclass(frozen=True)
class DataShape:
    """A data set's size without loading it: training and test examples, pixels, image."""

    n_train: int
    n_test: int
    dim: int
    image_shape: tuple[int, int] | None


def data_shape(cfg: RunConfig) -> DataShape:
    """The fixed split sizes of cfg.dataset (bench.data), cut to train_size / test_size."""
    if cfg.dataset == "digits":
        from bench.data.digits import DIGITS_TEST_SIZE

        full = DataShape(1797 - DIGITS_TEST_SIZE, DIGITS_TEST_SIZE, 64, (8, 8))
    elif cfg.dataset == "mnist":
        full = DataShape(60_000, 10_000, PAPER_DIM, (28, 28))
    elif cfg.dataset in ("shapes", "shapes_small"):
        from bench.data.shapes import PRESETS, TEST_FRACTION

        spec = PRESETS["full" if cfg.dataset == "shapes" else "small"]
        n_test = int(round(TEST_FRACTION * spec.count))
        full = DataShape(spec.count - n_test, n_test, spec.size**2, (spec.size, spec.size))
    else:
        raise BenchError(f"dataset '{cfg.dataset}' has no known size")
    return DataShape(min(full.n_train, cfg.train_size or full.n_train),
                     min(full.n_test, cfg.test_size or full.n_test), full.dim, full.image_shape)


@dataclass(frozen=True)
class Work:
    """What one run does, in countable units."""

    train_examples: int  # training examples x epochs
    test_examples: int
    eval_samples: int  # samples per test example: k_eval (estimate) + k (bounds)
    train_flops: float | None  # None: unknown for its family
    eval_flops: float | None


@dataclass(frozen=True)
class Projection:
    """One run's projected cost; a None time or FLOPs is unknown, its source says why."""

    run_id: str
    train_flops: float | None
    eval_flops: float | None
    here_s: float | None
    here_source: str
    gpu_s: float | None = None
    gpu_source: str | None = None  # None: no --rates


@dataclass(frozen=True)
class Machine:
    """Where the time here is projected: stored rows match it by these provenance columns."""

    hostname: str
    device: str  # "cpu" or "cuda"
    device_name: str
    threads: int  # torch threads per run (--cpus-per-run)
    slots: int  # runs at once
    slots_why: str


def this_machine(cpus_per_run: int, executor: str, address: str | None) -> Machine:
    """This machine as the runner would use it (CUDA where torch sees it, else the CPU)."""
    import torch

    from bench.provenance import device_name

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpus = os.cpu_count() or 1
    if executor == "local":
        slots, why = 1, "--executor local runs one at a time"
    else:
        slots = max(1, cpus // cpus_per_run)
        why = (f"Ray on this machine's {cpus} CPUs, --cpus-per-run {cpus_per_run}"
               + (" (--address: a cluster's slots are not known here)" if address else ""))
    return Machine(socket.gethostname(), device, device_name(device), cpus_per_run, slots, why)


# ---------------------------------------------------------------- stored rates
@dataclass(frozen=True)
class StoredRate:
    run_id: str
    train_samples_per_s: float
    eval_samples_per_s: float
    wall_seconds: float


def stored_rates(runs, machine: Machine) -> dict[str, StoredRate]:
    """Finished rows of this machine, by their config without the seed
    (bench.compare.variant_keys; the last wins); rows of a stack (sys_stack_size > 1) share
    a step and do not stand for a solo run."""
    if runs is None or runs.empty:
        return {}
    from bench.compare import variant_keys

    def col(row: dict, name: str):
        value = row.get(name)
        return None if value is None or (isinstance(value, float) and value != value) else value

    kept: list[int] = []
    rates: list[StoredRate] = []
    for position, row in enumerate(runs.to_dict("records")):
        if row.get("status") != "finished":
            continue
        if (col(row, "sys_hostname") != machine.hostname
                or col(row, "sys_device_name") != machine.device_name
                or not str(col(row, "sys_device") or "").startswith(machine.device)):
            continue
        threads = col(row, "sys_torch_threads")
        if machine.device == "cpu" and (threads is None or int(threads) != machine.threads):
            continue
        stack = col(row, "sys_stack_size")
        if stack is not None and int(stack) > 1:
            continue
        kept.append(position)
        rates.append(StoredRate(
            str(row.get("run_id")), float(col(row, "metric_train_samples_per_s") or math.nan),
            float(col(row, "metric_eval_samples_per_s") or math.nan),
            float(col(row, "sys_wall_seconds") or math.nan)))
    # one variant_key per distinct config, not per row (10^5 rows: seconds, not a minute)
    return dict(zip(variant_keys(runs.iloc[kept]), rates, strict=True))


# ---------------------------------------------------------------- GPU rates file
@dataclass(frozen=True)
class GpuEntry:
    name: str  # gpu_throughput.py's case: "1layer-b20-k5"
    mode: str  # eager / compiled / graphed
    layers: int
    batch: int
    k: int
    samples_per_s: float


@dataclass(frozen=True)
class GpuRates:
    """gpu_throughput.py's JSON report: its solo-run training rates and estimate speed."""

    path: Path
    device: str
    entries: tuple[GpuEntry, ...]
    eval_s_per_example_per_1000: dict[str, float] = field(default_factory=dict)


_CASE = re.compile(r"^(\d+)layer-b(\d+)-k(\d+)$")


def read_rates(path: Path) -> GpuRates:
    """Read a gpu_throughput.py --out file; a file of another shape is one line."""
    try:
        report = json.loads(Path(path).read_text())
        entries = []
        for m in report["measures"]:
            match = _CASE.match(str(m["case"]))
            if m["setting"] != "alone" or int(m["runs"]) != 1 or match is None:
                continue  # a set of processes or a stack is not one run's rate
            layers, batch, k = (int(g) for g in match.groups())
            rate = float(m["samples_per_s"])
            if not (batch > 0 and k > 0 and rate > 0 and math.isfinite(rate)):
                raise ValueError(f"case {m['case']} at {rate} samples/s is not a rate")
            entries.append(GpuEntry(m["case"], str(m["mode"]), layers, batch, k, rate))
        evaluation = {}
        for key, value in dict(report.get("evaluation") or {}).items():
            speed = float(value)
            if not (speed > 0 and math.isfinite(speed)):
                raise ValueError(f"evaluation {key} at {speed} s is not a speed")
            evaluation[key.split("_")[0]] = speed
        return GpuRates(Path(path), str(report["device"]), tuple(entries), evaluation)
    except OSError as err:
        raise BenchError(f"--rates {path}: cannot read it ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise BenchError(f"--rates {path}: not a benchmarks/gpu_throughput.py --out report "
                         f"({type(err).__name__}: {err})") from None


def mode_order(compile: str) -> tuple[str, ...]:
    """The step modes to take from a rates file, best first, as `--compile` runs on CUDA."""
    return ("eager",) if compile == "off" else ("graphed", "compiled", "eager")


# ---------------------------------------------------------------- the projector
Clock = Callable[[], float]


class Projector:
    """Projects runs' cost, caching models (per architecture), FLOPs (per architecture, k,
    view), calibrations (per shape) and the stored rates' index."""

    def __init__(self, machine: Machine, runs=None, *, calibrate: bool = True,
                 rates: GpuRates | None = None, compile: str = "auto",
                 clock: Clock = time.perf_counter):
        self.machine = machine
        self.stored = stored_rates(runs, machine)
        self.calibrate = calibrate
        self.rates = rates
        self.compile = compile
        self.clock = clock
        self._models: dict[tuple, object] = {}
        self._flops: dict[tuple, tuple[float, float, float]] = {}
        self._calibrated: dict[tuple, tuple[float, float] | str] = {}

    # -- FLOPs
    def _architecture(self, cfg: RunConfig) -> tuple:
        from bench.components import POSTERIORS

        shape = data_shape(cfg)
        return (shape.dim, shape.image_shape, cfg.hidden, cfg.latent,
                cfg.likelihood, cfg.posterior, cfg.flow_steps, cfg.architecture,
                tuple((p.name, cfg.param(p.name)) for p in POSTERIORS.get(cfg.posterior).params))

    def model(self, cfg: RunConfig):
        """The run's model on the CPU (weights unused: only its shapes), one per architecture."""
        key = self._architecture(cfg)
        if key not in self._models:
            from bench.models import build_model

            shape = data_shape(cfg)
            self._models[key] = build_model(cfg, shape.dim, image_shape=shape.image_shape)
        return self._models[key]

    def flops(self, cfg: RunConfig) -> tuple[float, float, float]:
        """(training FLOPs per example, estimate FLOPs per test example at k_eval, bound
        FLOPs per test example at k) of an lvm run."""
        from bench.objectives import views_for

        split = views_for(cfg).split
        key = (self._architecture(cfg), cfg.k, cfg.k_eval, split)
        if key not in self._flops:
            from bench.metrics.cost import forward_flops_per_example, training_flops_per_example

            model = self.model(cfg)
            self._flops[key] = (training_flops_per_example(model, cfg.k, split),
                                forward_flops_per_example(model, cfg.k_eval),
                                forward_flops_per_example(model, cfg.k))
        return self._flops[key]

    def work(self, cfg: RunConfig) -> Work | None:
        """What the run does; None for a family or toy whose work is not known here."""
        family = FAMILIES.of(cfg)
        if family.toy or cfg.model != "lvm":
            return None
        shape = data_shape(cfg)
        train_examples = shape.n_train * len(cfg.epoch_lrs())
        per_example, estimate, bounds = self.flops(cfg)
        return Work(train_examples, shape.n_test, cfg.k_eval + cfg.k,
                    per_example * train_examples, (estimate + bounds) * shape.n_test)

    # -- rates here
    def _shape(self, cfg: RunConfig) -> tuple:
        return (self._architecture(cfg), cfg.k, min(cfg.k_eval, CALIBRATE_EVAL_SAMPLES),
                cfg.batch_size, cfg.objective, cfg.params, cfg.kl_direction, cfg.optimizer,
                cfg.input_dropout > 0, cfg.analytic_kl, cfg.capacity_max > 0)

    def calibration(self, cfg: RunConfig) -> tuple[float, float] | str:
        """(training examples/s, estimate samples/s) of cfg's shape, measured once; or why
        it could not be measured (a dry-run projects, it never stops on a run's error)."""
        key = self._shape(cfg)
        if key not in self._calibrated:
            try:
                self._calibrated[key] = calibrate(cfg, self.machine.device,
                                                  self.machine.threads, clock=self.clock)
            except Exception as err:  # the run itself will fail, or store its failure
                self._calibrated[key] = f"{type(err).__name__}: {str(err)[:80]}"
        return self._calibrated[key]

    def here(self, cfg: RunConfig, work: Work | None) -> tuple[float | None, str]:
        stored = None
        if self.stored:
            from bench.compare import variant_key

            stored = self.stored.get(variant_key({f"cfg_{k}": v
                                                  for k, v in cfg.flat_dict().items()}))
        if work is None:
            if stored is not None and math.isfinite(stored.wall_seconds):
                return stored.wall_seconds, f"stored wall time of {stored.run_id} (this machine)"
            return None, f"unknown (model {FAMILIES.of(cfg).name}: no FLOPs or stored time)"
        if stored is not None and math.isfinite(stored.train_samples_per_s) and \
                math.isfinite(stored.eval_samples_per_s):
            return (work.train_examples / stored.train_samples_per_s
                    + work.test_examples * work.eval_samples / stored.eval_samples_per_s,
                    f"stored rates of {stored.run_id} (same variant, this machine)")
        if not self.calibrate:
            return None, "unknown (no stored rate of this variant here; --no-calibrate)"
        rates = self.calibration(cfg)
        if isinstance(rates, str):
            return None, f"unknown (its calibration failed: {rates})"
        train_rate, eval_rate = rates
        return (work.train_examples / train_rate
                + work.test_examples * work.eval_samples / eval_rate,
                f"calibrated ({self.machine.device}, eager)")

    # -- GPU
    def gpu(self, cfg: RunConfig, work: Work | None) -> tuple[float | None, str]:
        rates = self.rates
        assert rates is not None
        if work is None:
            return None, f"no rate (model {FAMILIES.of(cfg).name} is not in the file)"
        if cfg.architecture != "mlp":
            return None, f"no rate (architecture {cfg.architecture} is not in the file)"
        layers = len(cfg.latent)
        order = mode_order(self.compile)
        usable = [e for e in rates.entries if e.layers == layers and e.mode in order]
        if not usable:
            return None, f"no rate ({layers}-layer models are not in the file)"
        paper = PAPER_MODELS.get(layers)
        same_model = (paper is not None and (cfg.hidden, cfg.latent) == paper
                      and data_shape(cfg).dim == PAPER_DIM)

        def rank(e: GpuEntry) -> tuple:
            return (abs(math.log(e.batch / cfg.batch_size)) + abs(math.log(e.k / cfg.k)),
                    order.index(e.mode))

        entry = min(usable, key=rank)
        exact = same_model and entry.batch == cfg.batch_size and entry.k == cfg.k
        per_example = self.flops(cfg)[0]
        entry_flops = self._paper_flops(entry.layers, entry.k)
        train_s = work.train_examples * per_example / (entry.samples_per_s * entry_flops)
        what = (f"{rates.device} entry {entry.name} {entry.mode}"
                if exact and per_example == entry_flops
                else f"{rates.device} nearest entry {entry.name} {entry.mode}, scaled by FLOPs")
        kind = "eager" if self.compile == "off" else "compiled"
        speed = rates.eval_s_per_example_per_1000.get(kind) or \
            rates.eval_s_per_example_per_1000.get("eager")
        if speed is None:
            return None, f"no rate for the estimate ({what}; the file has no evaluation)"
        from bench.metrics.cost import forward_flops_per_example

        ratio = (forward_flops_per_example(self.model(cfg), 1000)
                 / self._paper_forward(1, 1000))
        eval_s = work.test_examples * work.eval_samples / 1000 * speed * ratio
        return train_s + eval_s, what

    def _paper_config(self, layers: int, k: int) -> RunConfig:
        hidden, latent = PAPER_MODELS[layers]
        objective = "iwae" if k > 1 else "vae"
        return config_from_dict({"dataset": "mnist", "hidden": hidden, "latent": latent,
                                 "k": k, "objective": objective})

    def _paper_flops(self, layers: int, k: int) -> float:
        return self.flops(self._paper_config(layers, k))[0]

    def _paper_forward(self, layers: int, k: int) -> float:
        from bench.metrics.cost import forward_flops_per_example

        return forward_flops_per_example(self.model(self._paper_config(layers, 1)), k)

    # -- all
    def project(self, cfg: RunConfig) -> Projection:
        work = self.work(cfg)
        here_s, here_source = self.here(cfg, work)
        gpu_s, gpu_source = self.gpu(cfg, work) if self.rates is not None else (None, None)
        return Projection(cfg.run_id, work.train_flops if work else None,
                          work.eval_flops if work else None, here_s, here_source,
                          gpu_s, gpu_source)


def calibrate(cfg: RunConfig, device: str, threads: int, *,
              clock: Clock = time.perf_counter) -> tuple[float, float]:
    """(training examples/s, estimate samples/s) of cfg's model on `device` with `threads`
    torch threads: eager training steps (`bench.families.lvm.training_step`) at its batch size
    and k on random data for about CALIBRATE_SECONDS after two warm-up steps, then the
    test-set estimate (`evaluate`) of a few examples x min(k_eval, 1000) samples for about
    CALIBRATE_EVAL_SECONDS. The data's values change nothing of the speed."""
    import torch

    from bench.data import drop_pixels
    from bench.families.lvm import training_step
    from bench.loop import make_generator
    from bench.metrics.likelihood import ROWS_PER_PASS, evaluate
    from bench.models import build_model
    from bench.objectives import objective_for, views_for
    from bench.optim import loss_scale, make_optimizer
    from bench.profile import sync_device

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        shape = data_shape(cfg)
        model = build_model(cfg, shape.dim, image_shape=shape.image_shape).to(dev)
        optimizer = make_optimizer(model, cfg)
        bound_fn, views = objective_for(cfg), views_for(cfg)
        generator = make_generator(cfg.seed, dev)
        batch = min(cfg.batch_size, shape.n_train)
        x = torch.bernoulli(torch.full((batch, shape.dim), 0.2, device=dev), generator=generator)
        scale = loss_scale(cfg, batch)

        def step() -> None:
            x_in = drop_pixels(x, cfg.input_dropout, generator) if cfg.input_dropout else None
            training_step(model, optimizer, bound_fn, x, cfg.k, generator, views=views,
                          x_in=x_in, loss_scale=scale)

        train_rate = batch / _timed(step, dev, CALIBRATE_SECONDS, clock, sync_device, warmup=2)
        k = min(cfg.k_eval, CALIBRATE_EVAL_SAMPLES)
        examples = max(1, min(shape.n_test, 2 * ROWS_PER_PASS // k))
        x_test = x[:1].expand(examples, -1).contiguous()
        eval_s = _timed(lambda: evaluate(model, x_test, k, generator=generator), dev,
                        CALIBRATE_EVAL_SECONDS, clock, sync_device, warmup=1)
        return train_rate, examples * k / eval_s
    finally:
        torch.set_num_threads(before)


def _timed(work: Callable[[], object], dev, seconds: float, clock: Clock, sync,
           warmup: int) -> float:
    """Median seconds of `work` over repetitions for about `seconds` (at least three)."""
    for _ in range(warmup):
        work()
    sync(dev)
    times: list[float] = []
    deadline = clock() + seconds
    while len(times) < 3 or clock() < deadline:
        start = clock()
        work()
        sync(dev)
        times.append(clock() - start)
        if len(times) >= 1000:
            break
    return max(statistics.median(times), 1e-9)


# ---------------------------------------------------------------- text
def hms(seconds: float | None) -> str:
    """0.25 s, 42 s, 0:01:05, 12:00:00, 3d 4:05:06; "unknown" for None."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    days, rest = divmod(int(round(seconds)), 86_400)
    return (f"{days}d " if days else "") + clock_text(rest)


def flops_text(value: float | None) -> str:
    """3 significant digits, "1.75e7" ("unknown" for None)."""
    if value is None:
        return "unknown"
    mantissa, _, exponent = f"{value:.2e}".partition("e")
    return f"{mantissa}e{int(exponent)}" if abs(int(exponent)) > 3 else f"{value:.3g}"


def run_line(p: Projection) -> str:
    """One run's cost, for the line under its listing line."""
    text = (f"train {flops_text(p.train_flops)} FLOPs, eval {flops_text(p.eval_flops)} FLOPs; "
            f"here {hms(p.here_s)} [{p.here_source}]")
    if p.gpu_source is not None:
        text += f"; --rates {hms(p.gpu_s)} [{p.gpu_source}]"
    return text


def total_lines(projections: Sequence[Projection], machine: Machine,
                rates: GpuRates | None) -> list[str]:
    """The totals: FLOPs, the time here summed and over the runner's slots, the GPU's."""
    n = len(projections)

    def total(values: list[float | None]) -> tuple[float | None, int]:
        """(the sum of the known values, None where none is known; how many are unknown)"""
        known = [v for v in values if v is not None and math.isfinite(v)]
        return (sum(known) if known else None), n - len(known)

    def unknown(count: int) -> str:
        return f" ({count} of {n} runs unknown, not in the sum)" if count else ""

    train, train_unknown = total([p.train_flops for p in projections])
    evals, eval_unknown = total([p.eval_flops for p in projections])
    here, here_unknown = total([p.here_s for p in projections])
    sources: dict[str, int] = {}
    for p in projections:
        word = p.here_source.split(" ")[0]
        sources[word] = sources.get(word, 0) + 1
    lines = [
        f"cost of {n} runs to run: train {flops_text(train)} FLOPs{unknown(train_unknown)}, "
        f"eval {flops_text(evals)} FLOPs{unknown(eval_unknown)}",
        f"projected time here ({machine.device_name}, {machine.device}, {machine.threads} "
        f"thread(s) per run): {hms(here)} one after another{unknown(here_unknown)}; "
        f"{hms(None if here is None else here / machine.slots)} with {machine.slots} at once "
        f"({machine.slots_why}); "
        f"sources: " + ", ".join(f"{count} {word}" for word, count in sorted(sources.items())),
    ]
    if rates is not None:
        gpu, gpu_unknown = total([p.gpu_s for p in projections])
        nearest = sum(1 for p in projections if p.gpu_source and "nearest" in p.gpu_source)
        lines.append(f"projected time on {rates.device} (--rates {rates.path}): {hms(gpu)} "
                     f"one run after another{unknown(gpu_unknown)}; {nearest} from a nearest "
                     "entry")
    return lines
