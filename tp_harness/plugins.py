"""The plugin manager: built-in plugins first, then (optionally) external ones, then a check.

Owns building the project's ``pluggy.PluginManager`` and filling one :class:`Registries` object from
the ``tp_register_<kind>s`` hooks. Each hook implementation is called on its own with the registry
bound to its plugin's name, so every entry records who added it and a name added twice raises
``DuplicateNameError`` naming both plugins, whatever the plugin order. There is no module-global
manager: callers build one and pass the registries down.
"""

from __future__ import annotations

import importlib
import logging
import os

import pluggy

from . import hookspecs
from .hookspecs import PROJECT, Registries

log = logging.getLogger(__name__)

#: built-in plugins, registered exactly as third-party plugins are
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tp_harness.data",
    "tp_harness.metrics",
    "tp_harness.backends",
    "tp_harness.optimizer.transfer",
    "tp_harness.report",
)

_HOOK_TO_REGISTRY = {
    "tp_register_tasks": "tasks",
    "tp_register_metrics": "metrics",
    "tp_register_backends": "backends",
    "tp_register_optimizers": "optimizers",
    "tp_register_reporters": "reporters",
}


def get_plugin_manager(*, entry_points: bool = False, extra_plugins: tuple[str, ...] = ()) -> pluggy.PluginManager:
    """Build a plugin manager with the hookspecs, the built-ins and optional extras.

    :param entry_points: also load setuptools entry points of the ``tp_harness`` group (external plugins).
    :param extra_plugins: importable module names to register as plugins after the built-ins.
    :raises pluggy.PluginValidationError: a plugin implements an unknown hook or a bad signature.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in (*BUILTIN_PLUGINS, *extra_plugins):
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(PROJECT)
    pm.check_pending()
    return pm


def build_registries(pm: pluggy.PluginManager | None = None) -> Registries:
    """Fill one :class:`Registries` from every plugin's ``tp_register_<kind>s`` hook.

    ``TP_HARNESS_PLUGINS`` (comma-separated importable module names) adds plugins by module name.
    :raises DuplicateNameError: two plugins registered the same name in one registry.
    """
    if pm is None:
        extras = tuple(p.strip() for p in os.environ.get("TP_HARNESS_PLUGINS", "").split(",") if p.strip())
        pm = get_plugin_manager(extra_plugins=extras)
    registries = Registries()
    for hook_name, attr in _HOOK_TO_REGISTRY.items():
        registry = getattr(registries, attr)
        hook = getattr(pm.hook, hook_name)
        for impl in sorted(hook.get_hookimpls(), key=lambda i: i.plugin_name):
            registry.plugin = impl.plugin_name
            impl.function(registry=registry)
        registry.plugin = "<direct>"
    return registries
