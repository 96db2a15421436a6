"""tp-harness: Transfer-Prompting (Chang, Chang & Wu, 2025, arXiv 2502.14211) as an LLM evaluation and
prompt-optimization harness built on lm-evaluation-harness, with a pluggy registry and a pytest plugin.

``__all__`` is the whole supported surface; users, docs and plugins import only these names (the modules
behind them may move). Heavy names are loaded on first use, so ``import tp_harness`` stays fast.

- Run things: :func:`evaluate`, :func:`optimize` (returns a :class:`RunResult`), :func:`load_spec`,
  :func:`build_backend`, :func:`build_registries`, :func:`get_plugin_manager`.
- Write plugins: :data:`hookimpl`; the definitions :class:`DataFormatDef`, :class:`MetricDef`,
  :class:`BackendDef`, :class:`OptimizerDef`, :class:`ReporterDef`; :class:`Registry` and :class:`Registries`;
  the protocols :class:`LanguageModel`, :class:`ScorerBackend`, :class:`Optimizer`; the backend type
  :class:`LMBackend`; for optimizers :class:`RunContext`, :class:`RunOutcome`, :class:`TargetOutcome`,
  :class:`ScoredPrompt`, :class:`EvalJob`, :func:`evaluate_jobs`, :class:`Evaluation`, :func:`prompt_sha`,
  :func:`select_on_validation`, :func:`final_evaluations`, :class:`Progress`; for metrics :class:`SampleRecord`.
- Errors: :class:`TpHarnessError` and its kinds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tp_harness.errors import BackendError, DataError, RunError, SpecError, TpHarnessError, UsageError
from tp_harness.plugin.hookspecs import (
    BackendDef,
    DataFormatDef,
    MetricDef,
    OptimizerDef,
    Registries,
    Registry,
    ReporterDef,
    TaskSourceDef,
    hookimpl,
)

__version__ = "0.1.0"

#: name -> module of the names loaded on first use (PEP 562)
_LAZY = {
    "evaluate": "api", "optimize": "api", "build_backend": "api", "RunResult": "api",
    "load_spec": "spec.loader", "TaskSpec": "spec.schema",
    "build_registries": "plugin.manager", "get_plugin_manager": "plugin.manager",
    "LMBackend": "backends.base",
    "LanguageModel": "protocols", "ScorerBackend": "protocols", "Optimizer": "protocols",
    "EvalJob": "evaluation.evaluator", "Evaluation": "evaluation.evaluator",
    "evaluate_jobs": "evaluation.evaluator", "prompt_sha": "evaluation.evaluator",
    "PreparedTask": "evaluation.evaluator",
    "SampleRecord": "evaluation.metrics",
    "ScoredPrompt": "optimizer.loop", "Progress": "optimizer.loop",
    "RunContext": "optimizer.transfer", "RunOutcome": "optimizer.transfer", "TargetOutcome": "optimizer.transfer",
    "select_on_validation": "optimizer.transfer", "final_evaluations": "optimizer.transfer",
}

__all__ = [
    # run things
    "evaluate", "optimize", "RunResult", "load_spec", "TaskSpec", "build_backend", "build_registries",
    "get_plugin_manager",
    # plugin contract
    "hookimpl", "Registry", "Registries", "DataFormatDef", "MetricDef", "BackendDef", "OptimizerDef", "ReporterDef",
    "TaskSourceDef", "LanguageModel", "ScorerBackend", "Optimizer", "LMBackend", "RunContext", "RunOutcome",
    "TargetOutcome", "ScoredPrompt", "EvalJob", "Evaluation", "PreparedTask", "evaluate_jobs", "prompt_sha",
    "select_on_validation", "final_evaluations", "Progress", "SampleRecord",
    # errors
    "TpHarnessError", "UsageError", "SpecError", "DataError", "BackendError", "RunError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tp_harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from tp_harness.api import RunResult, build_backend, evaluate, optimize
    from tp_harness.backends.base import LMBackend
    from tp_harness.evaluation.evaluator import EvalJob, Evaluation, PreparedTask, evaluate_jobs, prompt_sha
    from tp_harness.evaluation.metrics import SampleRecord
    from tp_harness.optimizer.loop import Progress, ScoredPrompt
    from tp_harness.optimizer.transfer import (
        RunContext,
        RunOutcome,
        TargetOutcome,
        final_evaluations,
        select_on_validation,
    )
    from tp_harness.plugin.manager import build_registries, get_plugin_manager
    from tp_harness.protocols import LanguageModel, Optimizer, ScorerBackend
    from tp_harness.spec.loader import load_spec
    from tp_harness.spec.schema import TaskSpec
