"""Markers and reports: the ``tp_gpu`` skip, failure rendering, and the gate summary (terminal, ``$GITHUB_STEP_SUMMARY``)."""


from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tp_harness.entrypoints.pytest_plugin.session import GateResult, _session

# ---------------------------------------------------------------------------------------------
# markers and reports


_CUDA: list[bool] = []


def _cuda_available() -> bool:
    if not _CUDA:
        try:
            import torch

            _CUDA.append(bool(torch.cuda.is_available()))
        except Exception:  # no torch, or a broken CUDA install: no GPU for us
            _CUDA.append(False)
    return _CUDA[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("tp_gpu") and not _cuda_available():
        pytest.skip("tp_gpu: CUDA is not available on this machine")


_AST_RACE = "AST constructor recursion depth mismatch"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Render a failure without tripping CPython 3.11's shared AST counter (an INTERNALERROR otherwise).

    pytest reads the failing test's sources with ``ast.parse``. In CPython 3.11 the AST constructor's recursion
    counter is one per interpreter: when the garbage collector runs during that parse and a finalizer parses too,
    the outer parse fails with ``SystemError: AST constructor recursion depth mismatch`` and pytest stops with an
    INTERNALERROR. A failed asyncio future of an HTTP client (lm-eval's API models) is such a finalizer: its
    ``__del__`` logs the exception, and 3.11's traceback formatting calls ``ast.parse`` for the carets. So pending
    garbage is collected before a failure is rendered, and should the parse still fail, the report is built once
    more, then as a plain traceback. Failures render as before; nothing changes for passing tests.
    """
    if call.excinfo is not None:
        gc.collect()
    try:
        return (yield)
    except SystemError as err:
        if _AST_RACE not in str(err) or call.excinfo is None:
            raise
    gc.collect()
    try:
        return pytest.TestReport.from_item_and_call(item, call)
    except SystemError as err:
        if _AST_RACE not in str(err):
            raise
    report = pytest.TestReport.from_item_and_call(item, pytest.CallInfo.from_call(lambda: None, call.when))
    report.outcome = "failed"
    try:
        report.longrepr = "".join(traceback.format_exception(call.excinfo.value))
    except SystemError:  # the same race in the traceback module's caret anchors
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    return report


def summary_rows(outcomes: Sequence[GateResult]) -> list[list[str]]:
    """Rows of the gate summary table: task, gate, prompt, value, threshold, n, outcome."""
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return [[o.task, o.gate, o.prompt, fmt(o.value), fmt(o.bound), str(o.n), o.outcome] for o in outcomes]


_HEADERS = ["task", "gate", "prompt", "value", "threshold", "n", "outcome"]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = _session(config)
    if not session.outcomes:
        return
    from tabulate import tabulate

    rows = summary_rows(session.outcomes)
    terminalreporter.write_sep("=", f"tp-harness gates ({session.model_name})")
    terminalreporter.write_line(tabulate(rows, headers=_HEADERS, tablefmt="simple"))
    counts = {k: sum(o.outcome == k for o in session.outcomes) for k in ("passed", "failed", "skipped")}
    terminalreporter.write_line(
        f"{counts['passed']} gates passed, {counts['failed']} failed, {counts['skipped']} skipped; "
        f"scorer LLM loaded {session.backend_loads} time(s)")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        text = (f"### tp-harness gates: {session.model_name}\n\n"
                + tabulate(rows, headers=_HEADERS, tablefmt="github") + "\n\n")
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(text)


