"""The public fixtures: ``tp_model``, ``tp_evaluate``, ``tp_optimize`` (and ``tp_session``)."""


from __future__ import annotations

from typing import Any

import pytest

from tp_harness.entrypoints.pytest_plugin.session import TpSession, _session

# ---------------------------------------------------------------------------------------------
# public fixtures


@pytest.fixture(scope="session")
def tp_session(request: pytest.FixtureRequest) -> TpSession:
    """The plugin's session state (settings, registries, shared evaluations)."""
    return _session(request.config)


@pytest.fixture(scope="session")
def tp_model(tp_session: TpSession) -> Any:
    """The scorer LLM (``--tp-model``, default ``embedded:smollm2-135m``) as an ``LMBackend``, loaded once per session."""
    return tp_session.backend


@pytest.fixture(scope="session")
def tp_evaluate(tp_session: TpSession) -> Any:
    """``tp_evaluate(task, prompt=None, split="test")`` -> ``Evaluation`` of one instruction (default: the
    task's original) on the session's scorer LLM; ``.metrics`` holds acc, ifr, ece, auroc, pr_p, pr_n and
    composite (None where undefined), ``.records`` the samples, ``.n`` their count. Cached per session."""

    def evaluate(task: str, prompt: str | None = None, split: str = "test") -> Any:
        text = tp_session.prepared(task).spec.tp.instruction if prompt is None else prompt
        return tp_session.evaluate_many(task, [text], split=split)[0]

    return evaluate


@pytest.fixture(scope="session")
def tp_optimize(tp_session: TpSession) -> Any:
    """``tp_optimize(task, sources=None, budget=None, mode=None, seed=0)`` -> :class:`OptimizeOutcome`: runs a
    real optimization (default: one stage on the task, ``--tp-budget``, default smoke) and stores it under
    ``--tp-results-dir``."""
    return tp_session.run_optimize
