"""The pytest plugin: ``pytest --tp-model=...`` turns every task spec's ``tp.gates`` into pytest items.

Registered under the ``pytest11`` entry point as ``tp_harness``, so it is active wherever tp-harness is
installed; it collects nothing until a scorer LLM is named (``--tp-model`` or the ``tp_model`` ini key).
Then each spec file under the spec directories becomes a collector and each
(task, gate, prompt) an item with a node id like
``task_specs/medqa_usmle.yaml::medqa_usmle::acc>=0.25[best]``. The model loads once per session, and
each (task, prompt) is evaluated once (both prompts of a task in one backend call) and shared by all
its gates. Prompts: ``original`` (the spec's ``tp.instruction``) and ``best`` (the newest stored best
prompt for this model and task under the results directory; with ``--tp-optimize`` a smoke optimization
makes one when none is stored; otherwise the original, said so in the report). Regression gates
(``composite >= original - 0.02``) apply to ``best`` only.

Outputs: a failing gate shows the metric, its value, the threshold, n and the worst samples; metric values
go to JUnit XML as properties; a summary table goes to the terminal and, when ``$GITHUB_STEP_SUMMARY``
is set, is appended there as markdown. Public fixtures: ``tp_model``, ``tp_evaluate``, ``tp_optimize``
(see docs/pytest-plugin.md).

This package is imported by every pytest run where tp-harness is installed: heavy imports stay lazy. Its modules:
``options`` (flags and ini keys), ``session`` (state shared by items), ``items`` (collection and gate items),
``reports`` (markers, failure rendering, the summary) and ``fixtures``; this module holds the configure hooks and
exposes every hook and fixture to pytest.
"""


from __future__ import annotations

import os
from pathlib import Path

import pytest

from tp_harness.entrypoints.pytest_plugin.fixtures import tp_evaluate, tp_model, tp_optimize, tp_session
from tp_harness.entrypoints.pytest_plugin.items import (
    GateFailure,
    GateItem,
    SpecFile,
    SpecTask,
    pytest_collect_file,
    worst_samples,
)
from tp_harness.entrypoints.pytest_plugin.options import _option, pytest_addoption
from tp_harness.entrypoints.pytest_plugin.reports import (
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_terminal_summary,
    summary_rows,
)
from tp_harness.entrypoints.pytest_plugin.session import (
    _ENV,
    _SESSION,
    GateResult,
    OptimizeOutcome,
    PromptChoice,
    TpSession,
)

__all__ = [  # what pytest registers (hooks and fixtures), and what the tests of the plugin use
    "GateFailure", "GateItem", "GateResult", "OptimizeOutcome", "PromptChoice", "SpecFile", "SpecTask", "TpSession",
    "pytest_addoption", "pytest_collect_file", "pytest_configure", "pytest_runtest_makereport", "pytest_runtest_setup",
    "pytest_terminal_summary", "pytest_unconfigure", "summary_rows", "tp_evaluate", "tp_model", "tp_optimize",
    "tp_session", "worst_samples",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tp: a tp-harness prompt gate (task spec tp.gates) or prompt test")
    config.addinivalue_line("markers", "tp_gpu: needs CUDA (e.g. a vLLM scorer); skipped when CUDA is absent")
    config.addinivalue_line("markers", "tp_slow: runs a prompt optimization or a large evaluation")
    env = pytest.MonkeyPatch()  # the environment this plugin sets, undone when pytest unconfigures
    config.stash[_ENV] = env
    cache = _option(config, "tp_cache_dir")
    if cache:
        env.setenv("TP_CACHE_DIR", str(Path(cache).resolve()))
    session = TpSession.from_config(config)
    config.stash[_SESSION] = session
    if not session.active:
        return
    env.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))  # models are local files: no hub
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        # `pytest DIR --tp-model=...` or `pytest DIR/x.yaml::task::gate[kind]`: the named specs are collected
        session.spec_dirs += [d for d in _spec_dirs_named(config) if d not in session.spec_dirs]
    else:
        # `pytest --tp-model=...` with no paths: collect the spec directories next to testpaths
        for directory in session.spec_dirs:
            if str(directory) not in config.args:
                config.args.append(str(directory))


def _spec_dirs_named(config: pytest.Config) -> list[Path]:
    """Directories that the command line names as spec directories: a directory argument that holds YAML files
    directly, or the directory of a ``.yaml``/``.yml`` file argument (node ids such as ``x.yaml::task`` too)."""
    found: list[Path] = []
    for arg in config.args:
        path = Path(arg.split("::", 1)[0])
        path = (path if path.is_absolute() else config.invocation_params.dir / path).resolve()
        if path.suffix in (".yaml", ".yml") and path.is_file():
            found.append(path.parent)
        elif path.is_dir() and any(p.suffix in (".yaml", ".yml") for p in path.iterdir() if p.is_file()):
            found.append(path)
    return found


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restore the environment variables :func:`pytest_configure` set (``TP_CACHE_DIR``, ``HF_HUB_OFFLINE``)."""
    env = config.stash.get(_ENV, None)
    if env is not None:
        env.undo()


