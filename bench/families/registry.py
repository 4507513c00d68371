"""The family registry: one record per model family and per toy, and everything derived from
it (which config values are valid, which keys a family owns, how a run of it trains, how the
report labels it and which config keys it leaves unused).

A family is chosen by `model` (lvm, mixture, cvae, conditional_nn, m2, classifier), a toy
by `dataset` (gmm, bimodal: experiments with known answers that need no data set). Adding
one is one call, `register(Family(...))`; config validation, suite validation, the runner's
dispatch and the report read the registry, so nothing else needs editing (its metrics need
records in bench.metrics.catalog, which tests/test_catalog.py checks).

This module imports no torch: a family's trainer is named by "module:function" and imported
only when a run of it trains.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench import components
from bench.components import BUILT_IN, Param
from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.config import RunConfig

IMAGE_MODEL = "lvm"  # the model value a toy run keeps (toys are chosen by dataset)


@dataclass(frozen=True)
class Family:
    """What a model family (or toy) is, in one place."""

    name: str  # the `model` value, or for a toy the `dataset` value
    label: str  # how reports name its rows ("" : the objective, upper-cased: VAE, IWAE)
    # "module:function" (imported when a run trains) or the function itself. A model
    # family's: f(cfg, dataset, *, device, on_epoch, checkpointing) -> result with
    # .metrics(), .curves, .samples, .status; a toy's: f(cfg) -> {metric: value}
    train: str | Callable
    toy: bool = False  # chosen by `dataset`; trains in seconds on the CPU, no data set
    # config keys only this family (and others that list them) may set away from the default
    owns: frozenset[str] = frozenset()
    # config keys its runs ignore: shown as "-" in the report's summary table
    unused: frozenset[str] = frozenset()
    # values that make `model = name` (or `dataset = name`) on its own a valid config, for
    # the suite's check of a lone value
    companions: Mapping[str, Any] = field(default_factory=dict)
    # its own rules beyond key ownership: raise BenchError naming the key
    check: Callable[[RunConfig], None] | None = None
    # what one point of its training curve is (the x axis its learning curves are drawn on)
    curve_unit: str = "epoch"
    # the metrics its runs may store (bench.metrics.catalog names; patterns as "kl_unit_<j>")
    metrics: tuple[str, ...] = ()
    # whether its trainer takes `compile` (auto, on, off) and can run its step compiled
    compiles: bool = False
    # whether its trainer takes `progress` (bench.eta.ProgressLines): lines with an ETA
    # during its long work (the lvm's k_eval estimate and disentanglement metrics, EM)
    progress: bool = False
    # settings of its own, in the config's `params` table (bench.components.Param)
    params: tuple[Param, ...] = ()
    plugin: str = BUILT_IN  # who registered it (a plugin's name)

    def trainer(self) -> Callable:
        """The train function (importing its module, and torch, now)."""
        if callable(self.train):
            return self.train
        module, _, function = self.train.partition(":")
        return getattr(importlib.import_module(module), function)


# ------------------------------------------------------------------------ family rules
def _default(cfg: RunConfig, key: str) -> Any:
    return type(cfg).__dataclass_fields__[key].default


def _check_toy(cfg: RunConfig) -> None:
    if cfg.model != IMAGE_MODEL:
        raise BenchError(f"model '{cfg.model}' needs an image data set, not the toy "
                         f"'{cfg.dataset}'")
    if cfg.iterations < 1 or cfg.objective != "iwae" or cfg.posterior != "gaussian":
        raise BenchError(
            f"dataset '{cfg.dataset}' is a toy: it needs key 'iterations' >= 1, objective "
            "'iwae' and posterior 'gaussian' (k = particles, kl_direction = the method)")


#: the objectives whose gradient draws the snr_gaussian toy has in closed form
SNR_TOY_OBJECTIVES = ("iwae", "stl", "dreg", "rws_dreg", "vae", "miwae", "piwae", "ciwae")


def _check_snr_toy(cfg: RunConfig) -> None:
    if cfg.objective not in SNR_TOY_OBJECTIVES or cfg.posterior != "gaussian":
        raise BenchError(f"toy 'snr_gaussian' has closed-form gradients for objective "
                         f"{', '.join(SNR_TOY_OBJECTIVES)} with posterior 'gaussian', not "
                         f"objective '{cfg.objective}', posterior '{cfg.posterior}'")
    if cfg.objective == "vae" and cfg.beta != 1.0:
        raise BenchError("toy 'snr_gaussian': objective 'vae' needs beta = 1")


def _check_lvm(cfg: RunConfig) -> None:
    if cfg.eval_inpainting and cfg.likelihood != "bernoulli":
        raise BenchError("key 'eval_inpainting' needs an image data set and likelihood "
                         "'bernoulli'")
    if cfg.architecture == "conv" and len(cfg.latent) != 1:
        raise BenchError("architecture 'conv' needs model 'lvm', an image data set and one "
                         "stochastic layer")
    if cfg.capacity_max > 0:
        if cfg.capacity_steps < 1 or cfg.gamma <= 0:
            raise BenchError("controlled capacity (capacity_max > 0) needs key "
                             "'capacity_steps' >= 1 and key 'gamma' > 0")
        if cfg.objective != "vae" or cfg.beta != 1.0:
            raise BenchError("controlled capacity (capacity_max > 0) needs model 'lvm', "
                             "objective 'vae' and beta = 1 (gamma weighs |KL - C| instead)")
    elif cfg.capacity_steps != 0 or cfg.gamma != _default(cfg, "gamma"):
        raise BenchError("keys 'capacity_steps' and 'gamma' apply to controlled capacity "
                         "(capacity_max > 0) only")
    if cfg.snr_draws == 1:
        raise BenchError("key 'snr_draws' needs at least 2 gradient draws (or 0: no SNR)")
    if cfg.snr_every and not cfg.snr_draws:
        raise BenchError("key 'snr_every' needs key 'snr_draws' > 0 (the draws per SNR)")
    if cfg.snr_draws and cfg.capacity_max > 0:
        raise BenchError("key 'snr_draws' does not apply to controlled capacity "
                         "(capacity_max > 0): its objective changes every step")
    if (cfg.dci_train == 0) != (cfg.dci_test == 0):
        raise BenchError("keys 'dci_train' and 'dci_test' are set together (both > 0: "
                         "independent draws) or not at all")
    if cfg.dci_train == 1 or cfg.dci_test == 1:
        raise BenchError("keys 'dci_train' and 'dci_test' need at least 2 points each (a "
                         "classifier is fitted and scored on them)")


def _check_mixture(cfg: RunConfig) -> None:
    if cfg.components < 1 or cfg.iterations < 1:
        raise BenchError("model 'mixture' needs key 'components' >= 1 and key 'iterations' "
                         ">= 1 (EM iterations)")


def _check_conditional(cfg: RunConfig) -> None:
    if cfg.condition == "none":
        raise BenchError(f"model '{cfg.model}' needs key 'condition' ('label' or 'quadrants')")
    if cfg.condition == "quadrants" and cfg.given_quadrants not in (1, 2, 3):
        raise BenchError(f"condition 'quadrants' needs key 'given_quadrants' in 1, 2, 3, "
                         f"got {cfg.given_quadrants}")
    if cfg.condition == "label" and cfg.given_quadrants != 0:
        raise BenchError("key 'given_quadrants' applies to condition 'quadrants' only")
    if cfg.model == "conditional_nn" and cfg.condition != "quadrants":
        raise BenchError("model 'conditional_nn' (the deterministic baseline) needs "
                         "condition 'quadrants'")
    if cfg.patience and not cfg.validation_size:
        raise BenchError("key 'patience' > 0 (early stopping) needs key 'validation_size' > 0 "
                         "(the held-out split it stops on)")


def _check_semi_supervised(cfg: RunConfig) -> None:
    if cfg.labelled < 10 or cfg.labelled % 10:
        raise BenchError(f"model '{cfg.model}' needs key 'labelled' >= 10 and a multiple of 10 "
                         f"(class-balanced), got {cfg.labelled}")


# ------------------------------------------------------------------------ the families
# what every epoch-trained family records about its training (bench.loop.training_record)
_TRAINING = ("epochs_done", "final_train_bound", "train_samples_per_s", "train_seconds",
             "diverged_epoch")
_LVM_METRICS = _TRAINING + (
    "test_ll", "test_elbo", "test_bound", "test_iwae_k", "kl_gap_k", "snr_encoder",
    "snr_decoder", "dsnr_encoder", "dsnr_decoder", "snr_encoder_init", "snr_decoder_init",
    "dsnr_encoder_init", "dsnr_decoder_init", "rate", "distortion", "ess", "active_units",
    "active_units_by_layer", "k_eval", "n_test", "eval_seconds", "eval_samples_per_s",
    "blur_data_mean", "blur_data_min", "blur_prior_mean", "blur_prior_min", "blur_recon_mean",
    "blur_recon_min", "blur_reason", "sharpness_prior", "sharpness_recon",
    "flops_per_example", "peak_memory_bytes", "train_flops_per_s",
    # eval_inpainting
    "inpaint_<mask>_<method>_nll", "inpaint_<mask>_<method>_error", "inpaint_seconds",
    # data with known factors
    "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness",
    "beta_vae_accuracy", "active_kl_units", "kl_unit_<j>", "factor_seconds")
_BASELINE_METRICS = ("test_cll", "test_cll_marginal", "nn_test_cll", "nn_epochs_run",
                     "nn_best_epoch", "nn_valid_loss")
_LVM_KEYS = frozenset({"likelihood", "posterior", "flow_steps", "architecture", "input_dropout",
                       "eval_inpainting", "capacity_max", "capacity_steps", "gamma",
                       "dci_estimator", "dci_train", "dci_test", "snr_draws", "snr_every"})
_NEURAL = frozenset({"init", "optimizer"})  # the neural image models' optimiser and init
_CONDITIONAL = frozenset({"condition", "given_quadrants", "binarize", "validation_size",
                          "patience"})
_VAE_ONLY = frozenset({"posterior", "flow_steps", "kl_direction", "architecture",
                       "input_dropout", "eval_inpainting", "capacity_max"})
_FAMILY_ONLY = frozenset({"components", "condition", "given_quadrants", "labelled", "alpha"})
_NO_BOUND = frozenset({"objective", "k", "beta", "analytic_kl"})
# a toy has its own fixed model: only the method (objective, k, kl_direction) and the
# iterations are its settings
_TOY_UNUSED = _FAMILY_ONLY | _LVM_KEYS | {"hidden", "latent", "beta", "analytic_kl"}

BUILT_IN: tuple[Family, ...] = (
    Family("lvm", "", "bench.families.lvm:train", owns=_LVM_KEYS | {"kl_direction"} | _NEURAL,
           unused=_FAMILY_ONLY, check=_check_lvm, metrics=_LVM_METRICS, compiles=True,
           progress=True),
    Family("mixture", "mixture (EM)", "bench.families.mixture:run",
           owns=frozenset({"components", "iterations"}),
           unused=_VAE_ONLY | _NO_BOUND | {"condition", "given_quadrants", "labelled",
                                           "alpha"},
           companions={"components": 1, "iterations": 1}, check=_check_mixture,
           curve_unit="EM iteration", progress=True,
           metrics=_TRAINING + ("test_ll", "train_ll", "eval_seconds", "prior_iwae_k<N>")),
    Family("cvae", "CVAE", "bench.families.cvae:run", owns=_CONDITIONAL | _NEURAL,
           unused=_VAE_ONLY | {"components", "labelled", "alpha"},
           companions={"condition": "label"}, check=_check_conditional,
           metrics=_TRAINING + _BASELINE_METRICS + (
               "test_ll", "test_elbo", "rate", "eval_seconds", "test_cll_is",
               "cvae_epochs_run", "cvae_best_epoch", "cvae_valid_loss"), compiles=True),
    Family("conditional_nn", "deterministic NN", "bench.families.cvae:run",
           owns=_CONDITIONAL | _NEURAL,
           unused=_VAE_ONLY | _NO_BOUND | {"components", "labelled", "alpha"},
           companions={"condition": "quadrants", "given_quadrants": 1},
           check=_check_conditional, metrics=_TRAINING + _BASELINE_METRICS + ("eval_seconds",),
           compiles=True),
    Family("m2", "M2", "bench.families.m2:run", owns=frozenset({"labelled", "alpha"}) | _NEURAL,
           unused=_VAE_ONLY | {"objective", "beta", "components", "condition",
                               "given_quadrants"},
           companions={"labelled": 10}, check=_check_semi_supervised,
           metrics=_TRAINING + ("test_error", "train_labelled_error", "train_steps",
                                "test_unlabelled_bound", "eval_seconds"), compiles=True),
    Family("classifier", "supervised only", "bench.families.m2:run",
           owns=frozenset({"labelled"}) | _NEURAL,
           unused=_VAE_ONLY | _NO_BOUND | {"components", "condition", "given_quadrants",
                                           "alpha"},
           companions={"labelled": 10}, check=_check_semi_supervised,
           metrics=_TRAINING + ("test_error", "train_labelled_error", "train_steps",
                                "eval_seconds")),
    Family("gmm", "", "bench.toys:run_toy", toy=True,
           owns=frozenset({"iterations", "kl_direction"}), unused=_TOY_UNUSED,
           companions={"iterations": 1, "objective": "iwae"}, check=_check_toy,
           metrics=("mixture_weight_error", "posterior_kl", "train_seconds")),
    Family("snr_gaussian", "", "bench.toys:run_toy", toy=True,
           owns=frozenset({"kl_direction"}), unused=_TOY_UNUSED | {"k_eval"},
           companions={"objective": "iwae"}, check=_check_snr_toy,
           metrics=("snr_encoder", "snr_decoder", "dsnr_encoder", "dsnr_decoder", "snr_floor",
                    "train_seconds"),
           params=(Param("draws", int, 100_000, minimum=2,
                         help="gradient draws per SNR estimate (the floor is 1/sqrt(draws))"),
                   Param("points", int, 1, minimum=1, maximum=1024,
                         help="data points the gradient averages over (1: the first; 1024: "
                              "the data set)"),
                   Param("perturbation", float, 0.01, minimum=0.0,
                         help="std of the N(0, s^2) noise added to mu, A and b at the "
                              "optimum"))),
    Family("bimodal", "", "bench.toys:run_toy", toy=True,
           owns=frozenset({"iterations", "kl_direction"}), unused=_TOY_UNUSED,
           companions={"iterations": 1, "objective": "iwae"}, check=_check_toy,
           metrics=("q_mean", "q_std", "mass_left", "mass_right", "mass_dominant_mode",
                    "kl_reverse", "kl_forward", "train_seconds")),
)


class Registry(components.Registry[Family]):
    """Families and toys by name, in registration order (`register` is the only way in)."""

    def __init__(self, families: tuple[Family, ...] = ()) -> None:
        super().__init__("family")
        for family in families:
            self.register(family)

    def models(self) -> tuple[str, ...]:
        """The valid `model` values."""
        return tuple(n for n, f in self._records.items() if not f.toy)

    def toys(self) -> tuple[str, ...]:
        """The `dataset` values that are toys."""
        return tuple(n for n, f in self._records.items() if f.toy)

    def owned_keys(self) -> frozenset[str]:
        """Every config key some family owns."""
        return frozenset().union(*(f.owns for f in self._records.values()))

    def of(self, cfg: RunConfig) -> Family:
        """The family a config runs in: its toy, else its model."""
        if cfg.dataset in self.toys():
            return self._records[cfg.dataset]
        return self._records[cfg.model]

    def check(self, cfg: RunConfig) -> None:
        """Key ownership (a key only its owners may move from its default), then the
        family's own rules. `model` and `dataset` are known values here."""
        family = self.of(cfg)
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        for key in sorted(self.owned_keys()):
            if key in family.owns or getattr(cfg, key) == defaults[key]:
                continue
            owners = [f for f in self if key in f.owns]
            raise BenchError(f"key '{key}' applies to {_describe(owners)} only")
        if family.check is not None:
            family.check(cfg)


def _describe(families: list[Family]) -> str:
    models = [f"'{f.name}'" for f in families if not f.toy]
    toys = [f"'{f.name}'" for f in families if f.toy]
    parts = []
    if models:
        parts.append(f"model{'s' if len(models) > 1 else ''} {_join(models)}")
    if toys:
        parts.append(f"the toy{'s' if len(toys) > 1 else ''} {_join(toys)}")
    return " and ".join(parts)


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


#: the registry every part of vaebench reads
FAMILIES = Registry(BUILT_IN)
