"""The results store at scale (issue 27): a synthetic store of N runs (default 10^5) over four
suites, one of them big (80%), and the time of a cached plan, load_runs, a report of the big
suite and a compare, before and after `vaebench store compact`.

    .venv/bin/python benchmarks/store_scale.py --runs 100000 [--dir /tmp/scale]

The rows are what a runner stores: the columns, Arrow types and values of a real run of the
smoke suite (`store.run_row` of each variant's own config, metrics and provenance as a real
row has them, with noise), 20 epochs of curves per run (the cpu budget's), and a samples
file per run with 2 images of each kind (8x8, as digits runs store; a real run stores 96:
64 prior samples, 16 test images and their reconstructions, bench.metrics.blur.sample_records;
96 x 64 float64 pixels are 49 KB a run before compression, about 5 GB at 10^5 runs, by
arithmetic, not measured). The suites are TOML grids (iwae over k and
lr) with many seeds, written beside the store; the big suite has 40 variants, so its report
draws 40 sample figures. benchmarks/test_store_scale.py runs this at a small N under
pytest-benchmark (`make microbench`); VAEBENCH_SCALE_RUNS sets its N.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import compaction, store
from bench.suite import Suite, load_suite

EPOCHS = 20
K_VALUES = (1, 2, 5, 10, 20, 50, 100, 200)
LR_VALUES = (1e-3, 5e-4, 3e-4, 2e-3, 1e-4)
SMALL_SUITES = 3
DEFAULT_STEPS = ("build", "measure", "compact", "measure")
PROVENANCE = {
    "git_commit": "7f6e8a13cecd231dcdaa958d902f42d13fb5f431", "git_dirty": False,
    "python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6", "ray": "2.60.0",
    "hostname": "vm", "platform": "Linux-6.18.44-x86_64-with-glibc2.36", "device": "cpu",
    "device_name": "AMD EPYC", "cpu_count": 2, "gpu_count": 0, "torch_threads": 1,
    "pid": 18787, "stack": None, "stack_size": 1,
    "start_time": "2026-12-06T10:01:48.871924+00:00",
    "end_time": "2026-12-06T10:01:48.907083+00:00", "wall_seconds": 0.035,
    "compiled": False, "eval_compiled": False,
}
METRICS = {  # a finished smoke run's metric columns and values (noise is added per run)
    "epochs_done": EPOCHS, "final_train_bound": -27.7, "train_samples_per_s": 69057.6,
    "train_seconds": 0.0094, "diverged_epoch": None, "test_ll": -27.9, "test_elbo": -29.8,
    "rate": 1.26, "distortion": 28.5, "ess": 0.25, "active_units": 8,
    "active_units_by_layer": [8], "k_eval": 20, "n_test": 100, "eval_seconds": 0.0016,
    "eval_samples_per_s": 1249262.9, "test_iwae_k": -28.2, "test_bound": -28.2,
    "kl_gap_k": 0.32, "blur_reason": None, "blur_data_mean": 1.0, "blur_data_min": 0.39,
    "blur_prior_mean": 0.23, "blur_prior_min": 0.13, "blur_recon_mean": 0.16,
    "blur_recon_min": 0.11, "sharpness_prior": 0.23, "sharpness_recon": 0.16,
    "flops_per_example": 84480.0, "peak_memory_bytes": 535875584,
    "train_flops_per_s": 5833986889.2,
}
CURVE_COLUMNS = ("lr", "train_bound", "samples_per_s", "wall_seconds", "valid_bound",
                 "snr_encoder", "snr_decoder", "dsnr_encoder", "dsnr_decoder")


def suite_toml(name: str, seeds: int, k_values: int, lr_values: int) -> str:
    return f"""[suite]
name = "{name}"
description = "synthetic suite of benchmarks/store_scale.py"
default_budget = "smoke"
seeds = {list(range(seeds))}

[base]
dataset = "digits"
objective = "iwae"

[grid]
k = {list(K_VALUES[:k_values])}
lr = {list(LR_VALUES[:lr_values])}

[budget.smoke]
hidden = [[32]]
latent = [8]
train_size = 300
test_size = 100
epochs = {EPOCHS}
k_eval = 20
"""


def write_suites(directory: Path, runs: int) -> list[Path]:
    """Suite files whose runs add up to about `runs`: one with 80% of them (40 variants),
    three small ones (10 variants each)."""
    directory.mkdir(parents=True, exist_ok=True)
    big = max(1, round(0.8 * runs / 40))
    small = max(1, round(0.2 * runs / SMALL_SUITES / 10))
    paths = [directory / "scale.toml"]
    paths[0].write_text(suite_toml("scale", big, 8, 5))
    for i in range(SMALL_SUITES):
        paths.append(directory / f"scale-small{i}.toml")
        paths[-1].write_text(suite_toml(f"scale-small{i}", small, 5, 2))
    return paths


def rows_of(suite: Suite, path: Path, rng: np.random.Generator) -> pa.Table:
    """One finished run row per variant of `suite`, as store.run_row makes them."""
    rows = []
    noise = rng.normal(size=(len(suite.variants), 3))
    for variant, (a, b, c) in zip(suite.variants, noise, strict=True):
        metrics = {**METRICS, "test_ll": METRICS["test_ll"] + a,
                   "test_elbo": METRICS["test_elbo"] + a - 1.0,
                   "train_samples_per_s": METRICS["train_samples_per_s"] * math.exp(b / 10),
                   "rate": METRICS["rate"] + abs(c) / 10}
        row = store.run_row(suite=suite.name, variant=variant.name, config=variant.config,
                            status="finished", metrics=metrics, budget=suite.budget,
                            provenance={**PROVENANCE, "suite_file": str(path)})
        rows.append(row)
    return store._table(rows, curves=False)


def curves_of(run_ids: list[str], suite: str, rng: np.random.Generator) -> pa.Table:
    n = len(run_ids)
    epochs = np.tile(np.arange(1, EPOCHS + 1), n)
    columns = {"run_id": np.repeat(run_ids, EPOCHS), "suite": [suite] * (n * EPOCHS),
               "epoch": epochs}
    bound = -60.0 + 30 * (1 - np.exp(-epochs / 5)) + rng.normal(0, 0.3, n * EPOCHS)
    for name in CURVE_COLUMNS:
        columns[name] = bound if name == "train_bound" else rng.random(n * EPOCHS)
    columns["schema_version"] = np.full(n * EPOCHS, store.SCHEMA_VERSION)
    return pa.table(columns)


def samples_of(run_ids: list[str], suite: str, rng: np.random.Generator) -> pa.Table:
    kinds = [kind for kind in ("prior", "original", "reconstruction") for _ in range(2)]
    per = len(kinds)
    n = len(run_ids) * per
    pixels = np.round(rng.random((n, 64)) * 255) / 255
    return pa.table({
        "run_id": np.repeat(run_ids, per), "suite": [suite] * n, "kind": kinds * len(run_ids),
        "index": np.tile([0, 1], n // 2), "height": np.full(n, 8), "width": np.full(n, 8),
        "pixels": pa.FixedSizeListArray.from_arrays(pixels.ravel(), 64).cast(
            pa.list_(pa.float64())),
        "schema_version": np.full(n, store.SCHEMA_VERSION)})


_PARTS: list[tuple[Path, pa.Table, int]] = []  # what the forked writers write (not pickled)


def _write_loose(job: tuple[int, int, int]) -> None:
    index, start, stop = job
    directory, table, per_run = _PARTS[index]
    ids = table.column("run_id")
    for at in range(start, stop, per_run):
        pq.write_table(table.slice(at, per_run), directory / f"{ids[at].as_py()}.parquet")


def build_store(results: Path, suites_dir: Path, runs: int, *, compacted: bool = False,
                seed: int = 0) -> dict[str, Suite]:
    """A store of about `runs` runs: loose (one file per run and kind, as runners leave
    them), or `compacted` (as `vaebench store compact` leaves them, written directly)."""
    rng = np.random.default_rng(seed)
    suites = {}
    _PARTS.clear()
    for path in write_suites(suites_dir, runs):
        suite = load_suite(path)
        suites[suite.name] = suite
        table = rows_of(suite, path, rng)
        ids = table.column("run_id").to_pylist()
        for kind, part, per_run in ((store.RUNS, table, 1),
                                    (store.CURVES, curves_of(ids, suite.name, rng), EPOCHS),
                                    (store.SAMPLES, samples_of(ids, suite.name, rng), 6)):
            directory = results / kind / f"suite={suite.name}"
            directory.mkdir(parents=True, exist_ok=True)
            if compacted:
                part = part.take(pc.sort_indices(part, sort_keys=[("run_id", "ascending")]))
                compaction._write(part, directory / store.compacted_name(1))
            else:
                _PARTS.append((directory, part, per_run))
    if _PARTS:
        chunk = 1000  # runs per job, spread over the CPU cores
        jobs = [(i, start, min(start + chunk * per_run, part.num_rows))
                for i, (_, part, per_run) in enumerate(_PARTS)
                for start in range(0, part.num_rows, chunk * per_run)]
        with multiprocessing.get_context("fork").Pool() as pool:
            pool.map(_write_loose, jobs)
        _PARTS.clear()
    return suites


def export_baseline(results: Path, out: Path) -> Path:
    """A baseline to compare against: the big suite's rows (as `vaebench baseline` writes)."""
    return store.export_runs(results, "scale", out)


def measurements(results: Path, suites: dict[str, Suite], baseline: Path,
                 report_dir: Path) -> dict[str, Callable[[], object]]:
    """The four timed operations on the store at `results`."""
    from bench import runner
    from bench.compare import run_compare
    from bench.report import build_report

    big = suites["scale"]

    def plan() -> None:
        to_run, cached = runner.plan(big, results)
        assert not to_run and len(cached) == len(big.variants)

    def load() -> None:
        assert len(store.load_runs(results)) == sum(len(s.variants) for s in suites.values())

    def report() -> None:
        shutil.rmtree(report_dir, ignore_errors=True)
        build_report(results, report_dir, suites=["scale"])

    def compare() -> None:
        text, code = run_compare(baseline, results)
        assert code == 0, text[:2000]

    return {"cached plan": plan, "load_runs": load, "report (big suite)": report,
            "compare (baseline file vs store)": compare}


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def load_built(work: Path) -> dict[str, Suite]:
    paths = sorted((work / "suites").glob("*.toml"))
    return {suite.name: suite for suite in map(load_suite, paths)}


def measure(work: Path, label: str) -> dict[str, float]:
    suites = load_built(work)
    results = work / "results"
    baseline = work / "baseline.parquet"
    if not baseline.exists():
        export_baseline(results, baseline)
    times = {name: _timed(op)
             for name, op in measurements(results, suites, baseline, work / "report").items()}
    n = sum(len(s.variants) for s in suites.values())
    for name, seconds in times.items():
        print(f"{label:10} {n:,} runs  {name:34} {seconds:8.2f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # no `choices`: Python 3.11's argparse checks an empty "*" against them, as one value
    parser.add_argument("steps", nargs="*", metavar="STEP", help="build, measure or compact: "
                        "what to do, in order (default: build measure compact measure)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--compacted", action="store_true",
                        help="build: write the store as compaction leaves it (minutes less "
                        "than 3 x N loose files)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a "
                        "temporary one, removed after)")
    args = parser.parse_args(argv)
    for step in args.steps:
        if step not in ("build", "measure", "compact"):
            parser.error(f"invalid step {step!r} (choose from build, measure, compact)")
    work = args.dir or Path(tempfile.mkdtemp(prefix="vaebench-scale-"))
    try:
        for step in args.steps or DEFAULT_STEPS:
            start = time.perf_counter()
            if step == "build":
                suites = build_store(work / "results", work / "suites", args.runs,
                                     compacted=args.compacted)
                n = sum(len(s.variants) for s in suites.values())
                print(f"built a {'compacted' if args.compacted else 'loose'} store of {n:,} "
                      f"runs in {time.perf_counter() - start:.0f} s")
                start = time.perf_counter()
                load_suite(work / "suites" / "scale.toml")
                print(f"load_suite of the big suite ({len(suites['scale'].variants):,} runs): "
                      f"{time.perf_counter() - start:.2f} s", flush=True)
            elif step == "measure":
                state = "compacted" if any((work / "results" / "runs").glob(
                    f"*/{store.COMPACTED_PREFIX}*")) else "loose"
                measure(work, state)
            else:
                for done in compaction.compact(work / "results"):
                    print(done.describe())
                print(f"compaction took {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
