"""Run orchestration: from command-line settings to a finished run directory.

Owns wiring a run together: loading specs, preparing tasks once per run, building the scorer and
reference backends once per process, creating or resuming the run directory, calling the chosen
optimizer, exporting lm-eval tasks, writing ``best_prompts.json``, building the ``results.json`` document
and calling the registered reporters (results-json, plots, report, leaderboard, plugins' reporters).
Used by the CLI and the public API; prints nothing.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tp_harness.backends import DEFAULT_MODEL, LMBackend, parse_model_args, resolve_backend
from tp_harness.backends.base import REFERENCE_BASE_MODEL_FIX, REFERENCE_BASE_MODEL_PROBLEM
from tp_harness.constants import (
    ABLATION_MODES,
    DEFAULT_BUDGET,
    DEFAULT_REFERENCE_SHARE,
    DEFAULT_SELECTION_ALPHA,
    DEFAULT_SOURCES,
    DEFAULT_TARGETS,
)
from tp_harness.errors import BackendError, RunError, UsageError
from tp_harness.evaluation.evaluator import (
    EvalJob,
    Evaluation,
    PreparedTask,
    evaluate_jobs,
    prepare_task,
    uses_chat_template,
)
from tp_harness.interop.export import export_task_yaml, lm_eval_results
from tp_harness.optimizer.budget import Budget, Projection, get_budget
from tp_harness.optimizer.loop import Progress
from tp_harness.optimizer.transfer import RunContext, RunOutcome, project_calls, search_cost
from tp_harness.plugin.hookspecs import Registries
from tp_harness.spec.loader import BUILTIN_SPEC_DIR, discover_specs, load_spec
from tp_harness.spec.schema import TaskSpec
from tp_harness.store.journal import RunDir, make_run_id

log = logging.getLogger(__name__)



@dataclass
class OptimizeSettings:
    """Settings of one ``tp-harness optimize`` run (every field is recorded in ``config.json``)."""

    model: str = DEFAULT_MODEL
    model_args: str = ""
    reference_model: str | None = None
    reference_model_args: str | None = None
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES))
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    budget: str = DEFAULT_BUDGET
    seed: int = 0
    mode: str = "two_stage"
    optimizer: str = "transfer"
    scoring_mode: str | None = None
    results_dir: str = "results"
    spec_dirs: list[str] = field(default_factory=list)
    dtype: str = "float32"
    batch_size: str = "16"
    run_id: str | None = None
    reference_share: float = DEFAULT_REFERENCE_SHARE
    cache: bool = True
    allow_data_outside_spec_dir: bool = False
    #: rebuild ``<results>/LEADERBOARD.md`` when the run ends; a sweep turns it off and builds it once at its end
    leaderboard: bool = True
    apply_chat_template: str | None = None  # auto | on | off; None: each spec's tp.apply_chat_template
    #: ``--optimizer-option KEY=VALUE`` pairs for the optimizer (``ctx.optimizer_options``)
    optimizer_options: dict[str, str] = field(default_factory=dict)
    #: the guarded final choice: a new prompt ships only when the paired-bootstrap ``1 - alpha`` lower bound of its
    #: validation-composite gain over the original is above 0; None: the validation argmax ships (the paper's rule)
    selection_alpha: float | None = DEFAULT_SELECTION_ALPHA
    #: ``no_transfer`` only: as many candidate evaluations as ``two_stage``'s stage 1 and stage 2 together, and scorer
    #: requests as close as the target's optimize split allows (the ablation at equal budget)
    equal_budget: bool = False


def spec_index(spec_dirs: Sequence[str | Path] = ()) -> dict[str, Path]:
    """All task specs by name: the shipped ``task_specs/`` then each extra directory."""
    return discover_specs([BUILTIN_SPEC_DIR, *[Path(d) for d in spec_dirs]])


def load_specs(names: Sequence[str], spec_dirs: Sequence[str | Path], registries: Registries, *,
               allow_data_outside: bool = False) -> list[TaskSpec]:
    """Load the named specs; :raises UsageError: for an unknown task name (with the known ones).

    :param allow_data_outside: let specs read data files outside their directory (``--allow-data-outside-spec-dir``).
    """
    index = spec_index(spec_dirs)
    out = []
    for name in names:
        if name not in index:
            import difflib

            close = difflib.get_close_matches(name, list(index), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"unknown task {name!r}{hint}; known: {', '.join(sorted(index))}")
        out.append(load_spec(index[name], metric_names=set(registries.metrics.names()),
                             allow_data_outside=allow_data_outside))
    return out


def check_cache_dir(cache: bool) -> None:
    """Refuse a ``TP_CACHE_DIR`` that is not a usable directory, before any model loads or converts.

    The folder holds converted embedded models and, unless ``--no-cache``, the response cache.
    :raises CacheError: it is a file, or it cannot be created.
    """
    from tp_harness.backends.cache import default_cache_dir
    from tp_harness.errors import CacheError

    root = default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(root, f"TP_CACHE_DIR (or ~/.cache/tp_harness) is not a usable directory "
                               f"({err.strerror}); point TP_CACHE_DIR at a writable directory") from None
    if cache:
        from tp_harness.backends.cache import open_cache

        open_cache(root)


def scorer_stamp(settings: OptimizeSettings, scorer: LMBackend) -> dict[str, Any]:
    """What identifies the scorer of a run's rows: model, model args (less batch size and device), and the
    backend's identity (checkpoint, weights, dtype, chat template hash). Journal rows carry its fingerprint."""
    from tp_harness.backends.base import fingerprint

    identity = dict(scorer.identity)
    if "gguf_sha256" in identity:
        identity.pop("checkpoint", None)  # the GGUF's sha256 names the weights; the cache path may move
    elif identity.get("checkpoint"):
        identity["weights"] = _weights_fingerprint(Path(str(identity["checkpoint"])), fingerprint)
    args = {k: v for k, v in parse_model_args(settings.model_args).items() if k not in ("batch_size", "device")}
    return {"model": settings.model, "model_args": args, **identity}


def _weights_fingerprint(checkpoint: Path, fingerprint: Callable[[Any], str]) -> str | None:
    """A cheap id of a checkpoint directory's weights: its config.json and the names and sizes of weight files."""
    if not checkpoint.is_dir():
        return None
    try:
        config = (checkpoint / "config.json").read_text(encoding="utf-8", errors="replace")
        files = sorted((p.name, p.stat().st_size) for p in checkpoint.iterdir()
                       if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    except OSError:
        return None
    return fingerprint([config, files])


def check_resume_scorer(run: RunDir, stamp: dict[str, Any]) -> None:
    """Refuse to resume with a scorer other than the one that scored the journal's rows.

    Rows carry the fingerprint of :func:`scorer_stamp`; config.json keeps the stamp itself, to show what
    differs. A run from before stamps is compared with the ``scorer_identity`` in its config.json.

    :raises RunError: the rows (or config.json) name another scorer; the message shows each field that differs.
    """
    from tp_harness.backends.base import fingerprint

    config = run.config()
    now = fingerprint(stamp)
    recorded = {str(r["scorer"]) for r in run.journal() if isinstance(r, dict) and r.get("scorer")}
    before = config.get("scorer_stamp")
    if recorded:
        if recorded == {now}:
            return
    elif isinstance(before, dict):
        if fingerprint(before) == now:
            return
    else:
        old = config.get("scorer_identity")
        if not isinstance(old, dict) or all(stamp.get(k) == v for k, v in old.items() if k != "checkpoint"):
            return
        before = {"model": config.get("model"), **{k: v for k, v in old.items() if k != "checkpoint"}}
    before = before if isinstance(before, dict) else {}
    diff = [f"{k}: {before.get(k)!r} -> {stamp.get(k)!r}" for k in sorted(set(before) | set(stamp))
            if before.get(k) != stamp.get(k)]
    if not diff or (recorded and fingerprint(before) not in recorded):
        diff.append(f"the journal's rows were scored by scorer {', '.join(sorted(recorded))}, this one is {now}")
    raise RunError(f"{run.path}: --resume would score with another scorer than the journal's rows ("
                   + "; ".join(diff) + "); resume with the run's original model settings, or start a new run")


def check_instruction_fits(backend: LMBackend, instruction: str, *, what: str) -> None:
    """Refuse an instruction that fills the loaded model's context window, before anything is scored (the check
    for backends that cannot count tokens before they load; see :func:`check_instruction_before_load`).

    :raises UsageError: the instruction is at least as many tokens as the model's window (says both).
    """
    window = backend.context_window
    if not window or not instruction or len(instruction) < window:  # a token is at least one character: it fits
        return
    _refuse_long_instruction(backend.count_tokens([instruction]), window, backend.name, instruction, what)


def check_instruction_before_load(model: str, model_args: str, registries: Registries, instruction: str, *,
                                  what: str) -> None:
    """Refuse an over-long instruction before the model loads, from the tokenizer of its local checkpoint
    (``embedded`` and ``hf``; other backends are checked once loaded, by :func:`check_instruction_fits`).

    :raises UsageError: the instruction is at least as many tokens as the model's window (says both).
    """
    from tp_harness.backends import instruction_tokens_before_load

    found = instruction_tokens_before_load(model, parse_model_args(model_args), registries.backends, instruction)
    if found is not None:
        _refuse_long_instruction(found[0], found[1], model, instruction, what)


def _refuse_long_instruction(tokens: int, window: int, model: str, instruction: str, what: str) -> None:
    if tokens >= window:
        raise UsageError(f"{what} is {tokens} tokens ({len(instruction)} characters) but {model}'s context "
                         f"window is {window} tokens: it would be cut silently; shorten it well below the window "
                         "(the question and answer need room too)")


def build_backend(model: str, model_args: str | dict, registries: Registries, *, dtype: str,
                  batch_size: str, cache: bool = True) -> LMBackend:
    """A new backend wrapper for ``model``; the model under it loads once per process (see :func:`resolve_backend`).

    :param cache: answer repeated requests from the response cache under ``$TP_CACHE_DIR`` (``--no-cache``: off).
    """
    from tp_harness.backends.cache import open_cache

    args = parse_model_args(model_args) if isinstance(model_args, str) else dict(model_args)
    return resolve_backend(model, args, registries.backends, cache=open_cache() if cache else None, dtype=dtype,
                           batch_size=batch_size)


def default_reference(settings: OptimizeSettings, scorer: LMBackend) -> tuple[str | None, str | None]:
    """The reference LLM to use: ``(model, model_args)``; ``(None, None)`` means the scorer itself.

    An explicit ``--reference-model`` wins. Otherwise the scorer is its own reference LLM (the paper's
    setup), except when the scorer has no chat template (a base model such as ``embedded:gemma3-270m``,
    which cannot follow the meta-prompt): then the reference LLM is the embedded default
    ``embedded:smollm2-135m`` (DESIGN.md section 6; docs/models.md).
    """
    if settings.reference_model or settings.reference_model_args:
        return settings.reference_model, settings.reference_model_args
    if not scorer.has_chat_template and settings.model != DEFAULT_MODEL:
        log.info("scorer %s has no chat template; the reference LLM defaults to %s", scorer.name, DEFAULT_MODEL)
        return DEFAULT_MODEL, ""
    return None, None


def _check_scoring_modes(scorer: LMBackend, tasks: Sequence[PreparedTask]) -> None:
    """:raises BackendError: a base-model scorer (``loglikelihood_only``) would get ``generate_until`` tasks."""
    verbal = [t.name for t in tasks if t.mode != "multiple_choice"]
    if scorer.loglikelihood_only and verbal:
        raise BackendError(
            scorer.name,
            f"is a base model without a chat template: it scores multiple_choice (loglikelihood) tasks only, "
            f"but {', '.join(verbal)} would be scored in generate_until mode",
            "drop --output-type generate_until (or pick tasks whose spec offers multiple_choice), or use an "
            "instruct model such as embedded:smollm2-135m",
        )


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("tp-harness", "lm_eval", "transformers", "torch", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def prepare_run(
    settings: OptimizeSettings, registries: Registries, *, resume: Path | None = None,
    progress: Callable[[str, int], Progress] | None = None,
) -> tuple[RunContext, Projection]:
    """Load specs and backends, prepare tasks and create (or reopen) the run directory.

    :param progress: ``progress(label, total) -> Progress``, the run's progress bars (None: none).

    :raises UsageError: inconsistent settings (unknown mode, fewer than 2 sources for transfer, ...).
    :raises RunError: ``resume`` is not a run directory.
    """
    if resume is not None:
        run = RunDir.open(resume)
        run.lock()  # one writer per run: a second --resume stops here, before it reads or writes anything
        try:
            run.journal()  # a damaged journal is refused now, before any model loads
            return _prepare(_saved_settings(run), registries, run=run, progress=progress)
        except BaseException:
            run.unlock()
            raise
    return _prepare(settings, registries, run=None, progress=progress)


def _check_new_run_dir(results_dir: Path, run_id: str) -> None:
    """Refuse, before any model loads, a results folder that cannot hold runs or a run id that is taken.

    :raises RunError: ``results_dir`` (or ``runs/`` in it) is a file, or the run directory exists already.
    """
    for path in (results_dir / "runs", *(results_dir / "runs").parents):
        if path.exists():
            if not path.is_dir():
                raise RunError(f"--results-dir: {path} is a file, not a directory; pass a directory (default results)")
            if not os.access(path, os.W_OK | os.X_OK):
                raise RunError(f"--results-dir: cannot create run directories under {path} (not writable); pass a "
                               "writable directory")
            break
    run_dir = results_dir / "runs" / run_id
    if run_dir.exists():
        raise RunError(f"run directory {run_dir} exists already; resume it with --resume {run_dir}, or pick "
                       "another --run-id")


def _saved_settings(run: RunDir) -> OptimizeSettings:
    """The settings in a run's config.json; :raises RunError: missing, or with keys this version does not know."""
    import dataclasses

    saved = run.config().get("settings")
    if not saved or not isinstance(saved, dict):
        raise RunError(f"{run.path}/config.json has no 'settings'; it was not written by tp-harness optimize")
    known = {f.name for f in dataclasses.fields(OptimizeSettings)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise RunError(f"{run.path}/config.json: settings has unknown key(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(known))}; restore the file, or resume with the tp-harness version that "
                       "wrote it")
    return OptimizeSettings(**saved)


def _equal_budget(settings: OptimizeSettings, registries: Registries, budget: Budget, target_specs: Sequence[TaskSpec],
                  targets: list[PreparedTask]) -> tuple[Budget, list[PreparedTask], dict[str, Any]]:
    """``--equal-budget`` for ``no_transfer``: the budget that matches the two-stage search on the target
    (:func:`tp_harness.optimizer.transfer.equal_budget`), the target prepared with it, and the record for config.json.

    :raises UsageError: more than one target, or no source tasks to measure the two-stage search with.
    """
    from tp_harness.optimizer.transfer import equal_budget

    if len(targets) != 1:
        raise UsageError("--equal-budget matches one target's two-stage search: give one --target per run (a sweep "
                         "runs one target per run)")
    if not settings.sources:
        raise UsageError("--equal-budget needs the two-stage run's --sources to measure its stage 1")
    outside = settings.allow_data_outside_spec_dir
    caps = budget.caps()
    sources = [prepare_task(s, data_formats=registries.data_formats, mode=settings.scoring_mode, caps=caps,
                            apply_chat_template=settings.apply_chat_template)
               for s in load_specs(settings.sources, settings.spec_dirs, registries, allow_data_outside=outside)]
    full_caps = {k: v for k, v in caps.items() if k != "optimize"}
    target_full = prepare_task(target_specs[0], data_formats=registries.data_formats, mode=settings.scoring_mode,
                               caps=full_caps, apply_chat_template=settings.apply_chat_template)
    matched, record = equal_budget(budget, sources=sources, target=targets[0], target_full=target_full,
                                   reference_share=settings.reference_share)
    target = prepare_task(target_specs[0], data_formats=registries.data_formats, mode=settings.scoring_mode,
                          caps=matched.caps(), apply_chat_template=settings.apply_chat_template)
    log.info("equal budget: %s", record)
    return matched, [target], record


def _prepare(settings: OptimizeSettings, registries: Registries, *, run: RunDir | None,
             progress: Callable[[str, int], Progress] | None = None) -> tuple[RunContext, Projection]:
    """:func:`prepare_run` once the settings are known; ``run`` is the locked run directory of a resume."""
    from tp_harness.backends import check_model_args

    check_model_args(settings.model, parse_model_args(settings.model_args), registries.backends)
    if settings.reference_model or settings.reference_model_args:
        check_model_args(settings.reference_model or settings.model,
                         parse_model_args(settings.reference_model_args or ""), registries.backends)
    optimizer = registries.optimizers.get(settings.optimizer)
    mode = optimizer.mode or settings.mode  # decided here, once: an optimizer never changes its context
    if mode not in ABLATION_MODES:
        raise UsageError(f"mode {mode!r} is not one of {', '.join(ABLATION_MODES)}")
    if optimizer.options is not None:
        for key in settings.optimizer_options:
            if key not in optimizer.options:
                raise UsageError(f"--optimizer-option: optimizer {settings.optimizer!r} does not read {key!r}; it reads: "
                                 f"{', '.join(optimizer.options) or 'no options'}")
    if mode != "no_transfer" and len(settings.sources) < 1:
        raise UsageError("--sources needs at least one source task (two or more for transfer); "
                         "or use --no-transfer")
    if not settings.targets and mode != "source_only":
        raise UsageError("--targets needs at least one target task")
    run_id = settings.run_id or make_run_id(settings.model, settings.targets, mode)
    if run is None:
        _check_new_run_dir(Path(settings.results_dir), run_id)
    budget: Budget = get_budget(settings.budget)
    outside = settings.allow_data_outside_spec_dir
    source_specs = load_specs(settings.sources if mode != "no_transfer" else [], settings.spec_dirs, registries,
                              allow_data_outside=outside)
    target_specs = load_specs(settings.targets, settings.spec_dirs, registries, allow_data_outside=outside)
    caps = budget.caps()
    sources = [prepare_task(s, data_formats=registries.data_formats, mode=settings.scoring_mode, caps=caps,
                            apply_chat_template=settings.apply_chat_template) for s in source_specs]
    targets = [prepare_task(s, data_formats=registries.data_formats, mode=settings.scoring_mode, caps=caps,
                            apply_chat_template=settings.apply_chat_template) for s in target_specs]
    equal = None
    if settings.equal_budget and mode == "no_transfer":
        budget, targets, equal = _equal_budget(settings, registries, budget, target_specs, targets)
    check_cache_dir(settings.cache)
    for task in [*sources, *targets]:
        check_instruction_before_load(settings.model, settings.model_args, registries, task.spec.tp.instruction,
                                      what=f"the instruction of task {task.name!r}")
    scorer = build_backend(settings.model, settings.model_args, registries, dtype=settings.dtype,
                           batch_size=settings.batch_size, cache=settings.cache)
    _check_scoring_modes(scorer, [*sources, *targets])
    reference_model, reference_args = default_reference(settings, scorer)
    if reference_model in (None, "", settings.model) and reference_args in (None, "", settings.model_args):
        reference = scorer
    else:
        reference = build_backend(reference_model or settings.model, reference_args or "", registries,
                                  dtype=settings.dtype, batch_size=settings.batch_size, cache=settings.cache)
    if reference.loglikelihood_only and settings.reference_share > 0:
        raise BackendError(reference.name, REFERENCE_BASE_MODEL_PROBLEM, REFERENCE_BASE_MODEL_FIX)
    for task in [*sources, *targets]:
        check_instruction_fits(scorer, task.spec.tp.instruction, what=f"the instruction of task {task.name!r}")
    stamp = scorer_stamp(settings, scorer)
    if run is not None:
        check_resume_scorer(run, stamp)
    else:
        config = {
            "settings": asdict(settings),
            "model": settings.model, "model_args": settings.model_args,
            "reference_model": reference_model or settings.model,
            "reference_model_args": (reference_args or settings.model_args)
            if reference_model in (None, "", settings.model) else (reference_args or ""),
            "scorer_identity": scorer.identity, "reference_identity": reference.identity,
            "scorer_checkpoint": scorer.checkpoint, "scorer_stamp": stamp,
            "mode": mode, "budget": settings.budget, "budget_values": asdict(budget),
            "equal_budget": equal,
            "seed": settings.seed, "sources": [s.name for s in sources], "targets": [t.name for t in targets],
            "specs": {s.name: str(s.spec.path) for s in [*sources, *targets]},
            "scoring_modes": {s.name: s.mode for s in [*sources, *targets]},
            "chat_template": {s.name: uses_chat_template(s, scorer) for s in [*sources, *targets]},
            "argv": sys.argv, "versions": _versions(),
        }
        run = RunDir.create(Path(settings.results_dir) / "runs", run_id, config)
    from tp_harness.backends.base import fingerprint

    run.row_defaults = {"scorer": fingerprint(stamp)}
    ctx = RunContext(registries=registries, scorer=scorer, reference=reference, sources=sources, targets=targets,
                     budget=budget, seed=settings.seed, mode=mode, run=run, progress=progress,
                     reference_share=settings.reference_share,
                     optimizer_options=dict(settings.optimizer_options), selection_alpha=settings.selection_alpha)
    return ctx, project_calls(ctx)


def finish_run(ctx: RunContext, outcome: RunOutcome, *, results_root: Path,
               calls: dict[str, int] | None = None, skip_reporters: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``best_prompts.json`` and ``lm_eval_tasks/``, build the results document and run every reporter.

    Reporters run in registry order: the built-ins first (``results-json`` writes ``results.json``, then
    ``plots``, ``markdown-report``, ``leaderboard``), then plugins' reporters by plugin name. A reporter
    that raises is logged and skipped; the run's journal and best prompts stay.

    :param calls: scorer request counts of this process's part of the run (``tp.calls`` in results.json).
    :param skip_reporters: reporter names not to run (a sweep skips ``leaderboard`` per run and builds it once).

    :return: the results document written to ``results.json``.
    """
    run = ctx.run
    config = run.config()
    run.write_json("best_prompts.json", {
        "source": [{"prompt": p.text, "prompt_sha": p.sha, "composite": p.composite, "proposer": p.proposer}
                   for p in outcome.source_prompts],
        "target": {
            t.task: {"prompt": t.prompts.get("best_target") or t.prompts.get("best_source"),
                     "prompt_sha": (t.evaluations.get("best_target") or t.evaluations.get("best_source")).prompt_sha,
                     "validation_composite": _validation_composite(run, t.task, t.prompts.get("best_target")),
                     "kept_original": bool(t.selection and t.selection["kept_original"])}
            for t in outcome.targets
        },
    })
    evaluations = []
    by_name = {p.name: p for p in [*ctx.sources, *ctx.targets]}
    export_dir = run.path / "lm_eval_tasks"
    for t in outcome.targets:
        prep = by_name[t.task]
        for kind, ev in t.evaluations.items():
            evaluations.append(_evaluation_dict(ev, kind, run))
        best = t.prompts.get("best_target") or t.prompts.get("best_source") or t.prompts["original"]
        export_prepared_task(export_dir, prep, {"original": t.prompts["original"], "best": best}, ctx.registries,
                             chat_template=uses_chat_template(prep, ctx.scorer))
    tp = {
        "run_id": run.run_id, "model": config["model"], "reference_model": config["reference_model"],
        "mode": ctx.mode, "budget": ctx.budget.name, "seed": ctx.seed,
        "sources": [s.name for s in ctx.sources], "targets": [t.name for t in ctx.targets],
        "evaluations": evaluations, "trajectory": _trajectory(run.journal()),
        "scorer_checkpoint": config.get("scorer_checkpoint"),
        "calls": calls or {},
        "search": search_cost(ctx),
        "equal_budget": config.get("equal_budget"),
        "selection": {t.task: t.selection for t in outcome.targets if t.selection is not None},
        "rejected": _rejections(run.journal()),
    }
    hib = {e.name: e.item.higher_is_better for e in ctx.registries.metrics.entries()}
    results = lm_eval_results(evaluations=evaluations, model=config["model"], model_args=config["model_args"], tp=tp,
                              higher_is_better=hib)
    for entry in ctx.registries.reporters.entries():
        if entry.name in skip_reporters:
            continue
        try:
            entry.item.write(run.path, results, results_root=results_root)
        except Exception:  # a reporter plugin must not lose the finished run
            log.exception("reporter %r (plugin %s) failed; the journal and best_prompts.json are saved",
                          entry.name, entry.plugin)
    return results


def export_prepared_task(export_dir: Path, prep: PreparedTask, prompts: Mapping[str, str],
                         registries: Registries, *, chat_template: bool = False) -> list[Path]:
    """Export ``prompts`` (``{kind: instruction}``; kinds ``original``, ``best``) of one prepared task as stock
    lm-eval tasks ``<task>__tp_<kind>`` over its test split, scored with the registered metrics, the task's
    composite weights and answer parser exactly as the evaluator scored them (:func:`tp_harness.interop.export.export_task_yaml`).

    :param chat_template: whether the harness rendered the task with the chat template (recorded in the YAML, which
        stock lm-eval then runs with ``--apply_chat_template``).

    :return: the written paths.
    """
    configs = {}
    for kind, text in prompts.items():
        config = prep.spec.lm_eval_config(prep.mode, instruction=text)
        for key in ("num_fewshot", "fewshot_config"):
            config.pop(key, None)
        configs[kind] = {**config, **prep.fewshot_fields()}  # the demonstrations exactly as the harness showed them
    return export_task_yaml(export_dir, task=prep.name, configs=configs, test_docs=prep.splits["test"],
                            metric_defs={e.name: e.item for e in registries.metrics.entries()}, weights=prep.weights,
                            answer_format=prep.answer_format.model_dump() if prep.answer_format else None,
                            apply_chat_template=chat_template)


def _validation_composite(run: RunDir, task: str, prompt: str | None) -> float | None:
    if not prompt:
        return None
    from tp_harness.evaluation.evaluator import prompt_sha

    rows = run.find(stage="select", task=task, prompt_sha=prompt_sha(prompt))
    return rows[0]["metrics"].get("composite") if rows else None


def _evaluation_dict(ev: Evaluation, kind: str, run: RunDir) -> dict[str, Any]:
    return {"task": ev.task, "split": ev.split, "prompt_kind": kind, "prompt": ev.instruction,
            "prompt_sha": ev.prompt_sha, "n": ev.n, "output_type": ev.mode, "metrics": ev.metrics,
            "samples_file": str(run.samples_path(ev.task, ev.split, kind).relative_to(run.path))}


def _rejections(rows: Sequence[dict]) -> list[dict]:
    """The anti-overfit guard's rejected proposals (journal ``stage: rejected``): stage, task, step, proposer,
    prompt and reason each, in journal order."""
    return [{k: r.get(k) for k in ("of_stage", "task", "step", "proposer", "prompt", "reason")}
            for r in rows if r.get("stage") == "rejected"]


def _trajectory(rows: Sequence[dict]) -> list[dict]:
    best: dict[tuple[str, str], float] = {}
    out: dict[tuple[str, str, int], dict] = {}
    for r in rows:
        if r.get("stage") not in ("source", "target") or r.get("eval", "full") != "full":
            continue  # racing's minibatch (partial) scores are not comparable with full ones
        key = (r["stage"], r["task"])
        c = r["metrics"].get("composite")
        if c is not None:
            best[key] = max(best.get(key, float("-inf")), c)
        if key in best:
            out[(*key, r["step"])] = {"stage": r["stage"], "task": r["task"], "step": r["step"],
                                      "best_composite": best[key]}
    return list(out.values())


def run_optimize(
    settings: OptimizeSettings,
    registries: Registries,
    *,
    resume: Path | None = None,
    progress: Callable[[str, int], Progress] | None = None,
    on_projection: Callable[[Projection, RunContext], None] | None = None,
) -> tuple[RunDir, dict[str, Any]]:
    """Run a whole optimization: prepare, project, optimize, export, report. Returns the run dir and results."""
    ctx, projection = prepare_run(settings, registries, resume=resume, progress=progress)
    try:
        if on_projection:
            on_projection(projection, ctx)
        optimizer = registries.optimizers.get(ctx.run.config()["settings"]["optimizer"])
        outcome = optimizer.run(ctx)
        calls = _call_counts(ctx)  # the scorer wrapper is this run's own: its counters are this run's requests
        calls["projected_scorer_requests"] = projection.scorer_requests
        results_root = ctx.run.path.parent.parent  # <results>/runs/<run_id>: valid from any working directory
        results = finish_run(ctx, outcome, results_root=results_root, calls=calls,
                             skip_reporters=() if settings.leaderboard else ("leaderboard",))
    finally:
        ctx.run.unlock()  # the run's lock is held from prepare_run to here
    return ctx.run, results


def _call_counts(ctx: RunContext) -> dict[str, int]:
    """Scorer requests issued by the harness and computed by the model (the rest were cache hits)."""
    s = ctx.scorer
    return {"scorer_requests": sum(s.issued.values()), "scorer_computed": sum(s.computed.values())}


def evaluate_prompt(
    *,
    task: str,
    registries: Registries,
    prompt: str | None = None,
    model: str = DEFAULT_MODEL,
    model_args: str = "",
    split: str = "test",
    scoring_mode: str | None = None,
    limit: int | None = None,
    spec_dirs: Sequence[str] = (),
    dtype: str = "float32",
    batch_size: str = "16",
    seed_caps: dict[str, int] | None = None,
    cache: bool = True,
    allow_data_outside: bool = False,
    apply_chat_template: str | None = None,
) -> tuple[PreparedTask, Evaluation]:
    """Evaluate one instruction (default: the task's original) on one split of one task.

    Everything is checked before the model loads: the limit, the model args, the spec, every doc of every
    split and the cache folder; the instruction's length in tokens right after (it needs the tokenizer).
    :param apply_chat_template: ``auto``, ``on`` or ``off`` (default: the spec's ``tp.apply_chat_template``).

    :return: the prepared task and the :class:`Evaluation` (records and metrics).
    :raises UsageError: ``limit`` < 1, unknown model args, or an instruction longer than the model's window.
    """
    from tp_harness.backends import check_model_args

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit} (leave it out to evaluate the whole split)")
    args = parse_model_args(model_args)
    check_model_args(model, args, registries.backends)
    spec = load_specs([task], spec_dirs, registries, allow_data_outside=allow_data_outside)[0]
    caps = dict(seed_caps or {})
    if limit is not None:
        caps[split] = limit
    prep = prepare_task(spec, data_formats=registries.data_formats, mode=scoring_mode, caps=caps,
                        apply_chat_template=apply_chat_template)
    check_cache_dir(cache)
    instruction = spec.tp.instruction if prompt is None else prompt
    check_instruction_before_load(model, model_args, registries, instruction, what="the instruction")
    backend = build_backend(model, args, registries, dtype=dtype, batch_size=batch_size, cache=cache)
    check_instruction_fits(backend, instruction, what="the instruction")
    (ev,) = evaluate_jobs(backend, [EvalJob(prep, split, instruction)], metrics=registries.metrics)
    return prep, ev
