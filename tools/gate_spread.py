#!/usr/bin/env python3
"""Measure the merge gate's spread and (with --write) pin its values and thresholds.

The merge gate (tests/test_gate.py) runs suites/gate.toml at its cpu budget, seed 0, one
torch thread, and checks every machine-independent metric of every run against
tests/gate_pinned.toml. This tool is how those pinned values and thresholds are made:

* machine-to-machine spread: the gate is run once per emulated machine, i.e. torch's CPU
  kernels at each instruction-set level (ATEN_CPU_CAPABILITY = avx512, avx2, default) with
  MKL and oneDNN held to the same level (MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), and
  with 1 and 2 threads. Each changes the order of float operations the way another CPU
  does; training amplifies that to the spread another machine would see. The spread of a
  metric is the largest |value - reference value| over these runs (reference: this
  machine's best level, 1 thread, the gate's own setting). Run-to-run spread on one machine
  is zero by construction (same config and seed on the CPU give identical metrics; the
  repeat run checks it).
* seed-to-seed spread (seeds 1, 2 beside 0): not used for thresholds (the gate pins one
  seed), but printed to show what a real change of the training has to beat.

The threshold of a metric is max(FACTOR * machine spread, FLOOR * max(|value|, 1)): FACTOR
covers a real machine differing more than the emulated ones, FLOOR keeps a threshold
non-zero for a metric that came out bit-identical everywhere (a float64 toy, EM).

Usage (from the repository root, with the project's venv):
    .venv/bin/python tools/gate_spread.py            # measure and print (8 runs of the gate)
    .venv/bin/python tools/gate_spread.py --write    # ... and rewrite tests/gate_pinned.toml
Rewrite the pinned file only when a change is meant to move the gate's numbers, and say
why in the commit, with the before/after this tool prints.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINNED = ROOT / "tests" / "gate_pinned.toml"
FACTOR = 10.0
FLOOR = 1e-3
SEEDS = (1, 2)
_LEVELS = {  # ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA
    "avx512": ("avx512", "AVX512", "AVX512_CORE"),
    "avx2": ("avx2", "AVX2", "AVX2"),
    "default": ("default", "SSE4_2", "SSE41"),
}
# (name, level, threads, seed); the first is the reference, the second repeats it
SETTINGS = (
    ("reference", "avx512", 1, 0),
    ("repeat", "avx512", 1, 0),
    ("avx512-2threads", "avx512", 2, 0),
    ("avx2", "avx2", 1, 0),
    ("avx2-2threads", "avx2", 2, 0),
    ("default", "default", 1, 0),
    *((f"seed{s}", "avx512", 1, s) for s in SEEDS),
)


def run_gate(results: Path, threads: int = 1, seed: int = 0) -> dict[str, dict[str, float]]:
    """Run the gate suite (cpu budget) in this process and return its metrics."""
    from bench import gate
    from bench.runner import RunOptions, run_suite
    from bench.suite import load_suite, resolve_suite_path

    suite = load_suite(resolve_suite_path(gate.SUITE), budget=gate.BUDGET)
    if seed:
        suite = replace(suite, seeds=(seed,), variants=tuple(
            replace(v, config=replace(v.config, seed=seed)) for v in suite.variants))
    run_suite(suite, RunOptions(results=results, executor="local", cpus_per_run=threads,
                                show_progress=False))
    return gate.pinned_metrics(results)


def _child(args: argparse.Namespace) -> int:
    json.dump(run_gate(Path(args.child), args.threads, args.seed), sys.stdout)
    return 0


def measure(python: str) -> dict[str, dict[str, dict[str, float]]]:
    """{setting: {variant: {metric: value}}}, each setting in a fresh process."""
    got = {}
    with tempfile.TemporaryDirectory(prefix="vaebench-gate-") as tmp:
        for name, level, threads, seed in SETTINGS:
            aten, mkl, onednn = _LEVELS[level]
            env = {**os.environ, "ATEN_CPU_CAPABILITY": aten, "MKL_ENABLE_INSTRUCTIONS": mkl,
                   "ONEDNN_MAX_CPU_ISA": onednn, "PYTHONPATH": str(ROOT)}
            t0 = time.monotonic()
            proc = subprocess.run([python, __file__, "--child", str(Path(tmp) / name),
                                   "--threads", str(threads), "--seed", str(seed)],
                                  env=env, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"setting {name} failed:\n{proc.stderr[-2000:]}")
            got[name] = json.loads(proc.stdout)
            print(f"  {name:<16} {time.monotonic() - t0:5.1f}s", file=sys.stderr, flush=True)
    return got


def thresholds(got: dict) -> list[dict]:
    """One row per (variant, metric) of the reference: value, spreads and threshold."""
    if not isinstance(got, dict) or not isinstance(got.get("reference"), dict):
        raise SystemExit("gate_spread: the measurements are not an object with a "
                         "'reference' setting; nothing written")
    ref = got["reference"]
    if not all(isinstance(metrics, dict) for metrics in ref.values()):
        raise SystemExit("gate_spread: each variant of the 'reference' setting must map "
                         "metric names to values; nothing written")
    machines = [n for n, _, _, s in SETTINGS if s == 0 and n != "reference"]
    seeds = [n for n, _, _, s in SETTINGS if s != 0]
    rows = []
    for variant, metrics in ref.items():
        for metric in sorted(metrics):
            value = _value(got, "reference", variant, metric)
            others = [_value(got, n, variant, metric) for n in machines]
            spread = max(abs(o - value) for o in others)
            by_seed = [value, *(_value(got, n, variant, metric) for n in seeds)]
            mean = sum(by_seed) / len(by_seed)
            seed_sd = math.sqrt(sum((v - mean) ** 2 for v in by_seed) / (len(by_seed) - 1))
            tol = max(FACTOR * spread, FLOOR * max(abs(value), 1.0))
            rows.append({"variant": variant, "metric": metric, "value": value,
                         "machine_spread": spread, "seed_sd": seed_sd, "tol": tol,
                         "repeat_equal": _value(got, "repeat", variant, metric) == value})
    return rows


def _value(got: dict, setting: str, variant: str, metric: str) -> float:
    """The metric of one setting's run; exits naming it when absent or not finite (a NaN
    would make max() order-dependent and --write pin a threshold too tight)."""
    runs = got.get(setting)
    metrics = runs.get(variant) if isinstance(runs, dict) else None
    value = metrics.get(metric) if isinstance(metrics, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value):
        raise SystemExit(f"gate_spread: setting {setting} has no finite {metric} for "
                         f"{variant} ({value}); nothing written")
    return value


def render(rows: list[dict]) -> str:
    lines = [f"{'variant':<16} {'metric':<26} {'value':>14} {'machine spread':>14} "
             f"{'seed sd':>10} {'threshold':>10}"]
    for r in rows:
        lines.append(f"{r['variant']:<16} {r['metric']:<26} {r['value']:>14.6g} "
                     f"{r['machine_spread']:>14.3g} {r['seed_sd']:>10.3g} {r['tol']:>10.3g}")
    return "\n".join(lines)


def _g3(x: float) -> str:
    """x to 3 significant digits, as a TOML float."""
    return repr(float(f"{x:.3g}"))


def write_pinned(rows: list[dict], path: Path) -> None:
    out = ["# Pinned values of the merge gate (tests/test_gate.py), written by",
           "# tools/gate_spread.py --write: suites/gate.toml at budget cpu, seed 0, one thread.",
           f"# tol = max({FACTOR:g} x machine spread, {FLOOR:g} x max(|value|, 1)); spread",
           "# measured over torch/MKL/oneDNN instruction-set levels avx512, avx2, default and",
           "# 1-2 threads.",
           "# Rewrite only when a change is meant to move these numbers; say why in the commit."]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        out.append(f"\n[{json.dumps(variant)}]")
        for r in (r for r in rows if r["variant"] == variant):
            out.append(f"{r['metric']} = {{ value = {r['value']!r}, tol = {_g3(r['tol'])},"
                       f" machine_spread = {_g3(r['machine_spread'])},"
                       f" seed_sd = {_g3(r['seed_sd'])} }}")
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--write", action="store_true", help=f"rewrite {PINNED.relative_to(ROOT)}")
    ap.add_argument("--python", default=sys.executable, help="python to run the gate with")
    ap.add_argument("--json", type=Path, help="also save the raw measurements here")
    ap.add_argument("--load", type=Path, metavar="JSON",
                    help="use the measurements a --json run saved instead of measuring again")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        # checked before measuring: the 8 gate runs are not thrown away at the end
        raise SystemExit(f"gate_spread: --json {args.json}: not a file in an existing "
                         "directory; nothing measured")
    if args.load is not None:
        try:
            got = json.loads(args.load.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"gate_spread: cannot read measurements {args.load}: "
                             f"{getattr(err, 'strerror', None) or err}") from None
    else:
        got = measure(args.python)
    if args.json:
        args.json.write_text(json.dumps(got, indent=1))
    rows = thresholds(got)
    print(render(rows))
    unequal = [f"{r['variant']}.{r['metric']}" for r in rows if not r["repeat_equal"]]
    if unequal:
        print(f"NOT REPRODUCIBLE: the repeat run differs in {', '.join(unequal)}", file=sys.stderr)
        return 1
    if args.write:
        write_pinned(rows, PINNED)
        print(f"wrote {PINNED.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
