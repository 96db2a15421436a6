"""tp-harness: Transfer-Prompting (Chang, Chang & Wu, 2025, arXiv 2502.14211) as an LLM evaluation and
prompt-optimization harness built on lm-evaluation-harness, with a pluggy registry and a pytest plugin.

Public API (heavy modules are imported lazily):
- ``load_spec(path)``: a task spec (``TaskSpec``)
- ``evaluate_prompt(task=..., registries=..., prompt=...)``: metrics of one instruction
- ``optimize(settings)``: a full run; returns the run directory and results
- ``hookimpl`` and the definition types for plugins
"""

from __future__ import annotations

from .errors import BackendError, DataError, SpecError, TpHarnessError
from .hookspecs import BackendDef, MetricDef, OptimizerDef, Registry, ReporterDef, TaskSourceDef, hookimpl

__version__ = "0.1.0"

__all__ = [
    "BackendDef", "BackendError", "DataError", "MetricDef", "OptimizerDef", "Registry", "ReporterDef",
    "SpecError", "TaskSourceDef", "TpHarnessError", "evaluate_prompt", "hookimpl", "load_spec", "optimize",
]


def load_spec(path, **kwargs):
    """Load and validate a task spec YAML (see :func:`tp_harness.specs.load_spec`)."""
    from .specs import load_spec as _load

    return _load(path, **kwargs)


def evaluate_prompt(**kwargs):
    """Evaluate one instruction on one task split (see :func:`tp_harness.runner.evaluate_prompt`)."""
    from .plugins import build_registries
    from .runner import evaluate_prompt as _evaluate

    kwargs.setdefault("registries", build_registries())
    return _evaluate(**kwargs)


def optimize(settings=None, **kwargs):
    """Run Transfer-Prompting with :class:`tp_harness.runner.OptimizeSettings` (or its fields as kwargs)."""
    from .plugins import build_registries
    from .runner import OptimizeSettings, run_optimize

    settings = settings or OptimizeSettings(**kwargs)
    return run_optimize(settings, build_registries())
