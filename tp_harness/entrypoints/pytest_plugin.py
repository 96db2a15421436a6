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

This module is imported by every pytest run where tp-harness is installed: heavy imports stay lazy.
"""

from __future__ import annotations

import fnmatch
import gc
import os
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tp_harness.constants import DEFAULT_MODEL
from tp_harness.errors import TpHarnessError
from tp_harness.spec.gates import Gate, check_gate, parse_gate

PROMPT_KINDS = ("original", "best")
WORST_SAMPLES = 3

# option name -> (ini type, default, help)
_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "tp_model": ("string", None, "scorer LLM to gate, e.g. embedded:smollm2-135m, hf, vllm; enables spec collection"),
    "tp_model_args": ("string", "", "model arguments, e.g. pretrained=./my-model,dtype=bfloat16"),
    "tp_reference_model": ("string", None, "reference LLM for --tp-optimize (default: the scorer LLM)"),
    "tp_tasks": ("string", None, "comma-separated task names or globs to gate (default: all specs)"),
    "tp_specs": ("paths", [], "spec directories to collect (default: <rootdir>/task_specs, else the shipped specs)"),
    "tp_limit": ("string", None, "evaluate at most N test docs per task"),
    "tp_budget": ("string", "smoke", "budget of --tp-optimize runs (smoke, light, medium, heavy)"),
    "tp_cache_dir": ("string", None, "model and response cache directory (sets TP_CACHE_DIR)"),
    "tp_results_dir": ("string", "results", "results directory holding runs/<run_id>/ with stored best prompts"),
    "tp_optimize": ("bool", False, "run a smoke optimization when no stored best prompt exists"),
    "tp_apply_chat_template": ("string", None, "render with the scorer's chat template: auto, on or off "
                               "(default: each spec's tp.apply_chat_template, else auto: off for multiple_choice)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tp-harness", "tp-harness prompt gates")
    for name, (kind, default, help_text) in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=name, help=help_text)
        elif kind == "paths":
            group.addoption(flag, action="append", default=None, dest=name, metavar="DIR", help=help_text)
        else:
            group.addoption(flag, default=None, dest=name, help=help_text)
        parser.addini(name, help_text, type=kind, default=default)


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


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


_SESSION = pytest.StashKey["TpSession"]()
_ENV = pytest.StashKey[pytest.MonkeyPatch]()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restore the environment variables :func:`pytest_configure` set (``TP_CACHE_DIR``, ``HF_HUB_OFFLINE``)."""
    env = config.stash.get(_ENV, None)
    if env is not None:
        env.undo()


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
            from tp_harness.spec.schema import BUILTIN_SPEC_DIR

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


# ---------------------------------------------------------------------------------------------
# collection: spec file -> task -> gate items


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = _session(parent.config)
    if not session.active or file_path.suffix not in (".yaml", ".yml"):
        return None
    if file_path.parent.resolve() not in session.spec_dirs:
        return None
    return SpecFile.from_parent(parent, path=file_path, nodeid=_spec_nodeid(parent.config, file_path))


def _spec_nodeid(config: pytest.Config, path: Path) -> str:
    """The spec file's node id: its path relative to the rootdir, with ``..`` when it lies outside (the shipped
    specs of an installed tp-harness, run from another project). pytest would make it relative to the argument
    that found it (``arc_challenge.yaml::...``), an id that selects nothing when pasted back."""
    return Path(os.path.relpath(path, config.rootpath)).as_posix()


class SpecFile(pytest.File):
    """A task spec YAML collected as a test file; its child is the task."""

    def collect(self) -> Iterator[pytest.Collector]:
        from tp_harness.spec.schema import load_spec

        session = _session(self.config)
        spec = load_spec(self.path, metric_names=set(session.registries.metrics.names()))
        if session.wants(spec.name):
            yield SpecTask.from_parent(self, name=spec.name, spec=spec)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:  # noqa: ANN001
        if isinstance(excinfo.value, TpHarnessError):
            return f"tp-harness: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)


class SpecTask(pytest.Collector):
    """One task of a spec; its children are the (gate, prompt) items."""

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def collect(self) -> Iterator[GateItem]:
        session = _session(self.config)
        metric_names = set(session.registries.metrics.names())
        for text in self.spec.tp.gates:
            gate = parse_gate(text, metric_names=metric_names)
            for kind in PROMPT_KINDS:
                if gate.relative and kind == "original":
                    continue  # the original prompt trivially matches itself
                item = GateItem.from_parent(self, name=f"{gate.name}[{kind}]", gate=gate, prompt_kind=kind)
                item.add_marker("tp")
                if session.model_name.split(":")[0] == "vllm":
                    item.add_marker("tp_gpu")
                if kind == "best" and session.optimize:
                    item.add_marker("tp_slow")
                yield item


class GateFailure(AssertionError):
    """Raised by a failing gate item; carries what the report shows."""

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report


class GateItem(pytest.Item):
    """One (task, gate, prompt) check against the session's shared evaluation."""

    def __init__(self, *, gate: Gate, prompt_kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.prompt_kind = prompt_kind

    @property
    def task(self) -> str:
        return self.parent.name

    def runtest(self) -> None:
        session = _session(self.config)
        gate, task = self.gate, self.task
        ev = session.evaluation(task, self.prompt_kind)
        choice = session.prompt(task, self.prompt_kind)
        value = ev.metrics.get(gate.metric)
        original = session.evaluation(task, "original").metrics.get(gate.metric) if gate.relative else None
        metrics = session.registries.metrics
        applies = gate.metric not in metrics.names() or ev.output_type in metrics.get(gate.metric).output_types
        verdict = check_gate(gate, value=value, original=original, applies=applies, task=task,
                             output_type=ev.output_type, n=ev.n)
        # apply the verdict: record it, then pass, skip or fail the item
        session.outcomes.append(GateResult(self.nodeid, task, gate.text, self.prompt_kind, verdict.status, value,
                                           verdict.bound, ev.n))
        self.user_properties += [("tp_task", task), ("tp_gate", gate.text), ("tp_prompt", self.prompt_kind),
                                 ("tp_prompt_origin", choice.origin), ("tp_n", ev.n)]
        self.user_properties += [(f"tp_{k}", v) for k, v in ev.metrics.items() if v is not None]
        if verdict.status == "skipped":
            pytest.skip(verdict.reason)
        self.user_properties.append(("tp_threshold", verdict.bound))
        if verdict.status == "failed":
            raise GateFailure(self._failure_report(session, ev, choice, value, verdict.bound, original))

    def _failure_report(self, session: TpSession, ev: Any, choice: PromptChoice, value: float, bound: float,
                        original: float | None) -> str:
        gate = self.gate
        lines = [f"gate failed: {gate.text}   [{self.task}, {self.prompt_kind} prompt, {session.model_name}]",
                 f"  {gate.metric} = {value:.4f}, threshold {gate.op} {bound:.4f}"
                 + (f" (original {original:.4f} {gate.threshold:+g})" if gate.relative else "")
                 + f", n = {ev.n} test docs ({ev.mode})",
                 f"  prompt ({choice.origin}): {_clip(choice.text, 300)}",
                 "  metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in ev.metrics.items() if v is not None)]
        worst = worst_samples(ev.records, WORST_SAMPLES)
        if worst:
            lines.append(f"  worst {len(worst)} samples (wrong answers with the highest confidence first):")
        from tp_harness.evaluation.evaluator import render_context

        prep = session.prepared(self.task)
        for r in worst:
            rendered = render_context(prep, session.backend, instruction=ev.instruction, split=ev.split,
                                      doc_id=r.doc_id)
            conf = "n/a" if r.confidence is None else f"{r.confidence:.2f}"
            lines += [f"  - doc {r.doc_id}: parsed answer {r.parsed_answer!r}, gold {r.gold!r}, confidence {conf}",
                      f"      prompt:   {_clip(rendered, 400, tail=True)}",
                      f"      response: {_clip(r.response, 200)}"]
        return "\n".join(lines)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:  # noqa: ANN001
        if isinstance(excinfo.value, GateFailure):
            return excinfo.value.report
        if isinstance(excinfo.value, TpHarnessError):
            return f"tp-harness: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The domain is what failure headers show. It must not be the node id's tail: pytest's `-v` line turns the
        # dots of such a tail into `::` (`acc>=0::2[original]`), and that id no longer selects the item.
        return self.path, None, f"{self.task}: {self.gate.text} [{self.prompt_kind}]"


def worst_samples(records: Sequence[Any], k: int) -> list[Any]:
    """The ``k`` most instructive failures: wrong answers first, most confident first, then unparsed ones.

    :param records: ``SampleRecord`` rows of one evaluation.
    """
    wrong = [r for r in records if not r.correct]
    wrong.sort(key=lambda r: (r.parsed_answer is None, -(r.confidence if r.confidence is not None else -1.0)))
    return wrong[:k]


def _clip(text: str | None, limit: int, *, tail: bool = False) -> str:
    text = (text or "").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    return "..." + text[-limit:] if tail else text[:limit] + "..."


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
