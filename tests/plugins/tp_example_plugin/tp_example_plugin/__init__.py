"""tp-example-plugin: a complete tp-harness plugin with one contribution of each kind.

Contributes, through the ``tp_register_<kind>s`` hooks (it imports only names in ``tp_harness.__all__``):
- data format ``example-lines``: ``question|choice1;choice2;...|gold`` lines;
- metric ``brier``: the Brier score of the parsed confidences (lower is better);
- backend ``example-shortest``: a model-free baseline scorer that prefers the shortest answer;
- backend ``example-logged``: wraps a built-in backend (``inner=embedded:smollm2-135m``) and logs every request
  it passes on: how to extend a backend without copying it;
- optimizer ``example-greedy``: scores the original instruction and a few fixed rewrites on the
  optimize split, picks on the validation split and reports on the test split;
- reporter ``example-report``: writes ``example_report.txt`` into the run directory.

tp-harness loads it through the ``tp_harness`` entry point declared in this package's
``pyproject.toml`` (``example = "tp_example_plugin"``). ``tp_harness`` loads its heavy names (the evaluator,
the optimizer) on first use, so ``tp-harness plugins`` stays fast.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tp_harness
from tp_harness import BackendDef, DataError, DataFormatDef, MetricDef, OptimizerDef, ReporterDef, hookimpl

log = logging.getLogger(__name__)

__version__ = "0.1.0"

# ----------------------------------------------------------------------------------------------
# Data format: "example-lines"


def load_example_lines(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Read ``question|choice1;choice2;...|gold`` lines; blank lines and ``#`` comments are skipped.

    :param path: the data file.
    :param encoding: its text encoding (spec option ``tp.data.options.encoding``).
    :return: ``(line_number, row)`` pairs, 1-based line numbers; each row has ``question`` (str),
        ``choices`` (list of str, at least 2), ``gold`` (str, one of the choices) and ``answer_index``
        (int, the index of ``gold`` in ``choices``).
    :raises DataError: a line without 3 ``|``-separated fields, fewer than 2 choices, or a gold answer
        that is not one of the choices (names the file and line).
    """
    with open(path, encoding=encoding) as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3:
                raise DataError(path, f"expected 'question|choice1;choice2;...|gold', got {line[:60]!r}", line=number)
            question, choice_text, gold = parts
            choices = [c.strip() for c in choice_text.split(";") if c.strip()]
            if len(choices) < 2:
                raise DataError(path, f"expected at least 2 ';'-separated choices, got {choice_text!r}", line=number)
            if gold not in choices:
                raise DataError(path, f"gold answer {gold!r} is not one of the choices {choices}", line=number)
            yield number, {"question": question, "choices": choices, "gold": gold,
                           "answer_index": choices.index(gold)}


# ----------------------------------------------------------------------------------------------
# Metric: brier


def brier_score(records: Sequence[Any]) -> float | None:
    """Brier score: mean squared difference between the confidence and correctness (1 or 0).

    Shapes: ``records`` are the ``tp_harness.SampleRecord`` of one evaluation; only those
    with a parsed ``confidence`` (a probability in [0, 1]) count.
    Returns: a float in [0, 1], lower is better (0: every answer right with confidence 1 and every wrong
    one with confidence 0; 0.25: always 50% confident); ``None`` when no record has a confidence.
    Examples: confidences (0.9, 0.2) for (right, wrong) give ((0.1)^2 + (0.2)^2) / 2 = 0.025.
    Source: Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather Review, 1950.
    """
    pairs = [(r.confidence, 1.0 if r.correct else 0.0) for r in records if r.confidence is not None]
    if not pairs:
        return None
    return sum((c - y) ** 2 for c, y in pairs) / len(pairs)


# ----------------------------------------------------------------------------------------------
# Backend: example-shortest


class ShortestAnswerLM:
    """A model-free lm-eval style ``LM``: the shorter a continuation, the likelier (a length baseline).

    ``loglikelihood(requests)``: one ``(-0.1 * len(continuation), False)`` per ``(context, continuation)``
    request, in order. ``generate_until(requests)``: ``"Answer: A\nConfidence: 50%"`` for every request.
    """

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return [(-0.1 * len(req.arguments[1].strip()), False) for req in requests]

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = True) -> list[str]:
        return ["Answer: A\nConfidence: 50%" for _ in requests]


def make_shortest_backend(model_args: dict[str, str], **options: Any) -> tp_harness.LMBackend:
    """Backend factory of ``example-shortest``: a ``tp_harness.LMBackend`` over :class:`ShortestAnswerLM`.

    :param model_args: ``--model-args`` (none are used).
    :param options: dtype, batch_size, ... (ignored: there is no model).
    """
    return tp_harness.LMBackend(name="example-shortest", lm=ShortestAnswerLM(),
                                identity={"backend": "example-shortest", "version": __version__}, lm_eval_model="dummy")


# ----------------------------------------------------------------------------------------------
# Backend: example-logged (wraps a built-in backend)


class LoggedLM:
    """A :class:`tp_harness.LanguageModel` that passes every request to ``inner`` and logs how many it passed.

    :ivar seen: requests passed on, by request type (``loglikelihood``, ``generate_until``).
    """

    def __init__(self, inner: tp_harness.LanguageModel) -> None:
        self.inner = inner
        self.seen = {"loglikelihood": 0, "generate_until": 0}

    # what tp-harness reads from a model besides the two request methods: the inner model's (nothing else is
    # passed through, so tp-harness's own fast scorer, which needs the HF model itself, is not attached)
    @property
    def tokenizer(self) -> Any:
        return getattr(self.inner, "tokenizer", None)

    @property
    def max_length(self) -> Any:
        return getattr(self.inner, "max_length", None)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.inner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        self.seen["loglikelihood"] += len(requests)
        log.info("example-logged: %d loglikelihood requests", len(requests))
        return self.inner.loglikelihood(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = True) -> list[str]:
        self.seen["generate_until"] += len(requests)
        log.info("example-logged: %d generate_until requests", len(requests))
        return self.inner.generate_until(requests, disable_tqdm=disable_tqdm)


def make_logged_backend(model_args: dict[str, str], **options: Any) -> tp_harness.LMBackend:
    """Backend factory of ``example-logged``: the built-in backend ``inner`` (default ``embedded:smollm2-135m``),
    its requests logged.

    ``tp_harness.build_backend`` gives a new wrapper of the built-in (its model loads once per process);
    ``with_options`` makes this backend's own wrapper from it, with the logging model and an identity of its own
    (so its cache entries never mix with the built-in's). The built-in wrapper is not changed. Requests go
    through lm-eval (``fast_loglikelihood=None``): the prefix-sharing scorer works on the HF model, not on ``lm``.

    :param model_args: ``inner`` (a registered backend name) and the inner backend's own arguments.
    :param options: ``dtype`` and ``batch_size``, passed on.
    """
    args = dict(model_args)
    inner_name = args.pop("inner", "embedded:smollm2-135m")
    inner = tp_harness.build_backend(inner_name, args, dtype=options.get("dtype", "float32"),
                                     batch_size=int(options.get("batch_size", 16)))
    return inner.with_options(name="example-logged", lm=LoggedLM(inner.lm), fast_loglikelihood=None,
                              identity={**inner.identity, "wrapped_by": "example-logged"})


# ----------------------------------------------------------------------------------------------
# Optimizer: example-greedy

#: fixed rewrites of the original instruction, scored after it
REWRITES: tuple[str, ...] = (
    "{original} Read every option before you answer.",
    "You are a careful expert. {original}",
    "{original} Choose the single most accurate option.",
)


def run_example_greedy(ctx: Any) -> Any:
    """Score the original instruction and :data:`REWRITES` on each target's optimize split, keep the best.

    Uses the same ``RunContext`` API as the built-in optimizers: the scorer through
    ``tp_harness.evaluate_jobs``, one journal row per scored candidate through ``ctx.run.append`` (recalled on
    ``--resume``), the final choice on the validation split and the test-split evaluations through
    ``tp_harness.select_on_validation`` and ``tp_harness.final_evaluations``. Source tasks are not used: the
    optimizer is registered with ``mode="no_transfer"``, so the run is recorded as such before it starts
    (``ctx`` is frozen). ``--optimizer-option rewrites=N`` scores only the first N rewrites.

    :param ctx: the frozen ``tp_harness.RunContext``.
    :return: ``RunOutcome`` with one ``TargetOutcome`` per target (prompts ``original`` and ``best_target``).
    """
    from tp_harness import (
        EvalJob,
        RunOutcome,
        ScoredPrompt,
        evaluate_jobs,
        final_evaluations,
        prompt_sha,
        select_on_validation,
    )

    limit = int(ctx.optimizer_options.get("rewrites", len(REWRITES)))
    outcomes = []
    for target in ctx.targets:
        original = target.spec.tp.instruction
        num_rewrites = max(1, min(len(REWRITES), ctx.budget.num_candidates, limit))
        texts = [original, *(r.format(original=original) for r in REWRITES[:num_rewrites])]
        bar = ctx.progress(f"example-greedy ({target.name})", len(texts)) if ctx.progress else None
        history = []
        for index, text in enumerate(texts):
            step = 0 if index == 0 else 1
            rows = ctx.run.find(stage="target", task=target.name, step=step, prompt_sha=prompt_sha(text))
            if rows:
                row = rows[0]
            else:
                (ev,) = evaluate_jobs(ctx.scorer, [EvalJob(target, "optimize", text)],
                                      metrics=ctx.registries.metrics)
                row = {"stage": "target", "step": step, "task": target.name, "split": "optimize", "eval": "full",
                       "candidate_index": index, "num_candidates": len(texts),
                       "proposer": "original" if index == 0 else "example-greedy", "operation": "",
                       "prompt": text, "prompt_sha": ev.prompt_sha, "metrics": ev.metrics,
                       "n": ev.n, "seconds": round(ev.seconds, 3), "tokens": ev.tokens}
                ctx.run.append(row)
            history.append(ScoredPrompt(text=text, sha=row["prompt_sha"], proposer=row["proposer"],
                                        composite=row["metrics"].get("composite"), metrics=row["metrics"],
                                        step=step, row=row))
            if bar is not None:
                best = max((p.composite for p in history if p.composite is not None), default=None)
                bar.advance(1, step=step, best=best)
        best = select_on_validation(ctx, target, history)
        outcomes.append(final_evaluations(ctx, target, {"original": original, "best_target": best.text}))
    return RunOutcome(source_prompts=[], targets=outcomes)


# ----------------------------------------------------------------------------------------------
# Reporter: example-report


def write_example_report(run_dir: Path, results: dict[str, Any], *, results_root: Path) -> list[Path]:
    """Write ``example_report.txt``: one line per final evaluation (task, prompt kind, n, composite, brier).

    :param run_dir: ``<results>/runs/<run_id>/``.
    :param results: the run's results document (``results.json``: lm-eval schema plus ``tp``).
    :param results_root: the results directory (unused).
    :return: ``[run_dir / "example_report.txt"]``, written atomically.
    """

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    tp = results.get("tp", {})
    lines = [f"example report of run {tp.get('run_id', '?')} (model {tp.get('model', '?')})"]
    for ev in tp.get("evaluations", []):
        m = ev.get("metrics", {})
        lines.append(f"{ev.get('task')}\t{ev.get('prompt_kind')}\tn={ev.get('n')}\t"
                     f"composite={fmt(m.get('composite'))}\tbrier={fmt(m.get('brier'))}")
    path = Path(run_dir) / "example_report.txt"
    fd, tmp = tempfile.mkstemp(prefix=".example_report.", dir=run_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return [path]


# ----------------------------------------------------------------------------------------------
# Hooks


@hookimpl
def tp_register_data_formats(registry):
    """Register the ``example-lines`` data format."""
    registry.add("example-lines", DataFormatDef(
        load=load_example_lines, description="'question|choice1;choice2;...|gold' lines", suffixes=(".txt",)))


@hookimpl
def tp_register_metrics(registry):
    """Register the ``brier`` metric."""
    registry.add("brier", MetricDef(
        compute=brier_score, display="Brier", higher_is_better=False, needs_confidence=True,
        description="Brier score of the confidences (mean squared error vs correctness), lower is better"))


@hookimpl
def tp_register_backends(registry):
    """Register the ``example-shortest`` backend."""
    registry.add("example-shortest", BackendDef(
        factory=make_shortest_backend, description="model-free baseline: the shortest answer option wins"))
    registry.add("example-logged", BackendDef(
        factory=make_logged_backend,
        description="a built-in backend (inner=embedded:smollm2-135m) whose requests are logged: extends, not copies"))


@hookimpl
def tp_register_optimizers(registry):
    """Register the ``example-greedy`` optimizer."""
    registry.add("example-greedy", OptimizerDef(
        run=run_example_greedy, mode="no_transfer", options=("rewrites",),
        description="scores the original instruction and 3 fixed rewrites, keeps the best on validation"))


@hookimpl
def tp_register_reporters(registry):
    """Register the ``example-report`` reporter."""
    registry.add("example-report", ReporterDef(
        write=write_example_report, description="example_report.txt: composite and Brier per final evaluation"))
