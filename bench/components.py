"""What a config names besides its family: the objectives (`objective`) and the q(z|x)
families (`posterior`), each a registry of records, and the `Param` declarations with which a
component (objective, posterior or model family) adds settings of its own to the config's
`params` table.

A record names its implementation as "module:attribute" (imported when a run trains) or holds
it, so this module imports no torch. Built-in and plugin components are registered the same
way, by `Registry.register`: the built-ins below, a plugin's through `bench.plugins.API`
(which tags them with the plugin's name). Implementations:

    objective   make(cfg) -> bound, where bound(sample: ModelSample) -> (B,) tensor, the
                per-example objective the trainer maximises (bench.objectives). A component
                with uses_beta also takes `beta=` (a stack passes each variant's beta).
                An objective may ask the model for more than the plain log-densities
                (`views`, bench.models.lvm.Views): "stl", log q at the sample with q's
                parameters stopped (Roeder et al. 2017); "split", log p(x, z) once for the
                generative parameters only and once for the sample's path only, so the
                encoder and the decoder can follow different gradients in one backward pass.
                Its `check(cfg)` refuses configs it cannot train (BenchError).
    posterior   an nn.Module class called as cls(n_in, hidden, n_latent, **kw), kw = {steps:
                flow_steps} for a flow (`flow=True`) plus the config's params it declares;
                the interface of bench.models.posteriors.GaussianPosterior.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.config import RunConfig

BUILT_IN = "vaebench"  # the `plugin` of everything vaebench itself registers
#: what an objective may ask of the model's sample beyond the plain log-densities
#: (bench.models.lvm.Views): "stl" and "split" (see the module docstring)
VIEWS = ("stl", "split")
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    """One setting a component adds to the config's `params` table: its name, type, default
    and allowed values; validated, shown in reports and hashed into the run_id like every
    other config key."""

    name: str
    type: type = float  # int, float, str or bool
    default: Any = None
    minimum: float | None = None  # inclusive bounds for numbers (None: unbounded)
    maximum: float | None = None
    exclude: tuple[Any, ...] = ()  # values in range that are still refused
    choices: tuple[Any, ...] = ()  # the allowed values, for strings
    help: str = ""

    def check_declaration(self) -> None:
        """A malformed declaration is a BenchError naming what is wrong."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise BenchError(f"param name {self.name!r} must be an identifier")
        if self.type not in _KINDS:
            raise BenchError(f"param '{self.name}': type must be int, float, str or bool, "
                             f"got {self.type!r}")
        if self.default is None:
            raise BenchError(f"param '{self.name}' has no default")
        self.coerce(self.default, "its default")

    def coerce(self, value: Any, where: str = "") -> Any:
        """`value` as this param's type, or a BenchError naming the param and the problem."""
        what = f"param '{self.name}'" + (f" ({where})" if where else "")
        kind = _KINDS[self.type]
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise BenchError(f"{what} must be {kind}, got {value!r}")
        if self.type is float and math.isnan(value):
            raise BenchError(f"{what} must be a number, got nan")
        if self.minimum is not None and value < self.minimum:
            raise BenchError(f"{what} must be >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise BenchError(f"{what} must be <= {self.maximum:g}, got {value!r}")
        if value in self.exclude:
            raise BenchError(f"{what} may not be {value!r}")
        if self.choices and value not in self.choices:
            raise BenchError(f"{what} must be one of {', '.join(map(str, self.choices))}, "
                             f"got {value!r}")
        return value


def check_params(params: tuple[Param, ...], owner: str) -> None:
    """Every declaration well-formed and no name twice, or a BenchError naming `owner`."""
    seen: set[str] = set()
    for param in params:
        if not isinstance(param, Param):
            raise BenchError(f"{owner}: params must be bench.plugins.Param records, got "
                             f"{param!r}")
        try:
            param.check_declaration()
        except BenchError as err:
            raise BenchError(f"{owner}: {err}") from None
        if param.name in seen:
            raise BenchError(f"{owner}: param '{param.name}' is declared twice")
        seen.add(param.name)


@dataclass(frozen=True)
class Component:
    """An objective or a posterior."""

    name: str
    impl: str | Callable  # "module:attribute", or the object itself
    params: tuple[Param, ...] = ()
    help: str = ""
    plugin: str = BUILT_IN  # who registered it (a plugin's name)
    uses_beta: bool = False  # objectives: takes `beta` (only then may beta != 1)
    flow: bool = False  # posteriors: takes `steps` = flow_steps >= 1
    views: tuple[str, ...] = ()  # objectives: what it needs of the sample (VIEWS)
    # objectives: the values that make a lone `objective = name` a valid config (a suite's
    # check of each value on its own), e.g. {"kl_direction": "forward"}
    companions: Mapping[str, Any] = field(default_factory=dict)
    # objectives: its own rules on the config beyond its params (BenchError naming the key)
    check: Callable[[RunConfig], None] | None = None

    def __post_init__(self) -> None:
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown:
            raise BenchError(f"component '{self.name}': unknown view '{unknown[0]}' (known: "
                             f"{', '.join(VIEWS)})")

    def load(self) -> Any:
        """The implementation (importing its module, and torch, now)."""
        if not isinstance(self.impl, str):
            return self.impl
        module, _, attribute = self.impl.partition(":")
        return getattr(importlib.import_module(module), attribute)


T = TypeVar("T")


class Registry(Generic[T]):
    """Records of one kind by name, in registration order. `register` is the only way in:
    vaebench's built-ins and every plugin's records take it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._records: dict[str, T] = {}

    def register(self, record: T) -> T:
        name = record.name  # type: ignore[attr-defined]
        self.check_name(name)
        if name in self._records:
            owner = getattr(self._records[name], "plugin", BUILT_IN)
            raise BenchError(f"{self.kind} '{name}' already exists (registered by {owner})")
        check_params(getattr(record, "params", ()), f"{self.kind} '{name}'")
        self._records[name] = record
        return record

    def check_name(self, name: Any) -> None:
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise BenchError(f"{self.kind} name {name!r} must be letters, digits and '_'")

    def unregister(self, name: str) -> None:
        self._records.pop(name)

    def get(self, name: str) -> T:
        if name not in self._records:
            raise BenchError(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._records[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._records.values()))

    @contextmanager
    def registered(self, record: T) -> Iterator[T]:
        """`record` registered for the duration of a `with` block (tests)."""
        self.register(record)
        try:
            yield record
        finally:
            self.unregister(record.name)  # type: ignore[attr-defined]


def params_of(records: Mapping[str, Any]) -> dict[str, tuple[str, Param]]:
    """param name -> (owner description, declaration) over the given named records
    ({"objective 'vr'": component, ...}); used by the config to resolve its params table.
    A name two of them declare is a BenchError: a config could not tell which it sets."""
    out: dict[str, tuple[str, Param]] = {}
    for owner, record in records.items():
        for param in getattr(record, "params", ()):
            if param.name in out:
                raise BenchError(f"param '{param.name}' is declared by both "
                                 f"{out[param.name][0]} and {owner}: a config cannot tell "
                                 "which it sets")
            out[param.name] = (owner, param)
    return out


#: objectives by name (the config's `objective`)
OBJECTIVES: Registry[Component] = Registry("objective")
#: q(z|x) families by name (the config's `posterior`)
POSTERIORS: Registry[Component] = Registry("posterior")


def check_views(cfg: RunConfig, objective: Component) -> None:
    """What an objective's views need of a config (any objective, a plugin's too): the VAE
    family's model computes them, and "stl" needs log q at stopped parameters, which the
    Gaussian posterior has in closed form."""
    if objective.views and cfg.model != "lvm":
        raise BenchError(f"objective '{cfg.objective}' needs model 'lvm' (the VAE family's "
                         f"model computes the views its gradient needs), not '{cfg.model}'")
    if "stl" in objective.views and cfg.posterior != "gaussian":
        raise BenchError(
            f"objective '{cfg.objective}' needs posterior 'gaussian': it takes log q at the "
            f"sample with q's parameters stopped, which vaebench has in closed form for the "
            f"Gaussian only (a flow such as '{cfg.posterior}' would need its density at the "
            "sample under stopped flow parameters: planar and radial flows have no inverse)")


# ----------------------------------------------------------- the built-in objectives' rules
def _path_derivative(cfg: RunConfig) -> None:
    """stl, dreg and rws_dreg train the encoder on the bound, or rws_dreg on forward KL."""
    if cfg.objective == "rws_dreg" and cfg.kl_direction != "forward":
        raise BenchError("objective 'rws_dreg' is the wake-phi update of kl_direction "
                         "'forward': set kl_direction = 'forward' (reverse KL with doubly "
                         "reparameterised gradients is objective 'dreg')")
    if cfg.objective != "rws_dreg" and cfg.kl_direction != "reverse":
        raise BenchError(f"objective '{cfg.objective}' trains the encoder on the bound "
                         "(kl_direction 'reverse'); the forward-KL wake-phi update with doubly "
                         "reparameterised gradients is objective 'rws_dreg'")


def _groups(cfg: RunConfig) -> None:
    """miwae and piwae: the k samples are M groups of K."""
    m = cfg.param("m")
    if cfg.k % m:
        raise BenchError(f"objective '{cfg.objective}': k = {cfg.k} samples must be m = {m} "
                         f"groups of K = k / m (k a multiple of m)")


def _mixture_weight(cfg: RunConfig) -> None:
    if not 0.0 <= cfg.beta <= 1.0:
        raise BenchError(f"objective 'ciwae' is beta x ELBO + (1 - beta) x IWAE: key 'beta' "
                         f"must be in [0, 1], got {cfg.beta:g}")


_M = Param("m", int, 1, minimum=1,
           help="M: the k samples are M groups of K = k / M (Rainforth et al. 2018)")

for _component in (
    Component("vae", "bench.objectives:make_vae", uses_beta=True,
              help="mean of k ELBO terms with weight beta on the KL (k = 1: the ELBO)"),
    Component("iwae", "bench.objectives:make_iwae",
              help="log-mean-exp of k importance weights (Burda et al. 2015)"),
    Component("stl", "bench.objectives:make_stl", views=("stl",), check=_path_derivative,
              help="IWAE bound, 'sticking the landing' gradient: log q's score term dropped "
                   "(Roeder et al. 2017; biased for k > 1)"),
    Component("dreg", "bench.objectives:make_dreg", views=("stl", "split"),
              check=_path_derivative,
              help="IWAE bound, doubly reparameterised encoder gradient: squared normalised "
                   "weights times the path derivative (Tucker et al. 2019); decoder: IWAE's"),
    Component("rws_dreg", "bench.objectives:make_rws_dreg", views=("stl", "split"),
              check=_path_derivative, companions={"kl_direction": "forward"},
              help="reweighted wake-sleep (kl_direction 'forward') with the doubly "
                   "reparameterised wake-phi gradient (Tucker et al. 2019)"),
    Component("miwae", "bench.objectives:make_miwae", params=(_M,), check=_groups,
              help="MIWAE(M, K): mean of M IWAE-K bounds over k = M x K samples "
                   "(Rainforth et al. 2018)"),
    Component("piwae", "bench.objectives:make_piwae", params=(_M,), views=("split",),
              check=_groups,
              help="PIWAE(M, K): encoder on MIWAE(M, K), decoder on IWAE(M x K), from the "
                   "same k = M x K samples (Rainforth et al. 2018)"),
    Component("ciwae", "bench.objectives:make_ciwae", uses_beta=True, check=_mixture_weight,
              help="CIWAE(beta): beta x ELBO + (1 - beta) x IWAE-k of the same k samples "
                   "(Rainforth et al. 2018)"),
):
    OBJECTIVES.register(_component)
for _component in (
    Component("gaussian", "bench.models.posteriors:GaussianPosterior",
              help="diagonal Gaussian"),
    Component("planar", "bench.models.flows:PlanarPosterior", flow=True,
              help="Gaussian then K planar flows (Rezende & Mohamed 2015)"),
    Component("radial", "bench.models.flows:RadialPosterior", flow=True,
              help="Gaussian then K radial flows (Rezende & Mohamed 2015)"),
    Component("iaf", "bench.models.flows:IAFPosterior", flow=True,
              help="Gaussian then K inverse autoregressive flows (Kingma et al. 2016)"),
):
    POSTERIORS.register(_component)
