"""Hook specifications and the typed registries that hooks fill.

This module is the plugin contract: the ``tp_harness`` hook markers, one ``tp_register_<kind>s`` hook
per kind of extension, the :class:`Registry` each hook receives and the definition types a plugin adds
(:class:`DataFormatDef`, :class:`MetricDef`, :class:`BackendDef`, :class:`OptimizerDef`,
:class:`ReporterDef`). Of tp_harness it imports only :mod:`tp_harness.errors`. Plugins import these names
from ``tp_harness``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pluggy

from tp_harness.errors import DuplicateNameError, UnknownNameError

PROJECT = "tp_harness"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """Where a plugin comes from: its plugin name, distribution and whether it ships with tp-harness.

    :ivar name: the pluggy plugin name (a built-in module path, an entry-point name or a module name).
    :ivar dist: the installed distribution that provides it (``"tp-harness"`` for built-ins); ``None``
        for a module that no installed distribution provides (e.g. one on ``PYTHONPATH``).
    :ivar version: that distribution's version, or ``None``.
    :ivar builtin: the plugin is one of ``tp_harness.plugin.manager.BUILTIN_PLUGINS``.
    """

    name: str
    dist: str | None = None
    version: str | None = None
    builtin: bool = False

    @property
    def dist_label(self) -> str | None:
        """``"dist version"`` (or ``"dist"``), for messages; ``None`` without a distribution."""
        if self.dist is None:
            return None
        return f"{self.dist} {self.version}" if self.version else self.dist


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """One registered item: its name, the object, the plugin that added it and where that plugin comes from.

    ``dist``/``version`` name the plugin's installed distribution (``None`` when unknown); ``builtin`` is
    true for tp-harness's own plugins.
    """

    name: str
    item: T
    plugin: str
    dist: str | None = None
    version: str | None = None
    builtin: bool = False


class Registry(Generic[T]):
    """A named, typed registry of one kind of extension (metric, backend, ...).

    ``add`` refuses a taken name with :class:`DuplicateNameError` naming both plugins and their
    distributions; ``get`` of an unknown name raises :class:`UnknownNameError` with close matches.
    Modeled on lm-eval's ``lm_eval/api/registry.py``. The plugin manager binds the adding plugin
    (:meth:`bind`, a :class:`PluginInfo`) before it calls each hook implementation, so the registry
    knows who added what; plugin order never changes which names exist.
    """

    def __init__(self, kind: str, item_type: type | tuple[type, ...] | None = None) -> None:
        self.kind = kind
        self.item_type = item_type
        self._entries: dict[str, Entry[T]] = {}
        self.source = PluginInfo("<direct>")

    @property
    def plugin(self) -> str:
        """The name of the plugin whose hook is adding entries now (``"<direct>"`` outside a hook)."""
        return self.source.name

    @plugin.setter
    def plugin(self, name: str) -> None:
        self.source = PluginInfo(name)

    def bind(self, source: PluginInfo | None) -> None:
        """Record ``source`` as the plugin that adds the next entries; ``None`` resets to ``"<direct>"``.

        Called by ``tp_harness.plugin.manager.build_registries`` around each hook implementation.
        """
        self.source = source if source is not None else PluginInfo("<direct>")

    def add(self, name: str, item: T) -> None:
        """Register ``item`` under ``name``.

        :raises DuplicateNameError: the name is already registered (by this or another plugin).
        :raises TypeError: ``item`` is not of the registry's item type.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if self.item_type is not None and not isinstance(item, self.item_type):
            raise TypeError(
                f"plugin {self.plugin!r} registered {self.kind} {name!r} as {type(item).__name__}; "
                f"expected {getattr(self.item_type, '__name__', self.item_type)}"
            )
        if name in self._entries:
            first = self._entries[name]
            first_dist = PluginInfo(first.plugin, first.dist, first.version).dist_label
            raise DuplicateNameError(self.kind, name, first.plugin, self.plugin, first_dist=first_dist,
                                     second_dist=self.source.dist_label)
        src = self.source
        self._entries[name] = Entry(name, item, src.name, src.dist, src.version, src.builtin)

    def get(self, name: str) -> T:
        """Return the item registered under ``name``; :raises UnknownNameError: if there is none."""
        try:
            return self._entries[name].item
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._entries)) from None

    def entry(self, name: str) -> Entry[T]:
        """Return the :class:`Entry` (item and adding plugin) for ``name``."""
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        """All entries in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # shown by TP_HARNESS_TRACE_PLUGINS=1
        return f"<Registry {self.kind}: {len(self)} entries, adding as plugin {self.plugin!r}>"


# ----------------------------------------------------------------------------------------------
# What plugins register


@dataclass(frozen=True, slots=True)
class MetricDef:
    """A corpus-level metric of the objective prompt evaluator.

    ``compute(records)`` takes the per-sample records of one (task, prompt, split) evaluation
    (``tp_harness.evaluation.metrics.SampleRecord``) and returns a float in [0, 1] or ``None`` when the metric
    is undefined for those records (the composite then drops its term).
    """

    compute: Callable[[Sequence[Any]], float | None]
    display: str
    higher_is_better: bool = True
    needs_confidence: bool = False
    output_types: frozenset[str] = frozenset({"generate_until", "multiple_choice"})
    description: str = ""


@dataclass(frozen=True, slots=True)
class BackendDef:
    """A model backend: ``factory(model_args: dict[str, str], **options)`` returns a scorer/reference model.

    The returned object follows ``tp_harness.backends.base.ModelBackend``: lm-eval style
    ``loglikelihood(requests)`` / ``generate_until(requests)`` plus ``identity`` and ``chat``.
    """

    factory: Callable[..., Any]
    description: str = ""
    needs_gpu: bool = False
    #: the ``--model-args`` keys the factory reads; others are refused before anything loads (None: any key)
    model_args: tuple[str, ...] | None = None
    #: ``checkpoint(model_args) -> Path | None``: the local checkpoint the factory would load, found without loading
    #: it (lets an over-long instruction be refused before the model loads); None: the backend cannot tell
    checkpoint: Callable[..., Any] | None = None


@dataclass(frozen=True, slots=True)
class DataFormatDef:
    """A data format: ``load(path, **options)`` yields ``(line_number, row_dict)`` pairs from one file.

    Raises ``DataError`` naming the file and line of a malformed row. Specs pick it by name in
    ``tp.data.format``. (A data format is not a task: in lm-eval's terms a task is a benchmark, which a
    tp-harness task spec defines.)
    """

    load: Callable[..., Iterable[tuple[int, dict[str, Any]]]]
    description: str = ""
    suffixes: tuple[str, ...] = ()


#: the former name of :class:`DataFormatDef` (deprecated; kept so plugins written for 0.1 still load)
TaskSourceDef = DataFormatDef


@dataclass(frozen=True, slots=True)
class OptimizerDef:
    """A prompt optimizer: ``run(ctx: RunContext) -> RunOutcome`` (the :class:`tp_harness.Optimizer` protocol).

    :ivar mode: the ablation mode the optimizer always runs (e.g. ``"no_transfer"`` for a one-stage optimizer
        that uses no source tasks); the run's ``ctx.mode`` is set to it before the run starts, and config.json and
        results.json record it. None: the mode the user asked for (``--no-transfer``, ``--source-only``, else
        ``two_stage``). An optimizer never changes ``ctx``, which is frozen.
    :ivar options: the ``--optimizer-option KEY=VALUE`` keys it reads, from ``ctx.optimizer_options``; any other
        key is refused before a model loads. None: any key.
    """

    run: Callable[..., Any]
    description: str = ""
    mode: str | None = None
    options: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ReporterDef:
    """A reporter: ``write(run_dir: Path, results: dict, *, results_root: Path) -> list[Path]``, called when a run finishes."""

    write: Callable[..., list[Path]]
    description: str = ""


@dataclass(slots=True)
class Registries:
    """One registry per kind; built by ``tp_harness.plugin.manager.build_registries``."""

    data_formats: Registry[DataFormatDef] = field(default_factory=lambda: Registry("data format", DataFormatDef))
    metrics: Registry[MetricDef] = field(default_factory=lambda: Registry("metric", MetricDef))
    backends: Registry[BackendDef] = field(default_factory=lambda: Registry("backend", BackendDef))
    optimizers: Registry[OptimizerDef] = field(default_factory=lambda: Registry("optimizer", OptimizerDef))
    reporters: Registry[ReporterDef] = field(default_factory=lambda: Registry("reporter", ReporterDef))

    @property
    def tasks(self) -> Registry[DataFormatDef]:
        """Deprecated name of :attr:`data_formats` (kept for plugins and scripts written for 0.1)."""
        return self.data_formats


# ----------------------------------------------------------------------------------------------
# Hook specifications


@hookspec
def tp_register_data_formats(registry: Registry[DataFormatDef]) -> None:
    """Add data formats that ``tp.data.format`` in a task spec can name.

    :param registry: call ``registry.add(name, DataFormatDef(load=...))`` once per format.
    :return: nothing; results go through ``registry``.
    Called once per plugin manager for built-in and external plugins alike; a name added twice
    raises ``DuplicateNameError`` naming both plugins.
    """


@hookspec(warn_on_impl=DeprecationWarning(
    "tp_register_tasks is deprecated: it registers data formats; implement tp_register_data_formats instead"))
def tp_register_tasks(registry: Registry[DataFormatDef]) -> None:
    """Deprecated alias of :func:`tp_register_data_formats` (same registry); implementing it warns."""


@hookspec
def tp_register_metrics(registry: Registry[MetricDef]) -> None:
    """Add metrics that the evaluator computes and that gates and reports can name.

    :param registry: call ``registry.add(name, MetricDef(...))`` once per metric; name in snake case.
    :return: nothing; results go through ``registry``.
    """


@hookspec
def tp_register_backends(registry: Registry[BackendDef]) -> None:
    """Add model backends that ``--model`` and ``--reference-model`` can name.

    :param registry: call ``registry.add(name, BackendDef(factory=...))``; kebab-case names, an
        optional ``:argument`` is passed to the factory as ``model_args['name']``.
    :return: nothing; results go through ``registry``.
    """


@hookspec
def tp_register_optimizers(registry: Registry[OptimizerDef]) -> None:
    """Add prompt optimizers that ``tp-harness optimize --optimizer`` can name.

    :param registry: call ``registry.add(name, OptimizerDef(run=...))``.
    :return: nothing; results go through ``registry``.
    """


@hookspec
def tp_register_reporters(registry: Registry[ReporterDef]) -> None:
    """Add reporters that run when a run finishes (results.json, plots, report, leaderboard, ...).

    :param registry: call ``registry.add(name, ReporterDef(write=...))``.
    :return: nothing; results go through ``registry``.
    Reporters are called in registry order: the built-ins first (``results-json`` writes
    ``results.json`` before ``plots``, ``markdown-report`` and ``leaderboard`` read it), then the other
    plugins' reporters by plugin name. A reporter that raises is logged and skipped.
    """
