"""Sweeps: one optimization run per (model, target task, mode), resumable, then the leaderboard.

Owns planning the runs of ``tp-harness sweep`` with deterministic run ids (so a re-run finds them),
deciding per run whether it is finished (skip), interrupted (resume from its journal) or new (run),
calling :func:`tp_harness.runs.runner.run_optimize` for each, and rebuilding the leaderboard at the end.
A run that fails with a deliberate error is recorded and the sweep goes on. It prints nothing: it
logs, and reports progress through the callbacks its caller passes in (the CLI draws tqdm bars).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tp_harness.constants import ABLATION_MODES, SWEEP_BUDGET
from tp_harness.errors import RunError, TpHarnessError, UsageError
from tp_harness.optimizer.loop import Progress
from tp_harness.plugin.hookspecs import Registries
from tp_harness.reporting.leaderboard import write_leaderboard
from tp_harness.runs.runner import OptimizeSettings, run_optimize
from tp_harness.store.journal import CONFIG, RunDir
from tp_harness.store.stored_runs import read_results_file

log = logging.getLogger(__name__)

#: the test-split prompt kinds a finished run of each mode has for every target
EXPECTED_KINDS = {
    "two_stage": {"original", "best_source", "best_target"},
    "no_transfer": {"original", "best_target"},
    "source_only": {"original", "best_source"},
}
#: settings that must match between a sweep and a run directory it reuses
MATCHED_SETTINGS = ("model", "model_args", "targets", "mode", "budget", "seed", "sources", "scoring_mode",
                    "reference_model", "reference_model_args", "reference_share", "optimizer", "apply_chat_template",
                    "selection_alpha", "equal_budget")


def _sweep_run_defaults() -> OptimizeSettings:
    return OptimizeSettings(budget=SWEEP_BUDGET)


@dataclass(frozen=True)
class SweepSettings:
    """Settings of one ``tp-harness sweep``: the grid axes (models x targets x modes) and the settings every
    run shares, which are an :class:`OptimizeSettings` (``run``).

    Each planned run gets ``run`` with the grid cell filled in (its model, target and mode), its
    deterministic run id and no per-run leaderboard (:func:`run_settings`). ``run.reference_model`` None lets
    each run pick its default (the scorer itself, or ``embedded:smollm2-135m`` for a scorer without a chat
    template). The default budget of a sweep is ``smoke`` (:data:`tp_harness.constants.SWEEP_BUDGET`).
    """

    models: list[str]
    targets: list[str]
    modes: list[str] = field(default_factory=lambda: ["two_stage"])
    run: OptimizeSettings = field(default_factory=_sweep_run_defaults)
    #: the seeds axis (``--seeds 0,1,2``): one run per seed of every cell; None: ``run.seed`` alone
    seeds: list[int] | None = None


@dataclass(frozen=True)
class SweepItem:
    """One planned run: its grid cell and its deterministic run id."""

    model: str
    target: str
    mode: str
    run_id: str
    seed: int = 0


@dataclass
class SweepOutcome:
    """What a sweep did, run ids in plan order.

    :ivar executed: runs started from scratch. :ivar resumed: interrupted runs continued from their journal.
    :ivar skipped: runs already finished (left untouched). :ivar failed: ``(run id, error message)``.
    :ivar leaderboard: the rebuilt ``LEADERBOARD.md``.
    """

    executed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    leaderboard: Path | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def sweep_run_id(model: str, target: str, mode: str, *, budget: str, seed: int, output_type: str | None = None) -> str:
    """``sweep-<model>-<target>-<mode>-<budget>-s<seed>``, filesystem-safe (``:`` and ``/`` become ``-``); with an
    ``output_type`` (``--output-type``) ``sweep-<model>-<target>-<mode>-<budget>-<output_type>-s<seed>``, so the
    same grid scored in another mode gets its own runs.

    Deterministic, so a re-run of the same sweep finds its run directories.
    """
    kind = f"-{output_type}" if output_type else ""
    return _slug(f"sweep-{model}-{target}-{mode}-{budget}{kind}-s{seed}")


def plan_sweep(settings: SweepSettings) -> list[SweepItem]:
    """The runs of a sweep, ordered by model, then target, then mode, then seed (as given).

    :raises UsageError: no model or target, an unknown mode, or a duplicate in a list.
    """
    seeds = list(settings.seeds) if settings.seeds is not None else [settings.run.seed]
    if not settings.models or not settings.targets or not settings.modes:
        raise UsageError("a sweep needs at least one model (--models), target (--targets) and mode (--modes)")
    if not seeds:
        raise UsageError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    for name, values in (("--models", settings.models), ("--targets", settings.targets),
                         ("--modes", settings.modes), ("--seeds", seeds)):
        if len(set(values)) != len(values):
            raise UsageError(f"{name} lists a value twice: {','.join(map(str, values))}")
    unknown = [m for m in settings.modes if m not in ABLATION_MODES]
    if unknown:
        raise UsageError(f"--modes: {', '.join(unknown)} is not a mode; use one of {', '.join(ABLATION_MODES)}")
    return [SweepItem(model, target, mode, sweep_run_id(model, target, mode, budget=settings.run.budget, seed=seed,
                                                        output_type=settings.run.scoring_mode), seed=seed)
            for model in settings.models for target in settings.targets for mode in settings.modes for seed in seeds]


def run_settings(settings: SweepSettings, item: SweepItem) -> OptimizeSettings:
    """The :class:`OptimizeSettings` of one planned run: the sweep's shared ``run`` settings with the grid cell."""
    import dataclasses

    return dataclasses.replace(
        settings.run, model=item.model, targets=[item.target], mode=item.mode, run_id=item.run_id, seed=item.seed,
        sources=list(settings.run.sources), spec_dirs=list(settings.run.spec_dirs),
        leaderboard=False,  # built once, at the end of the sweep
    )


def run_state(run_dir: Path, item: SweepItem) -> str:
    """``"finished"``, ``"interrupted"`` or ``"new"``.

    finished: ``results.json`` parses and holds a test-split evaluation of every prompt kind the mode
    produces for the target. interrupted: the directory has a ``config.json`` (so a journal) but no
    complete ``results.json``. new: no such directory, or one with no file in it (a run killed between
    making the directory and writing its config; it is removed).
    :raises RunError: the directory holds files but no ``config.json`` (not a run; left alone).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    if not (run_dir / CONFIG).is_file():
        if any(p.is_file() for p in run_dir.rglob("*")):
            raise RunError(f"{run_dir} exists but is not a tp-harness run directory (no {CONFIG}); "
                                 "move it away or pick another --results-dir")
        shutil.rmtree(run_dir)
        return "new"
    try:
        data = read_results_file(run_dir / "results.json")
    except ValueError:
        return "interrupted"
    kinds = {str(e.get("prompt_kind")) for e in data["tp"]["evaluations"]
             if e.get("task") == item.target and e.get("split", "test") == "test"}
    return "finished" if EXPECTED_KINDS.get(item.mode, set()) <= kinds else "interrupted"


def _check_same_settings(run_dir: Path, planned: OptimizeSettings) -> None:
    """:raises RunError: the run directory was made with other settings than this sweep's."""
    saved: dict[str, Any] = dict(RunDir.open(run_dir).config().get("settings") or {})
    if saved and "apply_chat_template" not in saved:  # made before the switch: the chat template on every prompt
        saved["apply_chat_template"] = "on"
    if saved and "selection_alpha" not in saved:  # made before the guarded final choice: the validation argmax shipped
        saved["selection_alpha"] = None
    if saved and "equal_budget" not in saved:
        saved["equal_budget"] = False
    wanted = vars(planned)
    diff = [k for k in MATCHED_SETTINGS if k in saved and saved[k] != wanted[k]
            and not (k == "sources" and planned.mode == "no_transfer")]
    if diff:
        shown = ", ".join(f"{k}={saved[k]!r} (sweep: {wanted[k]!r})" for k in diff)
        raise RunError(f"{run_dir} was made with other settings: {shown}; delete it to re-run it with "
                             "this sweep's settings, or use another --results-dir")


def run_item(
    settings: SweepSettings,
    item: SweepItem,
    registries: Registries,
    outcome: SweepOutcome,
    *,
    label: str = "",
    on_item: Callable[[SweepItem, str], None] | None = None,
    run_progress: Callable[[str, int], Progress] | None = None,
) -> None:
    """Bring one planned run to finished: skip it, resume it from its journal, or run it; record it in ``outcome``.

    A run's deliberate error (``TpHarnessError``) is recorded in ``outcome.failed``; other exceptions propagate.
    :param label: ``"3/12"``-style position for log lines.
    """
    run_dir = Path(settings.run.results_dir) / "runs" / item.run_id
    planned = run_settings(settings, item)
    try:
        state = run_state(run_dir, item)
        if state != "new":
            _check_same_settings(run_dir, planned)
        if state == "finished":
            log.info("sweep %s: %s is finished; skipped", label, item.run_id)
            outcome.skipped.append(item.run_id)
            if on_item:
                on_item(item, "skip")
            return
        action = "resume" if state == "interrupted" else "run"
        log.info("sweep %s: %s %s", label, "resuming" if action == "resume" else "running", item.run_id)
        if on_item:
            on_item(item, action)
        run_optimize(planned, registries, resume=run_dir if action == "resume" else None, progress=run_progress)
        (outcome.resumed if action == "resume" else outcome.executed).append(item.run_id)
        if on_item:
            on_item(item, "done")
    except TpHarnessError as err:
        log.error("sweep %s: %s failed: %s", label, item.run_id, err)
        outcome.failed.append((item.run_id, str(err)))
        if on_item:
            on_item(item, "failed")


def run_sweep(
    settings: SweepSettings,
    registries: Registries,
    *,
    on_item: Callable[[SweepItem, str], None] | None = None,
    run_progress: Callable[[str, int], Progress] | None = None,
) -> SweepOutcome:
    """Run every planned run that is not finished, one after another in this process, then rebuild
    ``<results_dir>/LEADERBOARD.md`` once. (``tp_harness.runs.sweep_ray`` runs the same plan on a Ray cluster.)

    :param on_item: called with ``(item, "skip" | "run" | "resume")`` before a run and with
        ``(item, "done" | "failed")`` after it (progress bars, messages).
    :param run_progress: progress-bar factory handed to each run (one bar per stage).
    :return: which runs were executed, resumed, skipped or failed, and the leaderboard path.
    :raises UsageError: the grid is invalid (see :func:`plan_sweep`). A run's deliberate error
        (``TpHarnessError``) is recorded in ``failed`` and the sweep continues; other exceptions propagate.
    """
    plan = plan_sweep(settings)
    outcome = SweepOutcome()
    for index, item in enumerate(plan, start=1):
        run_item(settings, item, registries, outcome, label=f"{index}/{len(plan)}", on_item=on_item,
                 run_progress=run_progress)
    outcome.leaderboard = write_leaderboard(Path(settings.run.results_dir))
    return outcome
