"""What defines one experiment: a frozen, validated `RunConfig` and its content-derived `run_id`.

A config is a value: built once from a mapping (TOML, CLI flags), validated, never mutated.
Unknown keys and invalid values raise `BenchError` naming the key, so a typo in a suite can
never silently fall back to a default. Where an experiment runs (device, threads, host) is
provenance, not identity, and is deliberately absent here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.components import BUILT_IN, OBJECTIVES, POSTERIORS, check_views, params_of
from bench.errors import BenchError
from bench.families.registry import FAMILIES
from bench.plugins import plugin_identity

LIKELIHOODS = ("bernoulli", "gaussian")
KL_DIRECTIONS = ("reverse", "forward")
SCHEDULES = ("constant", "burda")
ARCHITECTURES = ("mlp", "conv")
INITS = ("authors", "torch")
OPTIMIZERS = ("adam", "burda_adam")
DCI_ESTIMATORS = ("forest", "boosting")

#: The version of what a run computes beyond its config: part of every run_id, so a store
#: never serves a result of older code as cached. Bump it (and say what changed below) with
#: every change that moves the results of an unchanged config: a new default that behaves
#: differently, a fixed bug in a trainer, estimator or data pipeline.
#:   1  first release (PyTorch's default initialisation)
#:   2  issue 13: the IWAE authors' initialisation by default (Glorot-uniform weights, zero
#:      biases, Bernoulli output bias = logit of the training pixel means); the burda
#:      schedule's learning rates rounded as in the authors' code
#:   3  issue 16: the test-set estimate runs each chunk through the model in slices of
#:      2048 rows (bench.metrics.likelihood.ROWS_PER_PASS), which sums its importance
#:      weights in another order: test LL and ESS move in their last bits (about 1e-13)
PROTOCOL = 3
CONDITIONS = ("none", "label", "quadrants")
IMAGE_DATASETS = ("digits", "mnist", "shapes", "shapes_small")  # loaded by bench.data
# model families (`model`) and toys (`dataset`, experiments with known answers) are the
# records of bench.families.registry.FAMILIES: FAMILIES.models(), FAMILIES.toys();
# objectives and posteriors those of bench.components.OBJECTIVES and POSTERIORS. Each may
# declare settings of its own (bench.components.Param): the config's `params` table.


@dataclass(frozen=True)
class RunConfig:
    """One variant of one experiment, fully resolved (every default applied)."""

    # --- data
    dataset: str = "digits"
    train_size: int | None = None  # first N training examples; None = all
    test_size: int | None = None  # first N test examples; None = all

    # --- model: one entry per stochastic layer, bottom (next to x) first.
    # The IWAE paper's 1-layer model is hidden=[[200,200]], latent=[50];
    # its 2-layer model is hidden=[[200,200],[100,100]], latent=[100,50].
    hidden: tuple[tuple[int, ...], ...] = ((200, 200),)
    latent: tuple[int, ...] = (50,)
    likelihood: str = "bernoulli"  # p(x|z): Bernoulli logits, or N(f(z), I) for continuous data
    posterior: str = "gaussian"  # q(z|x) family; flows plug in here
    flow_steps: int = 0  # K steps of a flow posterior (0 for the plain Gaussian)

    # --- objective
    # vae: mean of k ELBO terms (k=1: the ELBO); iwae: log-mean-exp of k importance weights
    objective: str = "vae"
    k: int = 1  # samples per example, drawn as one (k, B, z) tensor
    beta: float = 1.0  # weight on the KL term (vae only); beta=0 is the plain autoencoder objective
    analytic_kl: bool = True  # use the closed-form Gaussian KL where it exists
    # how the encoder is trained: reverse = KL(q||p) through the bound's own gradient;
    # forward = KL(p||q) by the reweighted wake-sleep wake-phi update (objective iwae)
    kl_direction: str = "reverse"

    # --- optimisation (Burda et al. 2015: Adam, beta1=0.9, beta2=0.999, eps=1e-4)
    # adam: torch's Adam on the minibatch mean loss with adam_beta1/adam_beta2/adam_eps;
    # burda_adam: the update of the IWAE authors' code (bench.optim.BurdaAdam) on the loss
    # summed over the minibatch, with that code's constants (adam_* keys must stay unset)
    optimizer: str = "adam"
    schedule: str = "constant"  # constant: `epochs` at `lr`; burda: 3^i epochs at 1e-3*10^(-i/7)
    burda_stages: int = 8  # stages i = 0..burda_stages-1 of the burda schedule (8 -> 3280 epochs)
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-4
    seed: int = 0

    # --- evaluation
    k_eval: int = 5000  # importance samples for the test log-likelihood estimate

    # --- toys (dataset gmm or bimodal): optimisation steps; model mixture: EM iterations;
    # 0 for everything trained by epochs
    iterations: int = 0

    # --- model family (bench.families). lvm: the VAE family above (the default);
    # mixture: a mixture of Bernoullis fitted by EM, exact log p(x);
    # cvae: conditional VAE q(z|x,y), p(x|y,z); conditional_nn: its deterministic baseline;
    # m2: the semi-supervised VAE of Kingma et al. 2014
    model: str = "lvm"
    components: int = 0  # mixture: number of components K
    condition: str = "none"  # cvae / conditional_nn: "label" (the class) or "quadrants"
    given_quadrants: int = 0  # condition "quadrants": 1, 2 or 3 quadrants given
    labelled: int = 0  # m2: class-balanced labelled training examples N
    alpha: float = 0.1  # m2: classification loss alpha * N_train * mean labelled -log q(y|x)
    input_dropout: float = 0.0  # lvm: zero each input pixel with this probability in training
    eval_inpainting: bool = False  # lvm: score imputation of masked test images

    # --- initialisation. authors: as the IWAE authors' code (Glorot-uniform weights, zero
    # biases, every Bernoulli decoder's output bias = logit(clip(mean training pixel, 1e-3,
    # 1 - 1e-3)) of the run's own training set); torch: PyTorch's default initialisation
    init: str = "authors"

    # --- data and early stopping (models cvae and conditional_nn). binarize = false scores
    # grey-level targets with the Bernoulli cross-entropy (as Pyro's CVAE example does) and
    # feeds grey-level inputs; validation_size holds out the LAST n training images as a
    # validation split; patience > 0 stops a training stage after `patience` epochs without
    # a better validation loss and keeps the best epoch's weights
    binarize: bool = True
    validation_size: int = 0
    patience: int = 0

    # --- disentanglement (issue 9). architecture: mlp (hidden sizes above) or conv (Burgess
    # et al. 2018: four 4x4 stride-2 convolutions of 32 channels, two 256-unit layers, mirrored
    # decoder; `hidden` is then unused). Controlled capacity (Burgess et al. 2018):
    # loss = -E log p(x|z) + gamma * |KL - C|, C raised linearly from 0 to capacity_max nats
    # over capacity_steps optimisation steps; capacity_max = 0 turns it off.
    architecture: str = "mlp"
    capacity_max: float = 0.0
    capacity_steps: int = 0
    gamma: float = 1000.0
    # DCI (data with known factors): forest (random forest) or boosting (scikit-learn's
    # gradient boosted trees, as disentanglement_lib); dci_train / dci_test > 0 draw that
    # many training and test points independently from the grid (disentanglement_lib: 10000
    # and 5000); 0 / 0 splits the metrics' one sample of FACTOR_POINTS 2:1
    dci_estimator: str = "forest"
    dci_train: int = 0
    dci_test: int = 0

    # --- gradient signal-to-noise ratio (bench.metrics.snr; model lvm): snr_draws > 0
    # measures the SNR of the run's gradient estimator from that many gradient draws on a
    # fixed minibatch, at initialisation and after training, and also every snr_every
    # epochs (0: those two only; these are part of the run's train_seconds)
    snr_draws: int = 0
    snr_every: int = 0

    # --- settings the config's objective, posterior or family declares for itself (a
    # plugin's hyperparameters): (name, value) pairs sorted by name, every declared default
    # applied. Given as a table (`params = { alpha = 0.5 }`, or `params.alpha` keys)
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.schedule == "burda":  # the schedule fixes the epoch count; resolve it here
            object.__setattr__(self, "epochs", sum(e for e, _ in self.lr_stages()))
        _validate(self)
        # the plugin code loaded now is part of the config's identity (a plugin file edited
        # later makes new configs, never changes the run_id of this one)
        object.__setattr__(self, "_plugin_code",
                           {name: plugin_identity(name) for name in self.plugins()})

    def __eq__(self, other: object) -> bool:  # the same run: fields and plugin code alike
        if not isinstance(other, RunConfig):
            return NotImplemented
        return self.canonical_json() == other.canonical_json()

    def __hash__(self) -> int:
        return hash(self.canonical_json())

    def plugin_code(self) -> dict[str, dict[str, str]]:
        """{plugin: {"version", "digest"}} of the plugin code this config runs, as loaded
        when it was made: what its run_id hashes and its row records."""
        code = self._plugin_code  # type: ignore[attr-defined]
        return {name: dict(identity) for name, identity in code.items()}

    def with_seed(self, seed: int) -> RunConfig:
        """This config at another seed, without building and validating it again: nothing
        `_validate` checks depends on the seed, and a sweep of 10^5 seeds spent most of its
        loading there. The identity (canonical JSON, hash) is computed afresh."""
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BenchError(f"key 'seed' must be an integer, got {seed!r}")
        clone = object.__new__(type(self))  # copy.copy, without its pickling protocol
        clone.__dict__.update(self.__dict__)
        object.__setattr__(clone, "seed", seed)
        clone.__dict__.pop("_canonical", None)
        clone.__dict__.pop("_hash", None)
        object.__setattr__(clone, "_plain_values", {**self._values(), "seed": seed})
        # The canonical JSON differs from this one's in the seed alone: substituted, not
        # serialised again (json.dumps was half of loading a suite of 10^5 seeds). Only
        # where the key occurs once: a param or plugin named "seed" would be ambiguous.
        text = self.canonical_json()
        mine = f'"seed":{self.seed}'
        if text.count('"seed":') == 1 and mine in text:
            code = self.__dict__["_canonical"][:2]  # the PROTOCOL and LATER_FIELDS it used
            object.__setattr__(clone, "_canonical",
                               (*code, text.replace(mine, f'"seed":{seed}')))
        return clone

    def param(self, name: str) -> Any:
        """The value of one of the config's params (KeyError if it has none of that name)."""
        return dict(self.params)[name]

    def records(self) -> dict[str, Any]:
        """What the config names, as registry records: {"objective 'vae'": ..., "posterior
        'gaussian'": ..., "model 'lvm'": ...}; its params and plugins come from these."""
        family = FAMILIES.of(self)
        return {f"objective '{self.objective}'": OBJECTIVES.get(self.objective),
                f"posterior '{self.posterior}'": POSTERIORS.get(self.posterior),
                f"{'toy' if family.toy else 'model'} '{family.name}'": family}

    def plugins(self) -> tuple[str, ...]:
        """The plugins whose code this config runs (sorted names; none for vaebench's own)."""
        return tuple(sorted({c.plugin for c in self.records().values()} - {BUILT_IN}))

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able values (lists for tuples, a dict of
        params)."""
        return _fresh(self._values())

    def _values(self) -> dict[str, Any]:
        """to_dict's values, computed once per config (frozen) and shared: never mutate."""
        values = self.__dict__.get("_plain_values")
        if values is None:
            values = {f.name: _plain(getattr(self, f.name)) for f in _FIELDS}
            values["params"] = dict(self.params)
            object.__setattr__(self, "_plain_values", values)
        return values

    def flat_dict(self) -> dict[str, Any]:
        """to_dict with each param as its own key "params.<name>" (the stored cfg_ columns,
        suite axes and filters use this form)."""
        values = self.to_dict()
        return {**{k: v for k, v in values.items() if k != "params"},
                **{f"{PARAMS_PREFIX}{k}": v for k, v in values["params"].items()}}

    def canonical_json(self) -> str:
        """Sorted, compact JSON of what defines the experiment: the fields, the code's
        `PROTOCOL` version and the identity (version, source digest) of every plugin whose
        code the config runs, as loaded when the config was made. Fields added after the
        first release (`LATER_FIELDS`) are left out while at their default, so adding a field
        that changes nothing keeps every run_id; a change that moves results bumps
        `PROTOCOL`, which changes every run_id. Computed once per config, PROTOCOL and
        LATER_FIELDS (the config is frozen): run_id, ==, hash and sets of configs ask for it
        many times per run, and a sweep of 10^5 runs spent most of its planning here."""
        cached = self.__dict__.get("_canonical")  # (PROTOCOL, LATER_FIELDS, text) of then
        if cached is not None and cached[0] == PROTOCOL and cached[1] == LATER_FIELDS:
            return cached[2]
        values = dict(self._values())  # keys are removed below, nested values only read
        for name, default in LATER_FIELDS.items():
            if values[name] == default:
                del values[name]
        if PROTOCOL > 1:  # protocol 1 hashed no version: its run_ids stay what they were
            values["protocol"] = PROTOCOL
        if self._plugin_code:  # type: ignore[attr-defined]  # part of what the run computes
            values["plugins"] = self._plugin_code  # type: ignore[attr-defined]
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "_canonical", (PROTOCOL, dict(LATER_FIELDS), text))
        return text

    @property
    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON: identical on every machine for the same config
        (kept beside the JSON it hashes, which is cached: computed once while it stands)."""
        text = self.canonical_json()
        cached = self.__dict__.get("_hash")
        if cached is not None and cached[0] is text:
            return cached[1]
        digest = hashlib.sha256(text.encode()).hexdigest()
        object.__setattr__(self, "_hash", (text, digest))
        return digest

    @property
    def run_id(self) -> str:
        return self.config_hash[:16]

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. `iwae-k5` or `vae-beta2`."""
        parts = [self.objective]
        if self.k != 1 or self.objective == "iwae":
            parts.append(f"k{self.k}")
        if self.beta != 1.0:
            parts.append(f"beta{self.beta:g}")
        if len(self.latent) > 1:
            parts.append(f"{len(self.latent)}layer")
        if self.posterior != "gaussian":  # a flow with its length
            parts.append(f"{self.posterior}{self.flow_steps or ''}")
        if self.kl_direction != "reverse":
            parts.append(f"{self.kl_direction}kl")
        if self.input_dropout:
            parts.append(f"drop{self.input_dropout:g}")
        if self.architecture != "mlp":
            parts.append(self.architecture)
        if self.capacity_max:
            parts.append(f"capacity{self.capacity_max:g}")
        if self.init != "authors":
            parts.append(f"{self.init}init")
        if self.optimizer != "adam":
            parts.append(self.optimizer.replace("_", ""))
        parts.extend(f"{name}{value:g}" if isinstance(value, float) else f"{name}{value}"
                     for name, value in self.params)
        if self.model == "mixture":
            return f"mixture-K{self.components}"
        if self.model in ("cvae", "conditional_nn"):
            what = "label" if self.condition == "label" else f"q{self.given_quadrants}"
            return f"{'cvae' if self.model == 'cvae' else 'nn'}-{what}"
        if self.model in ("m2", "classifier"):
            return f"{self.model}-n{self.labelled}"
        return "-".join(parts)

    # --------------------------------------------------------------- schedule
    def lr_stages(self) -> list[tuple[int, float]]:
        """(epochs, learning rate) per stage of the optimisation schedule."""
        if self.schedule == "burda":  # the authors' code rounds 10^(1-i/7) to one decimal
            return [(3**i, round(10 ** (1 - i / 7), 1) / 1e4) for i in range(self.burda_stages)]
        return [(self.epochs, self.lr)]

    def epoch_lrs(self) -> list[float]:
        """The learning rate of every epoch, in order (lr_stages expanded)."""
        return [lr for epochs, lr in self.lr_stages() for _ in range(epochs)]

    def replace(self, **changes: Any) -> RunConfig:
        """A config with `changes`; the params the changed objective, posterior or family no
        longer declares are left behind (unless `changes` gives params)."""
        values = {**self.to_dict(), **changes}
        if "params" not in changes:
            mine = declared_params(values)
            values["params"] = {k: v for k, v in values["params"].items() if k in mine}
        return config_from_dict(values)


PARAMS_PREFIX = "params."
_FIELDS = dataclasses.fields(RunConfig)


def _fresh(value: Any) -> Any:
    """A copy of plain JSON-like `value` (dicts and lists copied, leaves shared)."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


def config_from_dict(values: Mapping[str, Any], *, where: str = "config") -> RunConfig:
    """Build a validated `RunConfig`; `where` prefixes error messages (e.g. a suite file name).
    Params come as a `params` mapping, as "params.<name>" keys, or both (the keys win)."""
    values = _gather_params(values, where)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BenchError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    kwargs = {key: _coerce(key, value, where) for key, value in values.items()}
    if kwargs.get("schedule") == "burda":
        burda_epochs = sum(3**i for i in range(max(0, kwargs.get("burda_stages", 8))))
        if "epochs" in kwargs and kwargs["epochs"] != burda_epochs:
            raise BenchError(
                f"{where}: key 'epochs' = {kwargs['epochs']} conflicts with schedule 'burda' "
                f"({burda_epochs} epochs); leave epochs unset"
            )
        kwargs["epochs"] = burda_epochs
    try:
        return RunConfig(**kwargs)
    except BenchError as err:
        raise BenchError(f"{where}: {err}") from None


# New fields go here with their default: a config that leaves them at the default hashes as
# before they existed. A default that behaves differently from the code before it also
# bumps PROTOCOL (init = "authors" did).
LATER_FIELDS: dict[str, Any] = {
    "iterations": 0, "model": "lvm", "components": 0, "condition": "none", "given_quadrants": 0,
    "labelled": 0, "alpha": 0.1, "input_dropout": 0.0, "eval_inpainting": False,
    "architecture": "mlp", "capacity_max": 0.0, "capacity_steps": 0, "gamma": 1000.0,
    "optimizer": "adam", "init": "authors", "binarize": True, "validation_size": 0,
    "patience": 0, "dci_estimator": "forest", "dci_train": 0, "dci_test": 0, "params": {},
    "snr_draws": 0, "snr_every": 0,
}


# ---------------------------------------------------------------------- internals
_INT_FIELDS = {
    "train_size", "test_size", "k", "burda_stages", "epochs", "batch_size", "seed", "k_eval",
    "flow_steps", "iterations", "components", "given_quadrants", "labelled", "capacity_steps",
    "validation_size", "patience", "dci_train", "dci_test", "snr_draws", "snr_every",
}
_FLOAT_FIELDS = {"beta", "lr", "adam_beta1", "adam_beta2", "adam_eps", "alpha", "input_dropout",
                 "capacity_max", "gamma"}
_BOOL_FIELDS = {"analytic_kl", "eval_inpainting", "binarize"}
_CHOICES = {
    "likelihood": LIKELIHOODS,
    "kl_direction": KL_DIRECTIONS,
    "schedule": SCHEDULES,
    "condition": CONDITIONS,
    "architecture": ARCHITECTURES,
    "init": INITS,
    "optimizer": OPTIMIZERS,
    "dci_estimator": DCI_ESTIMATORS,
}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Convert TOML/CLI/JSON values to the field's type, naming the key when it cannot."""

    def fail(expected: str) -> BenchError:
        return BenchError(f"{where}: key '{key}' must be {expected}, got {value!r}")

    if key in _INT_FIELDS:
        if value is None and key in ("train_size", "test_size"):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        if not math.isfinite(value):
            raise fail("a finite number")
        return float(value)
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if key == "params":
        if isinstance(value, tuple):  # RunConfig.params itself (replace, pickles)
            value = dict(value)
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise fail("a table of the params its objective, posterior or model declares")
        return dict(value)
    if key in _CHOICES or key in ("dataset", "model", "objective", "posterior"):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if key == "latent":
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
            raise fail("a list of integers, one per stochastic layer")
        return tuple(value)
    if key == "hidden":
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(layer, (list, tuple)) and all(_is_int(v) for v in layer) for layer in value
        ):
            raise fail("a list of lists of integers, one list per stochastic layer")
        return tuple(tuple(layer) for layer in value)
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _gather_params(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` with its "params.<name>" keys folded into one `params` mapping."""
    flat = {k[len(PARAMS_PREFIX):]: v for k, v in values.items()
            if isinstance(k, str) and k.startswith(PARAMS_PREFIX)}
    if not flat:
        return dict(values)
    out = {k: v for k, v in values.items() if not str(k).startswith(PARAMS_PREFIX)}
    nested = _coerce("params", out.get("params", {}), where)
    out["params"] = {**nested, **flat}
    return out


def declared_params(values: Mapping[str, Any]) -> set[str]:
    """The param names that the objective, posterior and family of a config's `values` (a
    mapping, defaults for what it lacks) declare; unknown component names declare none."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}

    def value(key: str) -> Any:
        return values.get(key, defaults[key])

    family = value("dataset") if value("dataset") in FAMILIES.toys() else value("model")
    records = [registry.get(name) for registry, name in (
        (OBJECTIVES, value("objective")), (POSTERIORS, value("posterior")), (FAMILIES, family))
        if isinstance(name, str) and name in registry]
    return {p.name for record in records for p in record.params}


def param_owners(name: str) -> list[tuple[str, Any]]:
    """Every registered component that declares a param `name`, as (config key that selects
    it: "objective", "posterior", "model" or "dataset" for a toy, its record)."""
    out = []
    for key, registry in (("objective", OBJECTIVES), ("posterior", POSTERIORS),
                          ("model", FAMILIES)):
        for record in registry:
            if any(p.name == name for p in record.params):
                out.append(("dataset" if getattr(record, "toy", False) else key, record))
    return out


def _resolve_params(cfg: RunConfig) -> None:
    """cfg.params checked against what its objective, posterior and family declare, each
    value coerced, every declared default filled in; sorted (name, value) pairs."""
    given = dict(cfg.params)
    records = cfg.records()
    declared = params_of(records)
    for name in sorted(set(given) - set(declared)):
        owners = [f"{key} '{record.name}'" for key, record in param_owners(name)]
        mine = ", ".join(f"{owner} ({len(r.params)})" for owner, r in records.items()
                         if r.params) or "none"
        raise BenchError(
            f"unknown param '{name}': "
            + (f"it belongs to {' and '.join(owners)}, which this config does not use"
               if owners else "no objective, posterior or model declares it")
            + f" (this config's components with params: {mine})")
    resolved = {name: param.coerce(given.get(name, param.default), f"of {owner}")
                for name, (owner, param) in declared.items()}
    object.__setattr__(cfg, "params", tuple(sorted(resolved.items())))


def _validate(cfg: RunConfig) -> None:
    choices = {**_CHOICES, "dataset": IMAGE_DATASETS + FAMILIES.toys(),
               "model": FAMILIES.models(), "objective": OBJECTIVES.names(),
               "posterior": POSTERIORS.names()}
    for key, known in choices.items():
        value = getattr(cfg, key)
        if value not in known:
            raise BenchError(f"unknown {key} '{value}' (known: {', '.join(known)})")
    _resolve_params(cfg)
    positive = ("k", "epochs", "batch_size", "k_eval", "burda_stages")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise BenchError(f"key '{key}' must be >= 1, got {getattr(cfg, key)}")
    for key in ("train_size", "test_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise BenchError(f"key '{key}' must be >= 1 (or unset for all), got {value}")
    for key in ("validation_size", "patience", "dci_train", "dci_test", "components",
                "iterations", "labelled", "capacity_steps", "snr_draws", "snr_every"):
        if getattr(cfg, key) < 0:
            raise BenchError(f"key '{key}' must be >= 0, got {getattr(cfg, key)}")
    for key in ("beta", "alpha", "capacity_max"):
        if getattr(cfg, key) < 0:
            raise BenchError(f"key '{key}' must be >= 0, got {getattr(cfg, key):g}")
    if not 0.0 <= cfg.input_dropout < 1.0:
        raise BenchError(f"key 'input_dropout' must be in [0, 1), got {cfg.input_dropout:g}")
    FAMILIES.check(cfg)  # which family owns which key, and each family's own rules
    if not POSTERIORS.get(cfg.posterior).flow and cfg.flow_steps != 0:
        raise BenchError(f"key 'flow_steps' needs a flow posterior (posterior "
                         f"'{cfg.posterior}' has none)")
    if POSTERIORS.get(cfg.posterior).flow and cfg.flow_steps < 1:
        raise BenchError(f"key 'flow_steps' must be >= 1 for posterior '{cfg.posterior}'")
    if cfg.kl_direction == "forward" and (cfg.objective not in ("iwae", "rws_dreg")
                                          or cfg.posterior != "gaussian"):
        raise BenchError(
            "key 'kl_direction' = 'forward' needs objective 'iwae' or 'rws_dreg' (the decoder "
            "trains on the IWAE bound) and posterior 'gaussian' (log q at a fixed sample)"
        )
    objective = OBJECTIVES.get(cfg.objective)
    check_views(cfg, objective)
    if objective.check is not None:
        objective.check(cfg)
    if not OBJECTIVES.get(cfg.objective).uses_beta and cfg.beta != 1.0:
        users = [f"'{o.name}'" for o in OBJECTIVES if o.uses_beta]
        raise BenchError(f"key 'beta' applies to objective {' and '.join(users)} only "
                         f"({cfg.objective} needs beta = 1)")
    if cfg.lr <= 0 or cfg.adam_eps <= 0:
        raise BenchError("keys 'lr' and 'adam_eps' must be > 0")
    if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1):
        raise BenchError("keys 'adam_beta1' and 'adam_beta2' must be in [0, 1)")
    if cfg.optimizer == "burda_adam" and (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps) != (
            0.9, 0.999, 1e-4):
        raise BenchError("keys 'adam_beta1', 'adam_beta2' and 'adam_eps' apply to optimizer "
                         "'adam' only (burda_adam uses the IWAE code's 0.99, 0.999, 1e-4)")
    if not cfg.latent or len(cfg.hidden) != len(cfg.latent):
        raise BenchError(
            f"keys 'hidden' and 'latent' need one entry per stochastic layer "
            f"(got {len(cfg.hidden)} and {len(cfg.latent)})"
        )
    if any(v < 1 for v in cfg.latent) or any(v < 1 for layer in cfg.hidden for v in layer):
        raise BenchError("keys 'hidden' and 'latent' must hold sizes >= 1")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
