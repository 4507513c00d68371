"""The metric catalog: one record for every metric any family, toy or evaluator stores.

A record says what a number is (unit, heading, digits for display), which way is better,
the practical threshold below which `vaebench compare` calls a difference "unchanged", and
whether it measures the machine (time, memory) rather than the model. `compare`, the merge
gate and the reproducibility checks read it; a metric that is stored but has no record is a
test failure (tests/test_catalog.py runs every family and toy).

Names are exact (`test_ll`) or patterns for metrics that come in families
(`prior_iwae_k<N>`, `kl_unit_<j>`, `inpaint_<mask>_<method>_nll`). Stored columns carry the
`metric_` prefix; the catalog uses the bare name.

Directions: HIGHER and LOWER are judged by `compare`; NONE is recorded but never judged (a
trade-off such as the rate, a count that is a config echo, a diagnostic without a better
side). Thresholds are absolute in the metric's unit unless `relative` (a fraction of the
baseline mean). This module imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from bench.components import Registry
from bench.errors import BenchError

HIGHER = "higher"
LOWER = "lower"
NONE = "none"


@dataclass(frozen=True)
class Metric:
    """What one stored metric is, and how it is compared and shown."""

    name: str  # the bare name, or a pattern such as "prior_iwae_k<N>"
    heading: str  # column heading in reports
    unit: str  # "nats", "%", "ex/s", "s", "bytes", "FLOPs", "" (a ratio, a count)
    better: str = NONE  # HIGHER, LOWER or NONE (recorded, never judged)
    threshold: float = 0.0  # practical threshold of `compare` (absolute unless relative)
    relative: bool = False  # threshold is a fraction of |baseline mean|
    machine: bool = False  # measures the machine (time, memory), not the model
    digits: int = 2  # decimals shown
    thousands: bool = False  # thousands separators (throughputs, memory)
    scale: float = 1.0  # shown value = stored value * scale (bytes -> MB)
    pattern: str | None = None  # regex of the bare names this record stands for
    # a rate's wall time (bare name): `compare` judges the rate only from runs timed long
    # enough (bench.compare.MIN_TIMED_SECONDS); a smoke run's 10 ms rate is noise
    timed_by: str | None = None

    @property
    def judged(self) -> bool:
        """Whether `compare` gives this metric a verdict."""
        return self.better != NONE

    @property
    def column(self) -> str:
        return f"metric_{self.name}"


def _nats(name: str, heading: str, better: str = HIGHER, **kw) -> Metric:
    threshold = kw.pop("threshold", 0.1 if better != NONE else 0.0)
    return Metric(name, heading, "nats", better, threshold=threshold, **kw)


def _machine(name: str, heading: str, unit: str, better: str, **kw) -> Metric:
    return Metric(name, heading, unit, better, relative=True, machine=True, **kw)


def _echo(name: str, heading: str) -> Metric:
    """A count the config decides (epochs run, k_eval, test images): recorded, not judged."""
    return Metric(name, heading, "", NONE, digits=0)


_INPAINT = r"inpaint_(?:rand\d+|top_half|quadrant)_(?:onepass|iterative|matched)"

METRICS: tuple[Metric, ...] = (
    # ---- likelihood and bound (bench.metrics.likelihood; the mixture's EM; the label CVAE)
    _nats("test_ll", "test LL (nats)"),
    _nats("test_elbo", "ELBO (nats)"),
    _nats("rate", "KL (nats)", NONE),  # a trade-off with distortion: no better side
    _nats("distortion", "distortion (nats)", NONE),
    Metric("ess", "ESS / k_eval", "", HIGHER, threshold=0.01, digits=3),
    Metric("active_units", "active units", "", HIGHER, threshold=0.5, digits=1),
    Metric("active_units_by_layer", "active units by layer", ""),  # a list, shown per layer
    # the run's own bound at its training k on the test set, and the IWAE bound at that k,
    # so runs of different objectives and estimators compare on one number (issue 25)
    _nats("test_bound", "own bound at k, test (nats)"),
    _nats("test_iwae_k", "IWAE-k, test (nats)"),
    _nats("kl_gap_k", "log p - IWAE-k (nats)", LOWER, threshold=0.05),
    _echo("k_eval", "k_eval"),
    _echo("n_test", "test images"),
    _nats("train_ll", "train LL (nats)", NONE),  # the mixture's; over-fitting is not better
    _nats("prior_iwae_k<N>", "IWAE with the prior as proposal, k = N (nats)", NONE,
          pattern=r"prior_iwae_k\d+"),
    # ---- training record (every family)
    _echo("epochs_done", "epochs"),
    Metric("diverged_epoch", "diverged at epoch", "", digits=0),
    _nats("final_train_bound", "final train bound (nats)", NONE),
    # ---- blurriness and sharpness (bench.metrics.blur)
    Metric("blur_data_mean", "blur of the data", "", digits=4),
    Metric("blur_data_min", "least blur of the data", "", digits=4),
    Metric("blur_prior_mean", "blur of prior samples", "", digits=4),
    Metric("blur_prior_min", "least blur of prior samples", "", digits=4),
    Metric("blur_recon_mean", "blur of reconstructions", "", digits=4),
    Metric("blur_recon_min", "least blur of reconstructions", "", digits=4),
    Metric("blur_reason", "why no blur", ""),  # text, set when blur does not apply
    Metric("sharpness_prior", "sharpness prior", "", HIGHER, threshold=0.02, digits=3),
    Metric("sharpness_recon", "sharpness recon", "", HIGHER, threshold=0.02, digits=3),
    # ---- cost (bench.metrics.cost, bench.loop)
    Metric("flops_per_example", "training FLOPs per example", "FLOPs", digits=0,
           thousands=True),
    _machine("train_samples_per_s", "train ex/s", "ex/s", HIGHER, threshold=0.05, digits=0,
             thousands=True, timed_by="train_seconds"),
    _machine("eval_samples_per_s", "eval ex/s", "ex/s", HIGHER, threshold=0.05, digits=0,
             thousands=True, timed_by="eval_seconds"),
    _machine("train_flops_per_s", "GFLOP/s", "FLOP/s", HIGHER, threshold=0.05,
             scale=1e-9, timed_by="train_seconds"),
    _machine("peak_memory_bytes", "peak memory (MB)", "bytes", LOWER, threshold=0.1, digits=0,
             thousands=True, scale=1e-6),
    # wall times: recorded, not judged (the throughputs are the speed verdicts)
    _machine("train_seconds", "train time (s)", "s", NONE, thousands=True),
    _machine("eval_seconds", "eval time (s)", "s", NONE),
    _machine("inpaint_seconds", "inpainting time (s)", "s", NONE),
    _machine("factor_seconds", "disentanglement metrics time (s)", "s", NONE),
    # ---- gradient signal-to-noise ratio (bench.metrics.snr, the snr_gaussian toy): after
    # training (the toy: at its parameters) and, for trained models, at initialisation
    *(Metric(f"{kind}_{part}{when}", f"{'directional ' if kind == 'dsnr' else ''}SNR, "
             f"{part}{' at init' if when else ''}", "", HIGHER, threshold=0.1, relative=True,
             digits=4)
      for kind in ("snr", "dsnr") for part in ("encoder", "decoder") for when in ("", "_init")),
    Metric("snr_floor", "SNR floor 1/sqrt(draws)", "", digits=4),
    # ---- toys (bench.toys): how well q matches the exact posterior
    _nats("posterior_kl", "KL(p(z|x)||q) (nats)", LOWER, threshold=0.01, digits=3),
    Metric("mixture_weight_error", "mixture weight error", "", LOWER, threshold=0.005,
           digits=4),
    Metric("q_mean", "mean of q", "", digits=3),
    Metric("q_std", "std of q", "", digits=3),
    Metric("mass_left", "q mass on the left mode", "", digits=3),
    Metric("mass_right", "q mass on the right mode", "", digits=3),
    Metric("mass_dominant_mode", "q mass on dominant mode", "", digits=3),
    _nats("kl_reverse", "KL(q||p) (nats)", LOWER, threshold=0.01, digits=3),
    _nats("kl_forward", "KL(p||q) (nats)", LOWER, threshold=0.01, digits=3),
    # ---- conditional models (bench.families.cvae): -log p(missing | given), lower is better
    _nats("test_cll", "-log p(missing|given) (nats)", LOWER),
    _nats("test_cll_is", "-log p(missing|given), IS (nats)", LOWER),
    _nats("test_cll_marginal", "-log p(missing) by pixel means (nats)", NONE),
    _nats("nn_test_cll", "baseline -log p(missing|given) (nats)", LOWER),
    _echo("cvae_epochs_run", "CVAE epochs"),
    _echo("nn_epochs_run", "baseline epochs"),
    Metric("cvae_best_epoch", "CVAE best epoch", "", digits=0),
    Metric("nn_best_epoch", "baseline best epoch", "", digits=0),
    _nats("cvae_valid_loss", "CVAE validation loss (nats)", NONE),
    _nats("nn_valid_loss", "baseline validation loss (nats)", NONE),
    # ---- semi-supervised (bench.families.m2)
    Metric("test_error", "test error (%)", "%", LOWER, threshold=1.0),
    Metric("train_labelled_error", "labelled train error (%)", "%"),
    _nats("test_unlabelled_bound", "unlabelled bound (nats)"),
    _echo("train_steps", "optimiser steps"),
    # ---- disentanglement (bench.metrics.factors)
    Metric("mig", "MIG", "", HIGHER, threshold=0.02, digits=3),
    Metric("dci_disentanglement", "DCI disentanglement", "", HIGHER, threshold=0.02, digits=3),
    Metric("dci_completeness", "DCI completeness", "", HIGHER, threshold=0.02, digits=3),
    Metric("dci_informativeness", "DCI informativeness", "", HIGHER, threshold=0.02,
           digits=3),
    Metric("beta_vae_accuracy", "beta-VAE metric (%)", "%", HIGHER, threshold=1.0, digits=1),
    Metric("active_kl_units", "units with KL > 0.01", "", digits=1),
    _nats("kl_unit_<j>", "KL of unit j (nats)", NONE, pattern=r"kl_unit_\d+", digits=3),
    # ---- inpainting (bench.metrics.imputation): per mask and method
    _nats("inpaint_<mask>_<method>_nll", "-log p(missing pixels) (nats)", LOWER,
          pattern=_INPAINT + "_nll"),
    Metric("inpaint_<mask>_<method>_error", "missing pixels wrong (%)", "%", LOWER,
           threshold=0.5, pattern=_INPAINT + "_error"),
)

_NAME = re.compile(r"[a-z0-9_]*(<[A-Za-z]+>[a-z0-9_]*)*")  # a pattern's name: "kl_unit_<j>"


class Catalog(Registry[Metric]):
    """The metric records by name, patterns matched in registration order; vaebench's and
    every plugin's records enter by `register`."""

    def __init__(self, metrics: tuple[Metric, ...] = ()) -> None:
        super().__init__("metric")
        self._patterns: list[tuple[re.Pattern, Metric]] = []
        for metric in metrics:
            self.register(metric)

    def check_name(self, name: object) -> None:
        if not isinstance(name, str) or not name or not _NAME.fullmatch(name):
            raise BenchError(f"metric name {name!r} must be lower-case letters, digits, '_' "
                             "(a pattern's own name may hold <placeholders>)")

    def register(self, metric: Metric) -> Metric:
        if not isinstance(metric, Metric):
            raise BenchError(f"a metric record must be a bench.plugins.Metric, got {metric!r}")
        if metric.better not in (HIGHER, LOWER, NONE):
            raise BenchError(f"metric '{metric.name}': better must be 'higher', 'lower' or "
                             f"'none', got {metric.better!r}")
        pattern = None
        if metric.pattern is not None:
            try:
                pattern = re.compile(metric.pattern)
            except re.error as err:
                raise BenchError(f"metric '{metric.name}': pattern {metric.pattern!r} is not a "
                                 f"regular expression ({err})") from None
            covered = [n for n in self._records if "<" not in n and pattern.fullmatch(n)]
            if covered:
                raise BenchError(f"metric '{metric.name}': pattern {metric.pattern!r} also "
                                 f"matches the metric '{covered[0]}', which has its record")
        elif "<" in metric.name:
            raise BenchError(f"metric '{metric.name}' names a family of metrics: give the "
                             "pattern (a regular expression) its stored names match")
        else:
            owner = next((m for r, m in self._patterns if r.fullmatch(metric.name)), None)
            if owner is not None:
                raise BenchError(f"metric '{metric.name}' is one of the metrics "
                                 f"'{owner.name}' already has a record for")
        super().register(metric)
        if pattern is not None:
            self._patterns.append((pattern, metric))
        return metric

    def unregister(self, name: str) -> None:
        super().unregister(name)
        self._patterns = [(r, m) for r, m in self._patterns if m.name != name]

    def find(self, name: str) -> Metric | None:
        """The record of a bare metric name or a `metric_` column (or of a pattern's own
        name, such as "kl_unit_<j>"); None if there is none."""
        name = name.removeprefix("metric_")
        if name in self._records:
            return self._records[name]
        for regex, metric in self._patterns:
            if regex.fullmatch(name):
                return metric
        return None


#: every metric's record: vaebench's, then those plugins register
CATALOG = Catalog(METRICS)


def find(name: str) -> Metric | None:
    """The record of a bare metric name or a `metric_` column (or of a pattern's own name,
    such as "kl_unit_<j>"); None if there is none."""
    return CATALOG.find(name)


def lookup(name: str) -> Metric:
    """The record of `name`, with the name itself (not the pattern) as its `name`."""
    metric = find(name)
    if metric is None:
        raise BenchError(f"metric '{name.removeprefix('metric_')}' has no record in "
                         "bench.metrics.catalog")
    bare = name.removeprefix("metric_")
    if metric.pattern is not None and bare == metric.name:  # "kl_unit_<j>" itself
        raise BenchError(f"metric '{bare}' names a family of metrics: give one of them "
                         f"(a stored name matching {metric.pattern})")
    return metric if metric.name == bare else replace(metric, name=bare, pattern=None)


#: vaebench's own metrics that measure the machine (a plugin's are its records' `machine`)
MACHINE_METRICS: frozenset[str] = frozenset(m.name for m in METRICS if m.machine)
