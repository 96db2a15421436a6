"""The typed Python API: :func:`evaluate`, :func:`optimize` and :func:`build_backend`, re-exported by ``tp_harness``.

Each function takes Python values (numbers, mappings, sequences), checks every argument before a model loads,
with an error that says what to do, never changes what it is given, and returns a frozen result. The CLI and
the pytest plugin are built on the same functions underneath (``tp_harness.runs.runner``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tp_harness.backends.base import LMBackend
from tp_harness.constants import (
    ABLATION_MODES,
    DEFAULT_BUDGET,
    DEFAULT_MODEL,
    DEFAULT_REFERENCE_SHARE,
    DEFAULT_SELECTION_ALPHA,
    DEFAULT_SOURCES,
    DEFAULT_TARGETS,
    OUTPUT_TYPES,
    SPLITS,
)
from tp_harness.errors import UsageError
from tp_harness.evaluation.evaluator import Evaluation
from tp_harness.optimizer.loop import Progress
from tp_harness.plugin.hookspecs import Registries

Split = Literal["optimize", "validation", "test"]
OutputType = Literal["multiple_choice", "generate_until"]
AblationMode = Literal["two_stage", "no_transfer", "source_only"]
ChatTemplate = Literal["auto", "on", "off"]
DType = Literal["float32", "bfloat16", "float16"]
BatchSize = int | Literal["auto"]


@dataclass(frozen=True)
class RunResult:
    """What :func:`optimize` returns: the finished run directory and its ``results.json`` document.

    :ivar run_dir: ``<results_dir>/runs/<run_id>/`` (config.json, journal.jsonl, samples/, results.json, report.md,
        lm_eval_tasks/; see docs/run-directory.md).
    :ivar results: the ``results.json`` document: lm-eval's results schema plus the ``tp`` section.
    """

    run_dir: Path
    results: Mapping[str, Any]

    @property
    def run_id(self) -> str:
        """The run's id (the directory name)."""
        return str(self.results["tp"]["run_id"])

    @property
    def mode(self) -> str:
        """The ablation mode the run used (one of :data:`tp_harness.constants.ABLATION_MODES`)."""
        return str(self.results["tp"]["mode"])

    @property
    def evaluations(self) -> list[Mapping[str, Any]]:
        """The test-split evaluations: one mapping per (target task, prompt kind) with ``task``, ``prompt_kind``
        (``original``, ``best_source``, ``best_target``), ``prompt``, ``n``, ``output_type`` and ``metrics``
        (ACC, acc_norm, IFR, ECE, AUROC, PR-P, PR-N, composite: floats in [0, 1] or None)."""
        return list(self.results["tp"]["evaluations"])

    def test_metrics(self, target: str, prompt_kind: str = "best_target") -> Mapping[str, float | None]:
        """The test-split metrics of ``prompt_kind`` on ``target``.

        :raises KeyError: the run has no such evaluation (e.g. ``best_target`` in ``source_only``).
        """
        for ev in self.evaluations:
            if ev["task"] == target and ev["prompt_kind"] == prompt_kind:
                return dict(ev["metrics"])
        raise KeyError(f"no test evaluation of {prompt_kind!r} on {target!r} in run {self.run_id}")

    def best_prompt(self, target: str) -> str:
        """The final instruction for ``target``: ``best_target``, else ``best_source``, else the original."""
        by_kind = {ev["prompt_kind"]: ev["prompt"] for ev in self.evaluations if ev["task"] == target}
        if not by_kind:
            raise KeyError(f"target {target!r} is not in run {self.run_id}")
        return str(by_kind.get("best_target") or by_kind.get("best_source") or by_kind["original"])


def _choice(name: str, value: Any, allowed: Sequence[str], *, optional: bool = False) -> None:
    if (value is None and optional) or value in allowed:
        return
    raise UsageError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _model_args_text(name: str, args: Mapping[str, Any] | None) -> str:
    """``{"k": v}`` as lm-eval's ``k=v,...``; :raises UsageError: a key or value would not survive that form."""
    parts = []
    for key, value in (args or {}).items():
        text = str(value)
        if not isinstance(key, str) or not key or any(c in key for c in ",= ") or any(c in text for c in ",="):
            raise UsageError(f"{name}: {key!r}={text!r} cannot be passed as a model argument (no ',' or '=' in keys "
                             "or values, no empty key)")
        parts.append(f"{key}={text}")
    return ",".join(parts)


def _batch_size(value: BatchSize) -> str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return str(value)
    raise UsageError(f"batch_size={value!r}: pass a positive int or 'auto'")


def _registries(registries: Registries | None) -> Registries:
    if registries is not None:
        return registries
    from tp_harness.plugin.manager import build_registries

    return build_registries()


def evaluate(
    task: str,
    prompt: str | None = None,
    *,
    model: str = DEFAULT_MODEL,
    model_args: Mapping[str, Any] | None = None,
    split: Split = "test",
    output_type: OutputType | None = None,
    limit: int | None = None,
    apply_chat_template: ChatTemplate | None = None,
    dtype: DType = "float32",
    batch_size: BatchSize = 16,
    spec_dirs: Sequence[str | Path] = (),
    cache: bool = True,
    allow_data_outside_spec_dir: bool = False,
    registries: Registries | None = None,
) -> Evaluation:
    """Evaluate one instruction on one split of one task with the scorer LLM (``tp-harness evaluate``).

    :param task: a task spec name (``tp-harness tasks`` lists them; ``spec_dirs`` adds directories).
    :param prompt: the instruction; None: the spec's original instruction; ``""``: none.
    :param model: the scorer backend, e.g. ``embedded:smollm2-135m`` (default), ``hf``, ``vllm``.
    :param model_args: backend arguments, e.g. ``{"pretrained": "/path/to/model"}`` for ``hf``.
    :param split: the seeded split to score: ``optimize``, ``validation`` or ``test``.
    :param output_type: ``multiple_choice`` (loglikelihood over the choices) or ``generate_until``; None: the spec's.
    :param limit: score only the first ``limit`` (>= 1) docs of the split; None: all of it.
    :param apply_chat_template: ``auto`` (off for multiple_choice, on for generate_until with a chat model),
        ``on`` or ``off``; None: the spec's ``tp.apply_chat_template`` (docs/conformance.md).
    :param dtype: ``float32`` (exact) or ``bfloat16``/``float16``.
    :param batch_size: requests per forward pass, or ``"auto"``.
    :param cache: answer repeated requests from the response cache under ``$TP_CACHE_DIR``.
    :param registries: the plugin registries (default: every installed plugin, :func:`tp_harness.build_registries`).
    :return: the :class:`~tp_harness.Evaluation`: ``metrics`` (ACC, acc_norm, IFR, ECE, AUROC, PR-P, PR-N and the
        composite: floats in [0, 1], or None where undefined), ``records`` (one :class:`~tp_harness.SampleRecord`
        per doc), ``n``, ``output_type``, ``chat_template``, ``seconds`` and ``tokens``.
    :raises UsageError: a bad argument (said which and what to pass), an unknown task or model argument, or an
        instruction longer than the model's context window.
    :raises SpecError: the task's spec is invalid; :raises DataError: a data row is malformed (file and line).
    :raises BackendError: the model cannot be loaded.
    """
    from tp_harness.runs.runner import evaluate_prompt

    _choice("split", split, SPLITS)
    _choice("output_type", output_type, OUTPUT_TYPES, optional=True)
    _choice("apply_chat_template", apply_chat_template, ("auto", "on", "off"), optional=True)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit={limit!r}: pass an int >= 1, or None for the whole split")
    _prep, ev = evaluate_prompt(
        task=task, registries=_registries(registries), prompt=prompt, model=model,
        model_args=_model_args_text("model_args", model_args), split=split, scoring_mode=output_type, limit=limit,
        spec_dirs=[str(d) for d in spec_dirs], dtype=dtype, batch_size=_batch_size(batch_size), cache=cache,
        allow_data_outside=allow_data_outside_spec_dir, apply_chat_template=apply_chat_template,
    )
    return ev


def optimize(
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    sources: Sequence[str] = DEFAULT_SOURCES,
    mode: AblationMode = "two_stage",
    model: str = DEFAULT_MODEL,
    model_args: Mapping[str, Any] | None = None,
    reference_model: str | None = None,
    reference_model_args: Mapping[str, Any] | None = None,
    reference_share: float = DEFAULT_REFERENCE_SHARE,
    budget: str = DEFAULT_BUDGET,
    seed: int = 0,
    optimizer: str = "transfer",
    optimizer_options: Mapping[str, str] | None = None,
    selection_alpha: float | None = DEFAULT_SELECTION_ALPHA,
    equal_budget: bool = False,
    output_type: OutputType | None = None,
    apply_chat_template: ChatTemplate | None = None,
    dtype: DType = "float32",
    batch_size: BatchSize = 16,
    results_dir: str | Path = "results",
    run_id: str | None = None,
    spec_dirs: Sequence[str | Path] = (),
    cache: bool = True,
    allow_data_outside_spec_dir: bool = False,
    leaderboard: bool = True,
    progress: Callable[[str, int], Progress] | None = None,
    registries: Registries | None = None,
) -> RunResult:
    """Run Transfer-Prompting (Chang, Chang & Wu, 2025, arXiv 2502.14211, section 3) and write a run directory.

    Stage 1 (source prompt construction) optimizes one instruction over the ``sources``; stage 2 (target prompt
    generation) seeds each target's history with the best source prompts and optimizes on the target; the final
    prompt is chosen on the validation split and reported with the original on the test split.

    :param targets: target task names (>= 1, except in ``source_only``).
    :param sources: source task names (>= 1; the paper uses >= 2); ignored in ``no_transfer``.
    :param mode: ``two_stage`` (the paper), or the ablations ``no_transfer`` (stage 2 alone) and ``source_only``.
    :param model: the scorer LLM; :param model_args: its backend arguments.
    :param reference_model: the reference LLM (None: the scorer, or ``embedded:smollm2-135m`` for a base model).
    :param reference_share: share of each step's candidates written by the reference LLM, in [0, 1].
    :param budget: ``smoke``, ``sweep``, ``light`` (default), ``medium`` or ``heavy``: steps x candidates and split sizes.
    :param seed: seeds the splits' order, the proposers and sampling; the same seed gives the same run.
    :param optimizer: a registered optimizer; :param optimizer_options: options it reads (``ctx.optimizer_options``).
    :param selection_alpha: the guarded final choice: the optimized prompt replaces the original only when the
        one-sided ``1 - selection_alpha`` paired-bootstrap lower bound of its validation-composite gain is above 0
        (in (0, 0.5)); None: the validation argmax ships, as in the paper. ``RunResult.results["tp"]["selection"]``
        records the decision per target.
    :param equal_budget: with ``mode="no_transfer"``: as many candidate evaluations as ``two_stage``'s stage 1 and
        stage 2 together and about as many scorer requests (``results["tp"]["equal_budget"]`` records both).
    :param output_type: score every task in this lm-eval ``output_type``; None: each spec's.
    :param apply_chat_template: ``auto``, ``on`` or ``off`` (see :func:`evaluate`).
    :param results_dir: where ``runs/<run_id>/`` and ``LEADERBOARD.md`` are written.
    :param run_id: the run directory's name (default: time-model-target-mode); an existing one is refused.
    :param leaderboard: rebuild ``<results_dir>/LEADERBOARD.md`` when the run ends.
    :param progress: ``progress(label, total)`` returning a :class:`~tp_harness.Progress` (None: no bars).
    :return: a :class:`RunResult`.
    :raises UsageError: a bad argument (which, and what to pass), an unknown task, mode or budget, or a run id taken.
    :raises SpecError, DataError, BackendError, RunError: see :func:`evaluate`; a run that stops midway keeps its
        journal, and ``tp-harness optimize --resume RUN_DIR`` continues it.
    """
    from tp_harness.runs.runner import OptimizeSettings, run_optimize

    _choice("mode", mode, ABLATION_MODES)
    _choice("output_type", output_type, OUTPUT_TYPES, optional=True)
    _choice("apply_chat_template", apply_chat_template, ("auto", "on", "off"), optional=True)
    for name, value in (("targets", targets), ("sources", sources)):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{name}: pass a list of task names, e.g. [{value!r}]" if isinstance(value, str)
                             else f"{name}: every task name must be a str, got {list(value)!r}")
    if isinstance(reference_share, bool) or not 0.0 <= float(reference_share) <= 1.0:
        raise UsageError(f"reference_share={reference_share!r}: pass a number in [0, 1]")
    if selection_alpha is not None and (isinstance(selection_alpha, bool) or not 0.0 < float(selection_alpha) < 0.5):
        raise UsageError(f"selection_alpha={selection_alpha!r}: pass a number in (0, 0.5), or None for no guard")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed={seed!r}: pass an int")
    settings = OptimizeSettings(
        model=model, model_args=_model_args_text("model_args", model_args), reference_model=reference_model,
        reference_model_args=(_model_args_text("reference_model_args", reference_model_args)
                              if reference_model_args is not None else None),
        sources=list(sources), targets=list(targets), budget=budget, seed=seed, mode=mode, optimizer=optimizer,
        scoring_mode=output_type, results_dir=str(results_dir), spec_dirs=[str(d) for d in spec_dirs], dtype=dtype,
        batch_size=_batch_size(batch_size), run_id=run_id, reference_share=float(reference_share), cache=cache,
        allow_data_outside_spec_dir=allow_data_outside_spec_dir, leaderboard=leaderboard,
        apply_chat_template=apply_chat_template, optimizer_options=dict(optimizer_options or {}),
        selection_alpha=None if selection_alpha is None else float(selection_alpha), equal_budget=bool(equal_budget),
    )
    run, results = run_optimize(settings, _registries(registries), progress=progress)
    return RunResult(run_dir=run.path, results=results)


def build_backend(
    model: str,
    model_args: Mapping[str, Any] | None = None,
    *,
    dtype: DType = "float32",
    batch_size: BatchSize = 16,
    cache: bool = False,
    registries: Registries | None = None,
) -> LMBackend:
    """A new backend wrapper of a registered model (built-in or plugin): what a plugin backend wraps or extends.

    The model under it loads once per process; every call returns a new :class:`~tp_harness.LMBackend` whose
    cache, scorer and identity are its own (change them with :meth:`LMBackend.with_options`, never in place).

    :param model: a registered backend name, e.g. ``embedded:smollm2-135m`` or ``hf``.
    :param model_args: its arguments, e.g. ``{"pretrained": "/path/to/model"}``.
    :param cache: give the wrapper the response cache under ``$TP_CACHE_DIR``.
    :raises UsageError: an unknown model argument; :raises UnknownNameError: no such backend;
        :raises BackendError: the model cannot be loaded.
    """
    from tp_harness.runs.runner import build_backend as _build

    return _build(model, _model_args_text("model_args", model_args), _registries(registries), dtype=dtype,
                  batch_size=_batch_size(batch_size), cache=cache)
