"""The plugin's session state: settings, registries, the scorer loaded once, evaluations shared by gates."""


from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tp_harness.constants import DEFAULT_MODEL
from tp_harness.entrypoints.pytest_plugin.options import PROMPT_KINDS, _option

_SESSION = pytest.StashKey["TpSession"]()
_ENV = pytest.StashKey[pytest.MonkeyPatch]()


# ---------------------------------------------------------------------------------------------
# the shared session: one scorer LLM, each (task, prompt) evaluated once


@dataclass
class PromptChoice:
    """The instruction a gate item evaluates, and where it came from (shown in reports)."""

    kind: str
    text: str
    origin: str


@dataclass
class GateResult:
    """One gate item's result, for the terminal summary, JUnit properties and ``$GITHUB_STEP_SUMMARY``."""

    nodeid: str
    task: str
    gate: str
    prompt: str
    outcome: str  # passed | failed | skipped
    value: float | None = None
    bound: float | None = None
    n: int = 0


@dataclass
class OptimizeOutcome:
    """What :func:`tp_optimize` returns: the best prompt found, its run directory and ``results.json`` content."""

    task: str
    best_prompt: str
    run_dir: Path
    results: dict[str, Any]


@dataclass
class TpSession:
    """Per-pytest-session state: settings, the plugin registries, the scorer LLM and evaluation results.

    ``backend`` loads the scorer LLM on first use, once per session. ``evaluation(task, kind)``
    evaluates each (task, prompt) once on the test split (capped by ``limit``) and caches it.
    """

    model: str | None
    model_args: str
    reference_model: str | None
    tasks: list[str] | None
    spec_dirs: list[Path]
    limit: int | None
    budget: str
    results_dir: Path
    optimize: bool
    chat_template: str | None = None
    backend_loads: int = 0
    outcomes: list[GateResult] = field(default_factory=list)
    _registries: Any = None
    _backend: Any = None
    _prepared: dict[str, Any] = field(default_factory=dict)
    _prompts: dict[tuple[str, str], PromptChoice] = field(default_factory=dict)
    _evaluations: dict[tuple[str, str, str, int | None], Any] = field(default_factory=dict)
    _optimized: dict[tuple, OptimizeOutcome] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config) -> TpSession:
        """Read the ``--tp-*`` options (or their ini keys) into a session. :raises pytest.UsageError: bad values."""
        limit = _option(config, "tp_limit")
        try:
            limit = int(limit) if limit not in (None, "") else None
        except ValueError:
            raise pytest.UsageError(f"--tp-limit: expected a whole number of docs, got {limit!r}") from None
        if limit is not None and limit < 1:
            raise pytest.UsageError(f"--tp-limit: expected at least 1 doc, got {limit}")
        tasks = _option(config, "tp_tasks")
        root = Path(config.rootpath)
        dirs = [Path(d) if Path(d).is_absolute() else root / d for d in (config.getoption("tp_specs") or [])]
        dirs += [Path(d) for d in config.getini("tp_specs")]
        if not dirs:
            from tp_harness.spec.loader import BUILTIN_SPEC_DIR

            dirs = [root / "task_specs"] if (root / "task_specs").is_dir() else [BUILTIN_SPEC_DIR]
        results_dir = Path(_option(config, "tp_results_dir") or "results")
        chat = _option(config, "tp_apply_chat_template") or None
        if chat is not None and chat not in ("auto", "on", "off"):
            raise pytest.UsageError(f"--tp-apply-chat-template: expected auto, on or off, got {chat!r}")
        return cls(
            model=_option(config, "tp_model") or None,
            model_args=_option(config, "tp_model_args") or "",
            reference_model=_option(config, "tp_reference_model") or None,
            tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
            spec_dirs=[d.resolve() for d in dirs],
            limit=limit,
            budget=_option(config, "tp_budget") or "smoke",
            results_dir=results_dir if results_dir.is_absolute() else (root / results_dir),
            optimize=bool(_option(config, "tp_optimize")),
            chat_template=chat,
        )

    @property
    def active(self) -> bool:
        """True when a scorer LLM was named, so spec gates are collected."""
        return bool(self.model)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL

    def wants(self, task: str) -> bool:
        """Whether ``--tp-tasks`` selects ``task`` (names or shell-style globs; no filter selects all)."""
        return self.tasks is None or any(fnmatch.fnmatchcase(task, pat) for pat in self.tasks)

    @property
    def registries(self) -> Any:
        if self._registries is None:
            from tp_harness.plugin.manager import build_registries

            self._registries = build_registries()
        return self._registries

    @property
    def backend(self) -> Any:
        """The scorer LLM (an ``LMBackend``), loaded on first use; :raises BackendError: it cannot load."""
        if self._backend is None:
            from tp_harness.runs.runner import build_backend

            self._backend = build_backend(self.model_name, self.model_args, self.registries, dtype="float32",
                                          batch_size="16")
            self.backend_loads += 1
        return self._backend

    def spec_paths(self) -> dict[str, Path]:
        """Every spec known to the session by task name: the shipped specs plus the session's directories."""
        from tp_harness.runs.runner import spec_index

        return spec_index(self.spec_dirs)

    def prepared(self, task: str) -> Any:
        """The task's ``PreparedTask`` (lm-eval task object, splits) in its default scoring mode, built once."""
        if task not in self._prepared:
            from tp_harness.evaluation.evaluator import prepare_task
            from tp_harness.runs.runner import load_specs

            (spec,) = load_specs([task], self.spec_dirs, self.registries)
            caps = {"test": self.limit} if self.limit else None
            self._prepared[task] = prepare_task(spec, data_formats=self.registries.data_formats, caps=caps,
                                                apply_chat_template=self.chat_template)
        return self._prepared[task]

    def prompt(self, task: str, kind: str) -> PromptChoice:
        """The instruction for ``kind`` (``original`` or ``best``) of ``task``; see the module docstring."""
        key = (task, kind)
        if key not in self._prompts:
            original = self.prepared(task).spec.tp.instruction
            if kind == "original":
                choice = PromptChoice("original", original, "the spec's tp.instruction")
            else:
                choice = self._stored_best(task)
                if choice is None and self.optimize:
                    outcome = self.run_optimize(task)
                    choice = PromptChoice("best", outcome.best_prompt, f"--tp-optimize run {outcome.run_dir.name}")
                if choice is None:
                    choice = PromptChoice("best", original, f"the original prompt: no stored best prompt for "
                                          f"{self.model_name} on {task} under {self.results_dir}")
            self._prompts[key] = choice
        return self._prompts[key]

    def _stored_best(self, task: str) -> PromptChoice | None:
        from tp_harness.reporting.report import load_results

        runs, _problems = load_results(self.results_dir)
        def finished(run) -> tuple[float, str]:  # lm-eval's results "date" (a Unix time), then the run id
            date = run.data.get("date")
            return (float(date) if isinstance(date, (int, float)) else 0.0, run.run_id)

        for run in sorted(runs, key=finished, reverse=True):
            config = run.data.get("config") or {}
            if run.model != self.model_name or (config.get("model_args") or "") != self.model_args:
                continue
            by_kind = {e.get("prompt_kind"): e for e in run.evaluations if e.get("task") == task}
            best = by_kind.get("best_target") or by_kind.get("best_source")
            if best and best.get("prompt"):
                return PromptChoice("best", best["prompt"], f"stored run {run.run_id} ({best['prompt_kind']})")
        return None

    def evaluate_many(self, task: str, prompts: Sequence[str], *, split: str = "test") -> list[Any]:
        """Evaluate several instructions of one task in one backend call (cached per instruction).

        :return: one ``Evaluation`` per prompt, in order (metrics: every registered metric plus composite).
        """
        from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs

        prep = self.prepared(task)
        keys = [(task, p, split, self.limit) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._evaluations))
        if todo:
            jobs = [EvalJob(prep, split, k[1]) for k in todo]
            for k, ev in zip(todo, evaluate_jobs(self.backend, jobs, metrics=self.registries.metrics)):
                self._evaluations[k] = ev
        return [self._evaluations[k] for k in keys]

    def evaluation(self, task: str, kind: str) -> Any:
        """The test-split ``Evaluation`` of ``task`` with its ``kind`` prompt; both prompts run in one call."""
        choices = [self.prompt(task, k) for k in PROMPT_KINDS]
        evs = dict(zip(PROMPT_KINDS, self.evaluate_many(task, [c.text for c in choices])))
        return evs[kind]

    def run_optimize(self, task: str, *, sources: Sequence[str] | None = None, budget: str | None = None,
                     mode: str | None = None, seed: int = 0) -> OptimizeOutcome:
        """Run a prompt optimization for ``task`` on the session's scorer LLM and store it under ``results_dir``.

        Default: ``mode="no_transfer"`` (one stage on the task itself) when no sources are given, else
        ``two_stage``; the session's budget (``smoke`` unless ``--tp-budget``). The same call twice in a
        session runs once.
        """
        from tp_harness.runs.runner import OptimizeSettings, run_optimize

        key = (task, tuple(sources or ()), budget, mode, seed)
        if key in self._optimized:
            return self._optimized[key]

        settings = OptimizeSettings(
            model=self.model_name, model_args=self.model_args, reference_model=self.reference_model,
            sources=list(sources or [task]), targets=[task], budget=budget or self.budget, seed=seed,
            mode=mode or ("two_stage" if sources else "no_transfer"), results_dir=str(self.results_dir),
            spec_dirs=[str(d) for d in self.spec_dirs], apply_chat_template=self.chat_template,
        )
        self.backend  # noqa: B018 - load (and count) the scorer once; the optimizer reuses the process cache
        run, results = run_optimize(settings, self.registries)
        by_kind = {e["prompt_kind"]: e for e in results["tp"]["evaluations"] if e["task"] == task}
        best = by_kind.get("best_target") or by_kind.get("best_source") or by_kind["original"]
        self._optimized[key] = OptimizeOutcome(task=task, best_prompt=best["prompt"], run_dir=run.path,
                                               results=results)
        return self._optimized[key]


def _session(config: pytest.Config) -> TpSession:
    return config.stash[_SESSION]


