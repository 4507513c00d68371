"""Plugins: methods that live outside vaebench's tree, run through its registries, runner,
store, compare and report, on every Ray worker, with their own identity.

A plugin is a Python module with a function `register(api)`. It is found
    - in an installed distribution, through the entry-point group `vaebench.plugins`
      (`[project.entry-points."vaebench.plugins"] vr = "vaebench_vr"`; loaded by every
      command),
    - by a module name or a `.py` file given with `--plugin` (run, train, report, compare,
      profile), or listed in a suite (`plugins = [...]` in [suite], paths relative to the
      suite file).
`register(api)` adds records through the `API` it is given: objectives, posteriors, model
families and toys, the catalog records of the metrics they store, and folders of suites.
vaebench's own built-ins enter the same registries by the same `register` methods
(bench.components, bench.families.registry, bench.metrics.catalog); there is no other way in.

Identity. A plugin is (name, version, digest): the distribution's name and version (a module
or file outside any distribution: its name, version ""), and the SHA-256 of its source files
(every .py file of its package, or the module's or file's own). A config that names a
plugin's component hashes that identity into its run_id (bench.config), so a changed plugin
is never served from the cache; rows record it in `sys_plugins`.

Workers. A plugin loaded in the driver is invisible to Ray's worker processes, so every task
carries the plugins its runs use, with their source files (by value: a cluster where only
the driver has the file runs it too). `ensure` loads them in the worker before the run trains:
a module it can import with the same digest as is, otherwise the shipped files from a folder
of their own. A worker that cannot load one fails that run as a `failed` row naming the
plugin and the error; the grid goes on.

This module imports no torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.components import OBJECTIVES, POSTERIORS, Component, Param
from bench.errors import BenchError
from bench.families.registry import FAMILIES, Family
from bench.metrics.catalog import CATALOG, HIGHER, LOWER, NONE, Metric

ENTRY_POINT_GROUP = "vaebench.plugins"
FILE_MODULE_PREFIX = "vaebench_plugin_"  # the module name a .py file plugin is loaded as

__all__ = ["API", "ENTRY_POINT_GROUP", "HIGHER", "LOWER", "NONE", "Family", "Metric", "Param",
           "Plugin", "PluginError", "ensure", "load", "loaded", "plugin_identity"]


class PluginError(BenchError):
    """A plugin that cannot be loaded or registers something invalid: one line naming it."""


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin: who it is, and what a worker needs to load the same code."""

    name: str  # the distribution's name, else the module's name or the file's stem
    version: str  # the distribution's version; "" outside a distribution
    digest: str  # SHA-256 (hex) of its source files
    origin: str  # "entry point", "module" or "file"
    module: str  # the module it is imported as
    register: str = "register"  # the function of `module` (or "module:attr") to call
    # its source files, (path relative to the folder it is imported from, bytes)
    files: tuple[tuple[str, bytes], ...] = field(repr=False, default=())

    @property
    def label(self) -> str:
        """How errors and reports name it: "vaebench-vr 0.1.0 (code a1b2c3d4e5f6)"."""
        return describe(self.name, self.identity())

    @property
    def short(self) -> str:
        return self.digest[:12]

    def identity(self) -> dict[str, str]:
        return {"version": self.version, "digest": self.digest}


# Per process: the plugins loaded here, and what each registered (so a changed plugin can
# be replaced in a long-lived worker). Registries are per process; so is this.
_LOADED: dict[str, Plugin] = {}
_RECORDS: dict[str, list[tuple[Any, str]]] = {}  # plugin name -> (registry, record name)
_SUITE_FOLDERS: dict[str, list[Path]] = {}


def describe(name: str, identity: dict[str, str]) -> str:
    """A plugin as reports and messages name it, from its identity (a run's sys_plugins):
    "vaebench-vr 0.1.0 (code a1b2c3d4e5f6)", "myplugin (code a1b2c3d4e5f6)"."""
    version = f" {identity['version']}" if identity.get("version") else ""
    return f"{name}{version} (code {identity['digest'][:12]})"


def loaded() -> tuple[Plugin, ...]:
    """The plugins loaded in this process, in load order."""
    return tuple(_LOADED.values())


def get(name: str) -> Plugin:
    if name not in _LOADED:
        raise PluginError(f"plugin {name} is not loaded in this process")
    return _LOADED[name]


def plugin_identity(name: str) -> dict[str, str]:
    """{"version", "digest"} of a loaded plugin: what a run_id hashes for it."""
    return get(name).identity()


def suite_folders() -> tuple[Path, ...]:
    """The folders of suites the loaded plugins ship (searched after ./suites)."""
    return tuple(folder for folders in _SUITE_FOLDERS.values() for folder in folders)


def shipment(code: Mapping[str, Mapping[str, str]]) -> tuple[Plugin, ...]:
    """The loaded plugins a task's configs ran with (their `plugin_code()`), with their
    source files: what the task carries. A plugin reloaded with other code since the configs
    were made is an error: its workers would run code the run_ids do not name."""
    out = []
    for name in sorted(code):
        plugin = get(name)
        if plugin.identity() != dict(code[name]):
            raise PluginError(
                f"plugin {name} changed since its runs were planned (code "
                f"{code[name]['digest'][:12]} -> {plugin.short}): load the suite again")
        out.append(plugin)
    return tuple(out)


@contextmanager
def scoped() -> Iterator[None]:
    """Plugins loaded inside the block are unloaded at its end, their modules forgotten
    (tests: registries are per process, and other tests count the built-in records)."""
    before = set(_LOADED)
    try:
        yield
    finally:
        for plugin in [p for p in _LOADED.values() if p.name not in before]:
            unload(plugin.name)
            forget_module(plugin.module)


# ---------------------------------------------------------------------------- the API
class API:
    """What a plugin's `register(api)` is given: one method per kind of record. Each record
    is tagged with the plugin's name; every error is a PluginError naming the plugin."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin

    def objective(self, name: str, make: Callable | str, *, params: Sequence[Param] = (),
                  views: Sequence[str] = (), help: str = "") -> None:
        """An objective: make(cfg) -> bound, bound(sample) -> (B,) per-example tensor to
        maximise (sample: bench.models.ModelSample, with log_weights (k, B), log_qz, log_pz,
        log_px_given_z); cfg.param(name) reads the params it declares. `views` asks the
        model for more (bench.components.VIEWS): "stl" fills sample.log_qz_stl (log q at q's
        stopped parameters), "split" sample.log_joint_path (log p(x, z) at p's stopped
        parameters; log_px_given_z and log_pz then at z stopped), as the built-in stl, dreg
        and piwae use them; a view needs the VAE family (and "stl" the Gaussian posterior)."""
        try:
            component = Component(name, make, tuple(params), help, self.plugin,
                                  views=tuple(views))
        except BenchError as err:
            raise PluginError(f"plugin {self.plugin}: {err}") from None
        self._add(OBJECTIVES, component)

    def posterior(self, name: str, cls: type | str, *, params: Sequence[Param] = (),
                  flow: bool = False, help: str = "") -> None:
        """A q(z|x) family: an nn.Module class called as cls(n_in, hidden, n_latent, **kw)
        with the interface of bench.models.posteriors.GaussianPosterior; kw holds
        steps = flow_steps if `flow`, and the params it declares."""
        self._add(POSTERIORS, Component(name, cls, tuple(params), help, self.plugin,
                                        flow=flow))

    def family(self, family: Family) -> None:
        """A model family, or a toy (Family(..., toy=True)): see bench.families.registry."""
        if not isinstance(family, Family):
            raise PluginError(f"plugin {self.plugin}: api.family takes a bench.plugins.Family, "
                              f"got {family!r}")
        shared = sorted(set(family.owns) - FAMILIES.owned_keys())
        if shared:  # owning `k` would refuse k != 1 in every other family's runs
            raise PluginError(
                f"plugin {self.plugin}: family '{family.name}' owns key '{shared[0]}', which "
                "every family uses: declare the family's own settings as params instead")
        self._add(FAMILIES, replace(family, plugin=self.plugin))

    def metric(self, metric: Metric) -> None:
        """The catalog record of a metric its runs store (compare and the gate read it)."""
        self._add(CATALOG, metric)

    def suites(self, folder: str | Path) -> None:
        """A folder of suite TOML files, found by name by `vaebench run NAME` and the report."""
        path = Path(folder)
        if not path.is_dir():
            raise PluginError(f"plugin {self.plugin}: suite folder {path} does not exist")
        _SUITE_FOLDERS.setdefault(self.plugin, []).append(path)

    def _add(self, registry: Any, record: Any) -> None:
        try:
            registry.register(record)
        except BenchError as err:
            raise PluginError(f"plugin {self.plugin}: {err}") from None
        _RECORDS.setdefault(self.plugin, []).append((registry, record.name))


# ---------------------------------------------------------------------------- loading
def load(specs: Sequence[str] = (), *, entry_points: bool = True,
         base: Path | None = None) -> tuple[Plugin, ...]:
    """Load the installed plugins (entry points) and those of `specs` (module names or .py
    paths, relative to `base` if given); each only once per process. Returns the plugins of
    `specs`. Any failure is a PluginError naming the plugin."""
    if entry_points:
        found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        per_dist: dict[str, int] = {}
        for ep in found:
            per_dist[_dist_name(ep)] = per_dist.get(_dist_name(ep), 0) + 1
        for ep in found:  # a distribution's name, or with several: "dist:entry point"
            dist = _dist_name(ep)
            _load_entry_point(ep, dist if per_dist[dist] == 1 else f"{dist}:{ep.name}")
    return tuple(_load_spec(spec, base) for spec in specs)


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.name


def _load_entry_point(ep: importlib.metadata.EntryPoint, name: str) -> Plugin:
    module_name, _, attribute = (part.strip() for part in ep.value.partition(":"))
    if name in _LOADED:
        return _LOADED[name]
    what = f"plugin {name} (entry point {ep.name} = {ep.value!r})"
    module = _import(module_name, what)
    version = ep.dist.version if ep.dist is not None else ""
    return _register(what, name, version, "entry point", module, attribute or "register")


def _load_spec(spec: str, base: Path | None) -> Plugin:
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"plugin {spec!r}: give a module name or a path to a .py file")
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec) if base is None or Path(spec).is_absolute() else base / spec
        return _load_file(path.resolve())
    for plugin in _LOADED.values():  # already loaded (by an entry point, or earlier)
        if plugin.module == spec:
            return plugin
    what = f"plugin {spec}"
    module = _import(spec, what)
    dist, version = _distribution_of(spec) or (spec, "")
    name = dist if "." not in spec else f"{dist}:{spec}"  # one plugin per module
    return _register(what, name, version, "module", module, "register")


def _load_file(path: Path) -> Plugin:
    if not path.is_file():
        raise PluginError(f"plugin {path}: no such .py file (a module is given by its name)")
    what = f"plugin {path.stem} ({path})"
    module_name = FILE_MODULE_PREFIX + path.stem
    for plugin in list(_LOADED.values()):
        if plugin.module == module_name:
            if plugin.digest == _digest(((f"{module_name}.py", path.read_bytes()),)):
                return plugin
            unload(plugin.name)  # the file was edited (or another file of that name): reload
            forget_module(module_name)
    module = _exec_file(module_name, path, what)
    return _register(what, path.stem, "", "file", module, "register")


def _import(module_name: str, what: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except (Exception, SystemExit) as err:  # a plugin's import may raise anything
        raise PluginError(f"{what}: cannot import it: {_describe(err)}") from None


def _exec_file(module_name: str, path: Path, what: str) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{what}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:
        del sys.modules[module_name]
        raise PluginError(f"{what}: importing it raised {_describe(err)}") from None
    return module


def _register(what: str, name: str, version: str, origin: str, module: Any,
              attribute: str) -> Plugin:
    """Call `module`'s register function (`attribute`, dotted) with an API in the name of
    the plugin, whose records it tags; anything it raises unloads it again."""
    register: Any = module
    for part in attribute.split("."):
        register = getattr(register, part, None)
    if not callable(register):
        raise PluginError(f"{what}: defines no {attribute}(api) function")
    if name in _LOADED:
        raise PluginError(f"{what}: a plugin named {name} is already loaded (from "
                          f"{_LOADED[name].origin} {_LOADED[name].module})")
    files = _source_files(module)
    plugin = Plugin(name, version, _digest(files), origin, module.__name__, attribute, files)
    _LOADED[name] = plugin
    try:
        register(API(name))
    except (Exception, SystemExit) as err:
        unload(name)
        forget_module(module.__name__)
        if isinstance(err, PluginError):
            raise
        raise PluginError(f"{what}: register(api) raised {_describe(err)}") from None
    return plugin


def unload(name: str) -> None:
    """Take a plugin's records out of every registry (a worker replacing a changed one)."""
    for registry, record in reversed(_RECORDS.pop(name, [])):
        registry.unregister(record)
    _SUITE_FOLDERS.pop(name, None)
    _LOADED.pop(name, None)


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _distribution_of(module_name: str) -> tuple[str, str] | None:
    top = module_name.partition(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist_name, importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _source_files(module: Any) -> tuple[tuple[str, bytes], ...]:
    """(path relative to the folder the module is imported from, bytes) of every .py file of
    the module's top-level package, or of the module itself."""
    top = sys.modules.get(module.__name__.partition(".")[0], module)
    package = getattr(top, "__path__", None)
    if package:
        root = Path(list(package)[0])
        return tuple((f"{root.name}/{p.relative_to(root).as_posix()}", p.read_bytes())
                     for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts)
    if getattr(top, "__file__", None) is None:  # a namespace package: no files of its own
        return ()
    path = Path(top.__file__)
    return ((f"{top.__name__}.py" if top.__name__.startswith(FILE_MODULE_PREFIX)
             else path.name, path.read_bytes()),)


def _digest(files: Iterable[tuple[str, bytes]]) -> str:
    sha = hashlib.sha256()
    for relative, content in sorted(files):
        sha.update(relative.encode() + b"\0" + hashlib.sha256(content).digest())
    return sha.hexdigest()


# ---------------------------------------------------------------------------- workers
def ensure(plugins: Sequence[Plugin]) -> None:
    """Load in this process (a Ray worker) the plugins a task carries, as the driver had
    them: already loaded with the same digest, importable here with the same digest, or
    else from the shipped files. A PluginError names the plugin that cannot be loaded."""
    for plugin in plugins:
        here = _LOADED.get(plugin.name)
        if here is not None and here.digest == plugin.digest:
            continue
        if here is not None:  # a long-lived worker that loaded another version of it
            unload(plugin.name)
            forget_module(plugin.module)
        what = f"plugin {plugin.label}"
        if plugin.origin != "file" and _importable_with(plugin):
            module = _import(plugin.module, what)
        else:
            module = _materialise(plugin, what)
        loaded_here = _register(what, plugin.name, plugin.version, plugin.origin, module,
                                plugin.register)
        if loaded_here.digest != plugin.digest:  # shipped files changed in transit
            unload(plugin.name)
            raise PluginError(f"{what}: its code here has digest {loaded_here.short}, the "
                              f"driver's {plugin.short}")


def _importable_with(plugin: Plugin) -> bool:
    """Whether this process imports `plugin.module` from files with the driver's digest."""
    spec = importlib.util.find_spec(plugin.module.partition(".")[0])
    if spec is None or spec.origin is None:
        return False
    try:
        module = importlib.import_module(plugin.module)
    except (Exception, SystemExit):
        return False
    if _digest(_source_files(module)) == plugin.digest:
        return True
    forget_module(plugin.module)
    return False


def _materialise(plugin: Plugin, what: str) -> Any:
    """Write the shipped files under a folder named by the digest and import from there."""
    if not plugin.files:
        raise PluginError(f"{what}: not importable here and shipped without its files")
    folder = Path(tempfile.gettempdir()) / "vaebench-plugins" / plugin.digest
    for relative, content in plugin.files:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != content:
            # atomically: two workers of one node may write the same file at once
            partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            partial.write_bytes(content)
            os.replace(partial, target)
    if plugin.origin == "file":
        return _exec_file(plugin.module, folder / plugin.files[0][0], what)
    sys.path.insert(0, str(folder))
    try:
        return _import(plugin.module, what)
    finally:
        sys.path.remove(str(folder))


def forget_module(module_name: str) -> None:
    top = module_name.partition(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[name]

