"""Reports built from stored run files: the cross-run leaderboard, the per-run report and its plots.

Owns reading ``results/runs/*/results.json`` (and a run's ``config.json``, ``journal.jsonl``,
``best_prompts.json`` and samples files), rendering them as markdown tables (tabulate, github format)
and drawing the optimization trajectory and the reliability diagram (matplotlib, Agg). It never runs
a model or computes a metric from scratch: it reads the JSON that the journal and export wrote, as
described in ``docs/run-directory.md``. Plots live in :mod:`tp_harness.plots`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .errors import RunError
from .hookspecs import Registry, ReporterDef, hookimpl
from .journal import atomic_write_text
from .plots import plot_reliability, plot_trajectory, trajectory_series

log = logging.getLogger(__name__)

PROMPT_KINDS = ("original", "best_source", "best_target")
METRIC_COLUMNS = (
    ("acc", "ACC"),
    ("ifr", "IFR"),
    ("ece", "ECE"),
    ("auroc", "AUROC"),
    ("pr_p", "PR-P"),
    ("pr_n", "PR-N"),
    ("composite", "composite"),
)
TABLE_HEADERS = ["model", "run", "mode", "prompt", *(d for _, d in METRIC_COLUMNS), "n"]

LEADERBOARD_INTRO = (
    "Each row is one prompt scored on the held-out **test** split of a target dataset: the task's "
    "original instruction, the best stage-1 (source) prompt and the best stage-2 (target) prompt. "
    "Metrics: ACC (accuracy), IFR (instruction-following rate), ECE (expected calibration error, "
    "10 equal-width bins; **lower is better**), AUROC (confidence separating correct from wrong "
    "answers), PR-P and PR-N (precision-recall areas with correct, resp. wrong, answers as the "
    "positive class) and composite (the weighted objective the optimizer maximizes); all are in "
    '[0, 1] and higher is better except ECE. n is the number of test samples. "n/a" marks an '
    "undefined value, such as IFR in multiple_choice mode or AUROC when every answer is correct "
    "(or every answer wrong). Rebuilt from stored results.json files; no model is run."
)


@dataclass(frozen=True)
class StoredRun:
    """One run's parsed ``results.json`` plus the fields reports sort and group by.

    ``data`` is the whole parsed file (lm-eval results schema plus the ``tp`` section);
    ``run_id``, ``model`` and ``mode`` come from ``data["tp"]`` (``run_id`` falls back to the
    directory name, the others to ``"?"``); ``targets`` is ``tp.targets`` as a tuple.
    """

    run_dir: Path
    data: dict[str, Any] = field(compare=False, hash=False, repr=False)
    run_id: str
    model: str
    mode: str
    targets: tuple[str, ...]

    @property
    def tp(self) -> dict[str, Any]:
        """The ``tp`` section of ``results.json``."""
        return self.data["tp"]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """``tp.evaluations``: one dict per (task, split, prompt_kind) final evaluation."""
        return self.tp["evaluations"]


def _check_results(data: Any) -> str | None:
    """Return why parsed ``results.json`` content is unusable, or ``None`` when it is usable."""
    if not isinstance(data, dict):
        return f"top level is {type(data).__name__}, expected an object"
    tp = data.get("tp")
    if not isinstance(tp, dict):
        return 'missing "tp" section (partial or non-tp-harness results file)'
    evaluations = tp.get("evaluations")
    if not isinstance(evaluations, list):
        return 'missing "tp.evaluations" list (partial results file)'
    if not all(isinstance(e, dict) for e in evaluations):
        return '"tp.evaluations" holds a non-object entry'
    return None


def _make_run(run_dir: Path, data: dict[str, Any]) -> StoredRun:
    tp = data["tp"]
    targets = tp.get("targets") or []
    return StoredRun(
        run_dir=run_dir,
        data=data,
        run_id=str(tp.get("run_id") or run_dir.name),
        model=str(tp.get("model") or "?"),
        mode=str(tp.get("mode") or "?"),
        targets=tuple(str(t) for t in targets) if isinstance(targets, list) else (),
    )


def _read_results_file(path: Path) -> dict[str, Any]:
    """Parse and check one ``results.json``; :raises ValueError: with the reason it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    problem = _check_results(data)
    if problem:
        raise ValueError(problem)
    return data


def load_results(results_root: Path) -> tuple[list[StoredRun], list[str]]:
    """Load every ``runs/*/results.json`` under ``results_root``, skipping unusable ones.

    :param results_root: the results folder (holding ``runs/<run_id>/``); a missing folder gives no runs.
    :return: ``(runs, problems)``: runs in path order; one human-readable line per skipped file
        (``"runs/<id>/results.json: <why>"``, path relative to ``results_root``) for bad JSON or a
        missing ``tp`` / ``tp.evaluations``. Each problem is also logged as a warning; never raises
        for a bad file.
    """
    results_root = Path(results_root)
    runs: list[StoredRun] = []
    problems: list[str] = []
    for path in sorted(results_root.glob("runs/*/results.json")):
        rel = path.relative_to(results_root).as_posix()
        try:
            data = _read_results_file(path)
        except ValueError as err:
            problem = f"{rel}: {err}; skipped"
            log.warning("%s", problem)
            problems.append(problem)
            continue
        runs.append(_make_run(path.parent, data))
    return runs, problems


# ----------------------------------------------------------------------------------------------
# Tables


def _fmt(value: Any) -> str:
    """A metric cell: 3 decimals; ``None``, NaN, booleans and non-numbers are ``"n/a"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}"


def _cell(text: Any) -> str:
    """A text cell safe inside a markdown table row."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def _kind_order(kind: Any) -> tuple[int, str]:
    kind = str(kind)
    return (PROMPT_KINDS.index(kind) if kind in PROMPT_KINDS else len(PROMPT_KINDS), kind)


def _test_rows_by_task(runs: Sequence[StoredRun]) -> dict[str, list[list[str]]]:
    """Group the test-split evaluations of ``runs`` by task, rows sorted as the leaderboard wants."""
    keyed: dict[str, list[tuple[tuple[Any, ...], list[str]]]] = {}
    for run in runs:
        for ev in run.evaluations:
            if ev.get("split", "test") != "test":
                continue
            metrics = ev.get("metrics") if isinstance(ev.get("metrics"), dict) else {}
            n = ev.get("n")
            kind = ev.get("prompt_kind", "?")
            row = [
                _cell(run.model),
                _cell(run.run_id),
                _cell(run.mode),
                _cell(str(kind).replace("_", " ")),
                *(_fmt(metrics.get(key)) for key, _ in METRIC_COLUMNS),
                str(n) if isinstance(n, int) and not isinstance(n, bool) else "n/a",
            ]
            key = (run.model, run.run_id, _kind_order(kind))
            keyed.setdefault(str(ev.get("task", "?")), []).append((key, row))
    return {task: [row for _, row in sorted(rows, key=lambda kr: kr[0])] for task, rows in keyed.items()}


def _table(rows: list[list[str]]) -> str:
    return tabulate(rows, headers=TABLE_HEADERS, tablefmt="github", disable_numparse=True)


def _task_tables(runs: Sequence[StoredRun], heading: str) -> list[str]:
    """Markdown lines: one ``<heading> <task>`` section and table per task, tasks in name order."""
    lines: list[str] = []
    for task, rows in sorted(_test_rows_by_task(runs).items()):
        lines += [f"{heading} {task}", "", _table(rows), ""]
    return lines


def build_leaderboard(runs: list[StoredRun], *, problems: Sequence[str] = ()) -> str:
    """Render the leaderboard markdown: one table per target dataset, original vs optimized prompts.

    :param runs: stored runs, as :func:`load_results` returns them.
    :param problems: lines for skipped files, listed under a "Skipped" section when non-empty.
    :return: markdown text ending in a newline: a title, an explanation of the metrics, then a
        ``## <task>`` section per task with a test-split evaluation, each with one row per such
        evaluation (columns model, run, mode, prompt, ACC, IFR, ECE, AUROC, PR-P, PR-N, composite,
        n; 3 decimals, ``n/a`` for undefined values) sorted by (model, run id, prompt kind
        original < best source < best target). Deterministic: the same inputs give the same bytes.
    """
    lines = ["# tp-harness leaderboard", "", LEADERBOARD_INTRO, ""]
    tables = _task_tables(runs, "##")
    if tables:
        lines += tables
    else:
        lines += ["No test-split evaluations found.", ""]
    if problems:
        lines += ["## Skipped", ""]
        lines += [f"- {_cell(p)}" for p in problems]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# Writing files


def write_leaderboard(results_root: Path, output: Path | None = None) -> Path:
    """Rebuild the leaderboard from ``results_root/runs/*/results.json`` and write it atomically.

    :param results_root: the results folder.
    :param output: the markdown file; default ``results_root/LEADERBOARD.md``.
    :return: the written path. Corrupt result files are listed in the "Skipped" section, not raised.
    """
    results_root = Path(results_root)
    output = Path(output) if output is not None else results_root / "LEADERBOARD.md"
    runs, problems = load_results(results_root)
    atomic_write_text(output, build_leaderboard(runs, problems=problems))
    log.info("wrote leaderboard %s (%d runs, %d skipped)", output, len(runs), len(problems))
    return output


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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Object rows of a JSONL file; a blank, corrupt or non-object line is skipped with a warning."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                log.warning("%s:%d: corrupt JSONL row skipped: %s", path, number, err.msg)
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


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
        for row in _read_jsonl(path):
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
    chat = (config.get("scorer_identity") or {}).get("chat_template", "yes")
    lines += ["", "## Reproduce with stock lm-eval", "", "```bash"]
    for task in run.targets or sorted({str(e.get("task")) for e in run.evaluations}):
        lines.append(
            f"lm-eval run --model hf --model_args pretrained={checkpoint},dtype={dtype} --device {device} "
            f"--include_path {run_dir}/lm_eval_tasks --tasks {task}__tp_best {task}__tp_original"
            + (" --apply_chat_template" if chat else "")
        )
    return [*lines, "```", ""]


def write_run_report(run_dir: Path) -> list[Path]:
    """Write ``report.md``, ``trajectory.png`` and ``reliability.png`` into a run directory.

    Reads ``results.json`` (required), ``config.json``, ``journal.jsonl``, ``best_prompts.json`` and
    the samples files named in ``tp.evaluations`` (all optional: a missing or empty input skips
    its part, with a note in ``report.md``). All files are written atomically.

    :param run_dir: ``results/runs/<run_id>/``.
    :return: the written paths: ``report.md`` first, then whichever plots were drawn.
    :raises RunError: ``results.json`` is missing, corrupt or lacks ``tp.evaluations``.
    """
    run_dir = Path(run_dir)
    try:
        run = _make_run(run_dir, _read_results_file(run_dir / "results.json"))
    except ValueError as err:
        raise RunError(
            f"{run_dir / 'results.json'}: {err}; cannot write the run report "
            "(re-run or resume the run to produce it)"
        ) from err
    notes: list[str] = []
    config = _read_optional_json(run_dir / "config.json", notes)
    config = config if isinstance(config, dict) else {}
    best = _read_optional_json(run_dir / "best_prompts.json", notes)
    written: list[Path] = []

    lines = _run_header(run, config)
    lines += [
        "## Test split results",
        "",
        *(_task_tables([run], "###") or ["No test-split evaluations.", ""]),
    ]
    lines += _best_prompt_lines(best, run)

    lines += ["## Optimization trajectory", ""]
    journal = run_dir / "journal.jsonl"
    series = trajectory_series(_read_jsonl(journal)) if journal.is_file() else {}
    if series:
        written.append(plot_trajectory(series, run_dir / "trajectory.png"))
        lines += ["![Best composite per step](trajectory.png)", ""]
    else:
        lines += ["_Skipped: journal.jsonl is missing or has no scored optimization rows._", ""]

    lines += ["## Reliability diagram", ""]
    samples = _load_reliability_samples(run_dir, run, notes)
    if samples:
        written.append(plot_reliability(samples, run_dir / "reliability.png"))
        lines += ["![Reliability: original vs best target prompt, test split](reliability.png)", ""]
    else:
        lines += [
            "_Skipped: no test-split samples with confidences for the original or best target prompt._",
            "",
        ]

    lines += _reproduce_lines(run_dir, run, config)
    if notes:
        lines += ["## Notes", "", *(f"- {_cell(n)}" for n in notes), ""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines).rstrip("\n") + "\n")
    log.info("wrote run report %s", report)
    return [report, *written]


# ----------------------------------------------------------------------------------------------
# Built-in reporters


def _write_report_reporter(run_dir: Path, results: dict[str, Any], *, results_root: Path) -> list[Path]:
    """Reporter ``markdown-report``: the run's report.md and plots (``results`` is re-read from disk)."""
    return write_run_report(run_dir)


def _write_leaderboard_reporter(run_dir: Path, results: dict[str, Any], *, results_root: Path) -> list[Path]:
    """Reporter ``leaderboard``: rebuild ``results_root/LEADERBOARD.md`` from all stored runs."""
    return [write_leaderboard(results_root)]


@hookimpl
def tp_register_reporters(registry: Registry[ReporterDef]) -> None:
    """Register the built-in reporters ``markdown-report`` and ``leaderboard``."""
    registry.add(
        "markdown-report",
        ReporterDef(
            write=_write_report_reporter,
            description="report.md with test metrics, best prompts, trajectory and reliability plots",
        ),
    )
    registry.add(
        "leaderboard",
        ReporterDef(
            write=_write_leaderboard_reporter,
            description="LEADERBOARD.md: original vs optimized prompts for all stored runs, per target task",
        ),
    )
