"""Reports built from stored run files: the per-run report and its plots, and the built-in reporters.

Owns reading a run's ``results.json``, ``config.json``, ``journal.jsonl``, ``best_prompts.json`` and
samples files, rendering them as ``report.md`` (tabulate, github format) and drawing the optimization
trajectory, the reliability diagram and the per-metric before/after bars (matplotlib, Agg). It never
runs a model: it reads the JSON that the journal and export wrote, as described in
``docs/run-directory.md``. The cross-run leaderboard lives in :mod:`tp_harness.reporting.leaderboard` and reading
stored runs in :mod:`tp_harness.store.stored_runs` (both re-exported here), the plots in :mod:`tp_harness.reporting.plots`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tabulate import tabulate

from tp_harness.errors import RunError
from tp_harness.files import atomic_write_text
from tp_harness.plugin.hookspecs import Registry, ReporterDef, hookimpl
from tp_harness.reporting.leaderboard import (
    build_leaderboard,
    evaluation_rows,
    task_tables,
    write_leaderboard,
)
from tp_harness.reporting.plots import plot_metric_bars, plot_reliability, plot_trajectory, trajectory_series
from tp_harness.store.stored_runs import StoredRun, load_results, make_run, read_jsonl_rows, read_results_file
from tp_harness.store.stored_runs import fmt_value as _fmt
from tp_harness.store.stored_runs import md_cell as _cell

log = logging.getLogger(__name__)

__all__ = ["StoredRun", "build_leaderboard", "load_results", "tp_register_reporters", "write_leaderboard",
           "write_run_report"]


# ----------------------------------------------------------------------------------------------
# Per-run inputs


def _read_optional_json(path: Path, notes: list[str]) -> Any:
    """Parsed JSON of ``path``, or ``None`` (with a note) when it is missing or corrupt."""
    if not path.is_file():
        notes.append(f"{path.name} not found")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path.name} unreadable ({err})")
        log.warning("%s: unreadable, ignored: %s", path, err)
        return None


def _load_reliability_samples(
    run_dir: Path, run: StoredRun, notes: list[str]
) -> dict[str, dict[str, tuple[list[float], list[bool]]]]:
    """``{task: {prompt_kind: (confidences, correct)}}`` for original/best_target test samples."""
    out: dict[str, dict[str, tuple[list[float], list[bool]]]] = {}
    for ev in run.evaluations:
        kind = ev.get("prompt_kind")
        if ev.get("split", "test") != "test" or kind not in ("original", "best_target"):
            continue
        task, rel = str(ev.get("task", "?")), ev.get("samples_file")
        path = run_dir / str(rel) if rel else None
        if path is None or not path.is_file():
            notes.append(f"samples file for {task} {kind} not found ({rel or 'not named in results.json'})")
            continue
        conf, correct = [], []
        for row in read_jsonl_rows(path):
            c = row.get("confidence")
            if _fmt(c) != "n/a":
                conf.append(float(c))
                correct.append(bool(row.get("correct")))
        if conf:
            out.setdefault(task, {})[kind] = (conf, correct)
        else:
            notes.append(f"{rel}: no sample with a confidence")
    return out


# ----------------------------------------------------------------------------------------------
# Plots


def _fence(text: str) -> list[str]:
    """A fenced code block holding ``text`` verbatim, its fence longer than any backtick run inside."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def _best_prompt_lines(best: Any, run: StoredRun) -> list[str]:
    lines = ["## Best prompts", ""]
    if not isinstance(best, dict):
        best = {"target": {}}
        for ev in run.evaluations:
            if ev.get("prompt_kind") == "best_target" and ev.get("split", "test") == "test":
                best["target"][str(ev.get("task"))] = {"prompt": ev.get("prompt", "")}
        lines += ["_best_prompts.json is missing; prompts taken from results.json._", ""]
    for i, item in enumerate(best.get("source") or [], start=1):
        if isinstance(item, dict):
            lines += [f"### Source prompt {i} (stage 1, composite {_fmt(item.get('composite'))})", ""]
            lines += [*_fence(str(item.get("prompt", ""))), ""]
    targets = best.get("target") if isinstance(best.get("target"), dict) else {}
    for task, item in sorted(targets.items()):
        if isinstance(item, dict):
            score = _fmt(item.get("validation_composite"))
            lines += [f"### Best target prompt: {task} (validation composite {score})", ""]
            lines += [*_fence(str(item.get("prompt", ""))), ""]
    return lines


def _selection_lines(run: StoredRun) -> list[str]:
    """The guarded final choice per target (``tp.selection``): replaced or original kept, with the bound."""
    selection = run.tp.get("selection")
    if not isinstance(selection, dict) or not selection:
        return ["## Final choice", "", "Not guarded: the validation argmax ships (the paper's rule; a run made "
                "before the guard, or with `--no-selection-guard`).", ""]
    rows = []
    for task, g in sorted(selection.items()):
        if not isinstance(g, dict):
            continue
        verdict = "**original kept**" if g.get("kept_original") else "replaced by the optimized prompt"
        rows.append([task, verdict, _fmt(g.get("difference")), _fmt(g.get("lower_bound")),
                     f"{1 - float(g.get('alpha') or 0.05):.0%}", g.get("n", ""), _cell(str(g.get("reason", "")))])

    return ["## Final choice", "",
            "The optimized prompt replaces the original only when the one-sided paired-bootstrap lower bound of its "
            "validation-composite gain is above 0 (`--selection-alpha`).", "",
            tabulate(rows, headers=["task", "final prompt", "validation gain", "lower bound", "level", "n", "why"],
                     tablefmt="github"), ""]


def _rejection_lines(run: StoredRun) -> list[str]:
    """The anti-overfit guard's rejections (``tp.rejected``); nothing for a run stored before the guard."""
    rejected = run.tp.get("rejected")
    if not isinstance(rejected, list):
        return []
    head = ["## Rejected proposals", "",
            "Proposals that copy 5 or more consecutive words of the task's data are rejected before they are scored "
            "(the anti-overfit guard)."]
    if not rejected:
        return [*head, "", "None this run.", ""]
    rows = [[r.get("of_stage"), r.get("task"), r.get("step"), r.get("proposer"), _cell(str(r.get("prompt", ""))[:120]),
             _cell(str(r.get("reason", "")))] for r in rejected if isinstance(r, dict)]
    return [*head, "", tabulate(rows, headers=["stage", "task", "step", "proposer", "proposal", "why"],
                                tablefmt="github", disable_numparse=True), ""]


def _run_header(run: StoredRun, config: dict[str, Any]) -> list[str]:
    def pick(key: str) -> Any:
        value = config.get(key, run.tp.get(key))
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "none"
        return "n/a" if value is None else value

    fields = ["run_id", "model", "reference_model", "mode", "budget", "seed", "sources", "targets"]
    rows = [[key.replace("_", " "), _cell(pick(key))] for key in fields]
    return [
        f"# Run report: {run.run_id}",
        "",
        tabulate(rows, headers=["field", "value"], tablefmt="github", disable_numparse=True),
        "",
    ]


def _reproduce_lines(run_dir: Path, run: StoredRun, config: dict[str, Any]) -> list[str]:
    lines = ["## Exported lm-eval tasks", ""]
    export_dir = run_dir / "lm_eval_tasks"
    files = sorted(p for p in export_dir.glob("*") if p.is_file()) if export_dir.is_dir() else []
    lines += [f"- [{p.name}](lm_eval_tasks/{p.name})" for p in files] or ["_No exported tasks found._"]
    checkpoint = config.get("scorer_checkpoint") or "<checkpoint>"
    settings = config.get("settings") or {}
    dtype = settings.get("dtype", "float32")
    model = settings.get("model") or config.get("model") or ""
    device = "cpu" if model.startswith(("embedded", "hf")) else "cuda"
    legacy_chat = bool((config.get("scorer_identity") or {}).get("chat_template", "yes"))  # runs before the switch
    chat_by_task = config.get("chat_template") or {}
    lines += ["", "## Reproduce with stock lm-eval", "", "```bash"]
    for task in run.targets or sorted({str(e.get("task")) for e in run.evaluations}):
        chat = chat_by_task.get(task, legacy_chat)
        exported = export_dir / f"{task}__tp_best.yaml"
        shots = exported.is_file() and re.search(r"^num_fewshot: [1-9]", exported.read_text(encoding="utf-8"), re.M)
        lines.append(
            f"lm-eval run --model hf --model_args pretrained={checkpoint},dtype={dtype} --device {device} "
            f"--include_path {run_dir}/lm_eval_tasks --tasks {task}__tp_best {task}__tp_original"
            + (" --apply_chat_template" if chat else "") + (" --fewshot_as_multiturn" if chat and shots else "")
        )
    return [*lines, "```", ""]


def _stored_run(run_dir: Path, what: str) -> StoredRun:
    """The run's parsed ``results.json``; :raises RunError: missing, corrupt or without ``tp.evaluations``."""
    try:
        return make_run(run_dir, read_results_file(run_dir / "results.json"))
    except ValueError as err:
        raise RunError(
            f"{run_dir / 'results.json'}: {err}; cannot write the {what} "
            "(re-run or resume the run to produce it)"
        ) from err


def write_run_plots(run_dir: Path) -> list[Path]:
    """Draw ``trajectory.png`` (from ``journal.jsonl``), ``reliability.png`` (from the test samples) and
    ``metrics.png`` (per-metric before/after bars, from ``results.json``).

    Draws exactly the plots that :func:`write_run_report` links, from the same inputs; a plot whose
    input is missing or empty is skipped. Files are written atomically.

    :param run_dir: ``results/runs/<run_id>/``.
    :return: the written plot paths (zero to three).
    :raises RunError: ``results.json`` is missing, corrupt or lacks ``tp.evaluations``.
    """
    run_dir = Path(run_dir)
    run = _stored_run(run_dir, "run plots")
    written: list[Path] = []
    journal = run_dir / "journal.jsonl"
    series = trajectory_series(read_jsonl_rows(journal)) if journal.is_file() else {}
    if series:
        written.append(plot_trajectory(series, run_dir / "trajectory.png"))
    samples = _load_reliability_samples(run_dir, run, [])
    if samples:
        written.append(plot_reliability(samples, run_dir / "reliability.png"))
    metrics = _test_metrics(run)
    if metrics:
        written.append(plot_metric_bars(metrics, run_dir / "metrics.png"))
    return written


def _test_metrics(run: StoredRun) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {prompt_kind: metrics}}`` of the run's test-split evaluations (for the before/after bars)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ev in run.evaluations:
        if ev.get("split", "test") == "test" and isinstance(ev.get("metrics"), dict):
            out.setdefault(str(ev.get("task", "?")), {})[str(ev.get("prompt_kind", "?"))] = ev["metrics"]
    return out


def write_run_report(run_dir: Path, *, draw_plots: bool = True) -> list[Path]:
    """Write ``report.md``, ``trajectory.png``, ``reliability.png`` and ``metrics.png`` into a run directory.

    Reads ``results.json`` (required), ``config.json``, ``journal.jsonl``, ``best_prompts.json`` and
    the samples files named in ``tp.evaluations`` (all optional: a missing or empty input skips
    its part, with a note in ``report.md``). All files are written atomically.

    :param run_dir: ``results/runs/<run_id>/``.
    :param draw_plots: also draw the plots; ``False`` links them only (the ``plots`` reporter draws
        them from the same inputs, see :func:`write_run_plots`).
    :return: the written paths: ``report.md`` first, then whichever plots were drawn.
    :raises RunError: ``results.json`` is missing, corrupt or lacks ``tp.evaluations``.
    """
    run_dir = Path(run_dir)
    run = _stored_run(run_dir, "run report")
    notes: list[str] = []
    config = _read_optional_json(run_dir / "config.json", notes)
    config = config if isinstance(config, dict) else {}
    best = _read_optional_json(run_dir / "best_prompts.json", notes)
    written: list[Path] = []

    lines = _run_header(run, config)
    lines += [
        "## Test split results",
        "",
        *(task_tables(evaluation_rows([run]), "###") or ["No test-split evaluations.", ""]),
    ]
    lines += _selection_lines(run)
    lines += _rejection_lines(run)
    lines += _best_prompt_lines(best, run)

    lines += ["## Optimization trajectory", ""]
    journal = run_dir / "journal.jsonl"
    series = trajectory_series(read_jsonl_rows(journal)) if journal.is_file() else {}
    if series:
        if draw_plots:
            written.append(plot_trajectory(series, run_dir / "trajectory.png"))
        lines += ["![Best composite per step](trajectory.png)", ""]
    else:
        lines += ["_Skipped: journal.jsonl is missing or has no scored optimization rows._", ""]

    lines += ["## Reliability diagram", ""]
    samples = _load_reliability_samples(run_dir, run, notes)
    if samples:
        if draw_plots:
            written.append(plot_reliability(samples, run_dir / "reliability.png"))
        lines += ["![Reliability: original vs best target prompt, test split](reliability.png)", ""]
    else:
        lines += [
            "_Skipped: no test-split samples with confidences for the original or best target prompt._",
            "",
        ]

    lines += ["## Metrics before and after", ""]
    metrics = _test_metrics(run)
    if metrics:
        if draw_plots:
            written.append(plot_metric_bars(metrics, run_dir / "metrics.png"))
        lines += ["![Test metrics per prompt: original, best source, best target](metrics.png)", ""]
    else:
        lines += ["_Skipped: no test-split evaluations._", ""]

    lines += _reproduce_lines(run_dir, run, config)
    if notes:
        lines += ["## Notes", "", *(f"- {_cell(n)}" for n in notes), ""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines).rstrip("\n") + "\n")
    log.info("wrote run report %s", report)
    return [report, *written]


# ----------------------------------------------------------------------------------------------
# Built-in reporters


def _write_plots_reporter(run_dir: Path, results: dict[str, Any], *, results_root: Path) -> list[Path]:
    """Reporter ``plots``: the run's trajectory, reliability and metric plots (``results`` is re-read from disk)."""
    return write_run_plots(run_dir)


def _write_report_reporter(run_dir: Path, results: dict[str, Any], *, results_root: Path) -> list[Path]:
    """Reporter ``markdown-report``: the run's report.md, linking the plots (``results`` is re-read from disk)."""
    return write_run_report(run_dir, draw_plots=False)


def _write_leaderboard_reporter(run_dir: Path, results: dict[str, Any], *, results_root: Path) -> list[Path]:
    """Reporter ``leaderboard``: rebuild ``results_root/LEADERBOARD.md`` from all stored runs."""
    return [write_leaderboard(results_root)]


@hookimpl
def tp_register_reporters(registry: Registry[ReporterDef]) -> None:
    """Register the built-in reporters ``plots``, ``markdown-report`` and ``leaderboard``.

    They read ``results.json``, which the ``results-json`` reporter of :mod:`tp_harness.interop.export` writes
    first (built-in plugins run in ``tp_harness.plugin.manager.BUILTIN_PLUGINS`` order).
    """
    registry.add(
        "plots",
        ReporterDef(
            write=_write_plots_reporter,
            description="trajectory.png (best composite per step), reliability.png and metrics.png (test split)",
        ),
    )
    registry.add(
        "markdown-report",
        ReporterDef(
            write=_write_report_reporter,
            description="report.md with test metrics, best prompts and links to the plots",
        ),
    )
    registry.add(
        "leaderboard",
        ReporterDef(
            write=_write_leaderboard_reporter,
            description="LEADERBOARD.md: original vs optimized prompts for all stored runs, per target task",
        ),
    )
