"""The plugin manager: built-in plugins first, then external ones, then a check; and the registries.

Owns building the project's ``pluggy.PluginManager`` (built-ins from :data:`BUILTIN_PLUGINS`, then the
``tp_harness`` setuptools entry points, or exactly the ones ``TP_HARNESS_PLUGINS`` selects, then
``check_pending()``) and filling one :class:`Registries` object from the ``tp_register_<kind>s`` hooks.
Each hook implementation is called on its own with the registry bound to its plugin (name,
distribution, version, built-in or not), so every entry records who added it and a name added twice
raises ``DuplicateNameError`` naming both plugins and their distributions, whatever the install order.
There is no module-global manager: callers build one and pass the registries down.

Environment:
- ``TP_HARNESS_PLUGINS`` unset: every ``tp_harness`` entry point loads. Set to ``name,...``: only those,
  each an entry-point name or an importable module name. Set to ``""``: none (exactly the built-ins).
- ``TP_HARNESS_TRACE_PLUGINS=1``: trace every hook call to the ``tp_harness.plugin.manager`` logger (INFO) when it is
  enabled, else to stderr; the process's logging levels are left alone.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pluggy

from tp_harness.errors import PluginError, TpHarnessError
from tp_harness.plugin import hookspecs
from tp_harness.plugin.hookspecs import PROJECT, PluginInfo, Registries

log = logging.getLogger(__name__)

#: built-in plugins, registered exactly as third-party plugins are, in this order (which is also the
#: order their hooks run and their reporters are called: ``results.json`` is written before the report)
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tp_harness.data.formats",
    "tp_harness.evaluation.metrics",
    "tp_harness.backends",
    "tp_harness.optimizer.transfer",
    "tp_harness.interop.export",
    "tp_harness.reporting.report",
)

#: the distribution the built-in plugins come from
BUILTIN_DIST = "tp-harness"

#: selects the external plugins: unset = all entry points, "a,b" = exactly those, "" = none
PLUGINS_ENV = "TP_HARNESS_PLUGINS"
#: "1" traces every hook call to the ``tp_harness.plugin.manager`` logger
TRACE_ENV = "TP_HARNESS_TRACE_PLUGINS"

_HOOK_TO_REGISTRY = {
    "tp_register_data_formats": "data_formats",
    "tp_register_tasks": "data_formats",  # the deprecated name of the same hook
    "tp_register_metrics": "metrics",
    "tp_register_backends": "backends",
    "tp_register_optimizers": "optimizers",
    "tp_register_reporters": "reporters",
}


@dataclass(frozen=True, slots=True)
class EntryPointInfo:
    """One ``tp_harness`` entry point of an installed distribution: ``name = "value"`` from ``dist version``."""

    name: str
    value: str
    dist: str
    version: str


def available_entry_points() -> dict[str, list[EntryPointInfo]]:
    """The installed ``tp_harness`` entry points by name (several when two distributions use one name).

    :return: ``{entry-point name: [EntryPointInfo, ...]}``, names sorted.
    """
    found: dict[str, list[EntryPointInfo]] = {}
    for dist in md.distributions():
        for ep in dist.entry_points:
            if ep.group == PROJECT:
                found.setdefault(ep.name, []).append(
                    EntryPointInfo(ep.name, ep.value, dist.metadata["name"], dist.version))
    return dict(sorted(found.items()))


def selected_plugins(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """Read ``TP_HARNESS_PLUGINS``: ``None`` when unset (load every entry point), else the names it lists.

    ``""`` (or only commas and blanks) gives ``()``: no external plugin, exactly the built-ins.
    :param environ: the environment to read (default ``os.environ``).
    """
    value = (os.environ if environ is None else environ).get(PLUGINS_ENV)
    if value is None:
        return None
    return tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``TP_HARNESS_TRACE_PLUGINS`` asks for hook-call tracing (any value but ``""``, ``0``, ``false``)."""
    value = (os.environ if environ is None else environ).get(TRACE_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def get_plugin_manager(
    *,
    entry_points: bool = True,
    select: Sequence[str] | None = None,
    extra_plugins: Sequence[str] = (),
    trace: bool = False,
) -> pluggy.PluginManager:
    """Build a plugin manager: hookspecs, the built-ins, the external plugins, then ``check_pending()``.

    :param entry_points: with ``select=None``, load every ``tp_harness`` setuptools entry point.
    :param select: load exactly these external plugins instead (``TP_HARNESS_PLUGINS``): each is an
        entry-point name (loaded with ``load_setuptools_entrypoints(group, name=...)``) or, failing
        that, an importable module name; ``()`` loads none.
    :param extra_plugins: importable module names registered right after the built-ins (tests, embedding).
    :param trace: trace every hook call to the ``tp_harness.plugin.manager`` logger at INFO level.
    :return: the manager, every plugin registered and checked.
    :raises PluginError: a selected name is neither an entry point nor a module (lists the entry-point
        names), two distributions declare one entry-point name, or an entry point cannot be imported.
    :raises pluggy.PluginValidationError: a plugin implements an unknown hook or a bad signature.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in (*BUILTIN_PLUGINS, *extra_plugins):
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(name), name=name)
    if select is not None:
        _load_selected(pm, select)
    elif entry_points:
        available = available_entry_points()
        for name in available:
            _load_entry_point(pm, name, available)
    pm.check_pending()
    if trace:
        _enable_tracing(pm)
    return pm


def _load_selected(pm: pluggy.PluginManager, names: Iterable[str]) -> None:
    """Load each selected plugin: an entry point by that name, else an importable module of that name."""
    available = available_entry_points()
    for name in names:
        if name in available:
            _load_entry_point(pm, name, available)
            continue
        if pm.get_plugin(name) is not None:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (name == err.name or name.startswith(err.name + ".")):
                raise PluginError(
                    f"{PLUGINS_ENV} names plugin {name!r}, which is neither a {PROJECT!r} entry point nor an "
                    f"importable module; installed entry points: {', '.join(available) or 'none'}\n"
                    f"  to fix: pip install the plugin's package, or drop {name!r} from {PLUGINS_ENV}"
                ) from None
            raise _broken_plugin(name, err) from err
        except Exception as err:  # a plugin's import-time code is not ours: name it instead of a traceback
            raise _broken_plugin(name, err) from err
        if not pm.is_registered(module):  # an entry point may have registered it under its own name
            try:
                pm.register(module, name=name)
            except pluggy.PluginValidationError as err:
                raise PluginError(f"plugin {name!r}{_dist_of(name)} does not fit tp-harness's hooks: {err}\n"
                                  f"  to fix: update or uninstall it, or leave it out with {PLUGINS_ENV}") from err


def _dist_of(module_name: str) -> str:
    """`` (distribution NAME VERSION)`` of the installed distribution that provides ``module_name``, or ``""``."""
    dists = md.packages_distributions().get(module_name.split(".")[0]) or []
    if not dists:
        return " (no installed distribution; found on the Python path)"
    try:
        return f" (distribution {dists[0]} {md.version(dists[0])})"
    except md.PackageNotFoundError:
        return f" (distribution {dists[0]})"


def _broken_plugin(name: str, err: BaseException) -> PluginError:
    """The error for a plugin module that raises while it is imported (a missing dependency, a bug)."""
    return PluginError(
        f"plugin {name!r}{_dist_of(name)} failed to load: {type(err).__name__}: {err}\n"
        f"  to fix: install what it needs, update or uninstall it, or leave it out with {PLUGINS_ENV}=name,...")


def _load_entry_point(
    pm: pluggy.PluginManager, name: str, available: Mapping[str, list[EntryPointInfo]] | None = None
) -> None:
    """Load the entry point ``name``; :raises PluginError: two distributions declare it, or it cannot be imported."""
    infos = (available or available_entry_points()).get(name, [])
    if len({(i.dist, i.value) for i in infos}) > 1:
        raise PluginError(
            f"entry point {name!r} of group {PROJECT!r} is declared by several distributions: "
            + ", ".join(f"{i.dist} {i.version} ({i.value})" for i in infos)
            + "; uninstall all but one of them"
        )
    try:
        pm.load_setuptools_entrypoints(PROJECT, name=name)
    except Exception as err:  # ImportError, or anything its import-time code raises
        where = f"{infos[0].value!r} of distribution {infos[0].dist} {infos[0].version}" if infos else "?"
        raise PluginError(
            f"plugin {name!r} ({where}) cannot be imported: {type(err).__name__}: {err}\n"
            f"  to fix: reinstall or uninstall it, or leave it out with {PLUGINS_ENV}=name,..."
        ) from err


def _enable_tracing(pm: pluggy.PluginManager) -> None:
    """Send pluggy's hook-call trace (``pm.trace``) to the ``tp_harness.plugin.manager`` logger at INFO level."""

    def write(message: str) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("trace: %s", message.rstrip("\n"))
        else:  # asked for explicitly: shown without -v, and without changing the process's logging levels
            sys.stderr.write(f"tp-harness plugin trace: {message.rstrip(chr(10))}\n")

    pm.trace.root.setwriter(write)
    pm.enable_tracing()


def plugin_sources(pm: pluggy.PluginManager) -> dict[str, PluginInfo]:
    """Where each registered plugin comes from, by plugin name.

    Built-ins get ``tp-harness`` and its version; entry-point plugins their distribution
    (``pm.list_plugin_distinfo()``); a plugin registered by module name the distribution that provides
    its top-level package, if any (else ``dist=None``).
    """
    try:
        own_version: str | None = md.version(BUILTIN_DIST)
    except md.PackageNotFoundError:  # running from a source tree without an install
        own_version = None
    by_plugin = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    packages: Mapping[str, list[str]] | None = None
    out: dict[str, PluginInfo] = {}
    for name, plugin in pm.list_name_plugin():
        if name in BUILTIN_PLUGINS:
            out[name] = PluginInfo(name, BUILTIN_DIST, own_version, builtin=True)
        elif id(plugin) in by_plugin:
            dist = by_plugin[id(plugin)]
            out[name] = PluginInfo(name, dist.project_name, dist.version)
        else:
            if packages is None:
                packages = md.packages_distributions()
            top = getattr(plugin, "__name__", name).split(".")[0]
            dists = packages.get(top) or []
            version = None
            if dists:
                try:
                    version = md.version(dists[0])
                except md.PackageNotFoundError:
                    version = None
            out[name] = PluginInfo(name, dists[0] if dists else None, version)
    return out


def _call_order(pm: pluggy.PluginManager, impls: Sequence[pluggy.HookImpl]) -> list[pluggy.HookImpl]:
    """Built-ins in :data:`BUILTIN_PLUGINS` order, then every other plugin by name (never install order)."""
    rank = {name: i for i, name in enumerate(BUILTIN_PLUGINS)}
    return sorted(impls, key=lambda i: (rank.get(i.plugin_name, len(rank)), i.plugin_name))


def build_registries(pm: pluggy.PluginManager | None = None) -> Registries:
    """Fill one :class:`Registries` from every plugin's ``tp_register_<kind>s`` hook.

    Each implementation is called through pluggy on its own (so tracing sees it), with the registry
    bound to its plugin's :class:`PluginInfo`; built-ins first, then the other plugins by name.

    :param pm: the plugin manager; default: :func:`get_plugin_manager` with the external plugins that
        ``TP_HARNESS_PLUGINS`` selects (unset: every entry point) and tracing if
        ``TP_HARNESS_TRACE_PLUGINS`` is set.
    :return: the registries; each entry records its plugin, distribution, version and built-in flag.
    :raises DuplicateNameError: two plugins registered the same name in one registry (names both).
    :raises PluginError: see :func:`get_plugin_manager`.
    """
    if pm is None:
        pm = get_plugin_manager(select=selected_plugins(), trace=tracing_requested())
    sources = plugin_sources(pm)
    plugins = pm.get_plugins()
    registries = Registries()
    for hook_name, attr in _HOOK_TO_REGISTRY.items():
        registry = getattr(registries, attr)
        for impl in _call_order(pm, getattr(pm.hook, hook_name).get_hookimpls()):
            registry.bind(sources.get(impl.plugin_name, PluginInfo(impl.plugin_name)))
            try:
                caller = pm.subset_hook_caller(hook_name, [p for p in plugins if p is not impl.plugin])
                caller(registry=registry)
            except TpHarnessError:
                raise
            except Exception as err:  # a plugin's hook is not ours: name it and its distribution
                info = sources.get(impl.plugin_name)
                dist = (f" (distribution {info.dist} {info.version or ''})".replace(" )", ")") if info and info.dist
                        else " (no installed distribution; found on the Python path)")
                raise PluginError(
                    f"plugin {impl.plugin_name!r}{dist} raised in its {hook_name} hook: {type(err).__name__}: {err}\n"
                    f"  to fix: update or uninstall the plugin, or leave it out with {PLUGINS_ENV}=name,..."
                ) from err
            finally:
                registry.bind(None)
    return registries
