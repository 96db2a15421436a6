"""The cross-run leaderboard: every stored run's test-split results as markdown, CSV or JSON.

Owns rendering and writing ``results/LEADERBOARD.md`` (and ``--format csv|json``): the overview matrix
(models x datasets, original -> optimized composite), one table per dataset with all six metrics, n and
bootstrap intervals, the ablation table (two-stage vs no-transfer vs source-only), the list of runs with
links to their reports and plots, and the skipped files; plus the overview and ablation figures. The rows
come from :mod:`tp_harness.reporting.leaderboard_data`, the stored files from :mod:`tp_harness.store.stored_runs` (a
corrupt or partial results file is reported and skipped, never fatal). It runs no model (DESIGN.md
section 1). Deterministic: the same stored files give the same bytes (no clock, no absolute path).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from tp_harness.constants import ABLATION_MODES
from tp_harness.files import atomic_write_text
from tp_harness.reporting.leaderboard_data import (
    Row,
    ablation_groups,
    delta_is_significant,
    evaluation_rows,
    optimized_row,
    overview_cells,
    seed_summaries,
    transfer_comparisons,
)
from tp_harness.reporting.plots import plot_ablation, plot_overview
from tp_harness.store.stored_runs import StoredRun, fmt_value, is_number, load_results, md_cell

__all__ = ["FORMATS", "build_leaderboard", "evaluation_rows", "leaderboard_csv", "leaderboard_json", "load_results",
           "render_leaderboard", "task_tables", "write_leaderboard"]

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "json")
METRIC_COLUMNS = (
    ("acc", "ACC"),
    ("acc_norm", "ACC-norm"),
    ("ifr", "IFR"),
    ("ece", "ECE"),
    ("auroc", "AUROC"),
    ("pr_p", "PR-P"),
    ("pr_n", "PR-N"),
    ("composite", "composite"),
)
TABLE_HEADERS = ["model", "run", "mode", "prompt", *(d for _, d in METRIC_COLUMNS), "ACC 95% CI",
                 "composite 95% CI", "n"]
RUN_PLOTS = (("trajectory.png", "trajectory"), ("reliability.png", "reliability"), ("metrics.png", "metrics"))
FIGURES_DIR = "leaderboard_plots"

LEADERBOARD_INTRO = (
    "Each row is one prompt scored on the held-out **test** split of a target dataset: the task's "
    "original instruction, the best stage-1 (source) prompt and the best stage-2 (target) prompt. "
    "Metrics: ACC (accuracy), ACC-norm (lm-eval's acc_norm: each choice's loglikelihood divided by its "
    "length; multiple_choice only, n/a in runs stored before it was reported), IFR (instruction-following rate), ECE (expected calibration error, "
    "10 equal-width bins; **lower is better**), AUROC (confidence separating correct from wrong "
    "answers), PR-P and PR-N (precision-recall areas with correct, resp. wrong, answers as the "
    "positive class) and composite (the weighted objective the optimizer maximizes); all are in "
    '[0, 1] and higher is better except ECE. n is the number of test samples. "n/a" marks an '
    "undefined value, such as IFR in multiple_choice mode or AUROC when every answer is correct "
    "(or every answer wrong). 95% CIs are percentile bootstrap intervals (1,000 resamples of the "
    "stored per-sample records, fixed seed). Rebuilt from stored results.json and samples files; "
    "no model is run."
)


# ----------------------------------------------------------------------------------------------
# Markdown


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table_cells(row: Row) -> list[str]:
    return [
        md_cell(row.run.model),
        md_cell(row.run.run_id),
        md_cell(row.run.mode),
        md_cell(row.kind.replace("_", " ")),
        *(fmt_value(row.metrics.get(key)) for key, _ in METRIC_COLUMNS),
        _fmt_ci(row.acc_ci),
        _fmt_ci(row.composite_ci),
        "n/a" if row.n is None else str(row.n),
    ]


def task_tables(rows: Sequence[Row], heading: str) -> list[str]:
    """Markdown lines: one ``<heading> <task>`` section and table per task, tasks in name order.

    Columns: model, run, mode, prompt, ACC, IFR, ECE, AUROC, PR-P, PR-N, composite, ACC 95% CI,
    composite 95% CI, n; 3 decimals, ``n/a`` for undefined values.
    """
    lines: list[str] = []
    for task in sorted({r.dataset for r in rows}):
        cells = [_table_cells(r) for r in rows if r.dataset == task]
        lines += [f"{heading} {task}", "",
                  tabulate(cells, headers=TABLE_HEADERS, tablefmt="github", disable_numparse=True), ""]
    return lines


def _delta_text(before: Row, after: Row) -> str:
    """``"+0.097"`` (``*`` when the paired 95% CI of the difference excludes 0), or n/a."""
    if before.composite is None or after.composite is None:
        return "n/a"
    delta = after.composite - before.composite
    return f"{delta:+.3f}" + ("*" if delta_is_significant(before, after) else "")


def _overview_lines(rows: Sequence[Row], figure: str | None) -> list[str]:
    cells = overview_cells(rows)
    if not cells:
        return []
    models = sorted({m for m, _ in cells})
    tasks = sorted({t for _, t in cells})
    body = []
    for model in models:
        line = [md_cell(model)]
        for task in tasks:
            pair = cells.get((model, task))
            if pair is None:
                line.append("")
                continue
            before, after = pair
            mode = "" if after.run.mode == "two_stage" else f" ({after.run.mode})"
            n = f", n={after.n}" if after.n is not None else ""
            guard = (after.run.tp.get("selection") or {}).get(task) or {}
            kept = ", original kept" if guard.get("kept_original") else ""
            line.append(f"{fmt_value(before.composite)} → {fmt_value(after.composite)} "
                        f"({_delta_text(before, after)}){n}{mode}{kept}")
        body.append(line)
    lines = ["## Overview", "",
             "Composite on the test split: original instruction → optimized prompt (difference), n test "
             "samples. Each cell is the two-stage run with the most test samples (then the newest); a `*` marks a "
             "difference whose paired 95% bootstrap CI excludes 0; \"original kept\": the guarded final choice found no "
             "prompt that beat the original on validation beyond noise (or too few validation docs to tell), so the "
             "original ships. Other runs and ablations are in the tables below.", "",
             tabulate(body, headers=["model", *tasks], tablefmt="github", disable_numparse=True), ""]
    if figure:
        lines += [f"![Composite, original vs optimized prompt, per model and dataset]({figure})", ""]
    return lines


def _seed_lines(rows: Sequence[Row]) -> list[str]:
    summaries = seed_summaries(rows)
    if not summaries:
        return []
    body = []
    for (model, task, mode, budget), s in summaries.items():
        ci = "n/a" if s.ci is None else f"[{s.ci[0]:+.3f}, {s.ci[1]:+.3f}]"
        star = "*" if s.ci is not None and (s.ci[0] > 0 or s.ci[1] < 0) else ""
        per_seed = ", ".join(f"s{k} {'n/a' if v is None else f'{v:+.3f}'}" for k, v in s.per_seed.items())
        body.append([md_cell(model), md_cell(task), md_cell(mode), md_cell(budget), str(len(s.seeds)),
                     "n/a" if s.n is None else str(s.n), fmt_value(s.original), fmt_value(s.final),
                     "n/a" if s.mean is None else f"{s.mean:+.3f}{star}", ci, per_seed,
                     ", ".join(f"s{k}" for k in s.kept) or "-"])
    headers = ["model", "dataset", "mode", "budget", "seeds", "n", "original (mean)", "final (mean)",
               "mean difference", "95% CI (seeds and docs)", "per seed", "original kept"]
    return ["## Across seeds", "",
            "Every (model, dataset, mode, budget) run with two or more seeds: the mean test composite of the original "
            "instruction and of the final prompt, the mean paired difference with a 95% interval from a two-level "
            "bootstrap (seeds drawn with replacement, then each seed's test docs), so it reflects the spread between "
            "searches as well as the sampling of docs (`*`: it excludes 0), and the difference of each seed.", "",
            tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), ""]


def _verdict(mean: float | None, ci: tuple[float, float] | None, *, better: str, worse: str) -> str:
    """``+0.245 [+0.200, +0.286], <better>`` when the interval is above 0, ``<worse>`` below, else "noise"."""
    if mean is None or ci is None:
        return "n/a" if mean is None else f"{mean:+.3f} (no interval)"
    word = better if ci[0] > 0 else worse if ci[1] < 0 else "noise"
    return f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}], {word}"


def _findings_lines(rows: Sequence[Row]) -> list[str]:
    summaries = seed_summaries(rows)
    transfers = transfer_comparisons(rows)
    keys = sorted({(m, t, b) for (m, t, _mode, b) in summaries} | set(transfers))
    if not keys:
        return []
    body = []
    for model, task, budget in keys:
        line = [md_cell(model), md_cell(task), md_cell(budget)]
        seeds: set[str] = set()
        for mode in ABLATION_MODES:
            s = summaries.get((model, task, mode, budget))
            seeds |= set(s.seeds) if s else set()
            line.append(_verdict(s.mean, s.ci, better="gain", worse="loss") if s else "")
        t = transfers.get((model, task, budget))
        line.append(_verdict(t.mean, t.ci, better="transfer better", worse="direct better")
                    + ("" if t.equal_budget else " (unequal budgets)") if t else "")
        body.append([*line[:3], str(len(seeds | set(t.seeds if t else ()))), *line[3:]])
    headers = ["model", "dataset", "budget", "seeds", "two-stage vs original", "no transfer vs original",
               "source only vs original", "two-stage minus no transfer"]
    return ["## Findings", "",
            "What the runs with two or more seeds show, read off the \"Across seeds\" table: each mode's mean paired "
            "test-composite difference against the original instruction, and two-stage against no transfer (the "
            "paper's claim that transfer beats direct optimization; both final prompts on the same test docs), each "
            "with its two-level 95% interval over seeds and docs. A difference counts only when the interval "
            "excludes 0; otherwise it is \"noise\", whatever its sign.", "",
            tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), ""]


def _ablation_lines(rows: Sequence[Row], figure: str | None) -> list[str]:
    groups = ablation_groups(rows)
    if not groups:
        return []
    body = []
    for (model, task, budget, seed), by_mode in groups.items():
        original = next((r for m in ABLATION_MODES for r in by_mode.get(m, []) if r.kind == "original"), None)
        line = [md_cell(model), md_cell(task), md_cell(budget), md_cell(seed),
                "n/a" if original is None or original.n is None else str(original.n),
                fmt_value(original.composite) if original else "n/a"]
        for mode in ABLATION_MODES:
            best = optimized_row(by_mode[mode]) if mode in by_mode else None
            if best is None:
                line.append("")
                continue
            orig = next((r for r in by_mode[mode] if r.kind == "original"), None)
            search = best.run.tp.get("search") or {}
            spent = (f"; {search['candidates']} cand., {search['scorer_requests']:,} req."
                     if isinstance(search.get("candidates"), int) and isinstance(search.get("scorer_requests"), int)
                     else "")
            equal = " (equal budget)" if best.run.tp.get("equal_budget") else ""
            line.append(f"{fmt_value(best.composite)} ({_delta_text(orig, best) if orig else 'n/a'}{spent}){equal}")
        body.append(line)
    headers = ["model", "dataset", "budget", "seed", "n", "original", "two-stage", "no transfer", "source only"]
    lines = ["## Ablation: two-stage vs no transfer vs source only", "",
             "Test composite of each mode's final prompt (difference to the original instruction, `*`: paired 95% "
             "bootstrap CI excludes 0), for every model, dataset, budget and seed with at least two modes. "
             "two-stage: the paper's setup (stage 1 on the source tasks, stage 2 on the target); no transfer: "
             "stage 2 alone from the original instruction (`--no-transfer`); source only: stage 1's best "
             "prompt used as is (`--source-only`). Each cell states the mode's search budget where the run recorded "
             "it: candidate evaluations and scorer requests of stages 1 and 2 (\"equal budget\": a no-transfer run "
             "given two-stage's, `--equal-budget`).", "",
             tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if figure:
        lines += [f"![Ablation: test composite per mode]({figure})", ""]
    return lines


def _link(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _runs_lines(runs: Sequence[StoredRun], link_base: Path | None) -> list[str]:
    body = []
    for run in sorted(runs, key=lambda r: (r.model, r.run_id)):
        base = link_base if link_base is not None else run.run_dir.parent.parent
        links = [f"[{label}]({_link(run.run_dir / name, base)})" for name, label in RUN_PLOTS
                 if (run.run_dir / name).is_file()]
        report = run.run_dir / "report.md"
        sources = run.tp.get("sources") if isinstance(run.tp.get("sources"), list) else []
        body.append([md_cell(run.run_id), md_cell(run.model), md_cell(run.mode), md_cell(run.budget),
                     md_cell(run.seed), md_cell(", ".join(map(str, sources)) or "none"),
                     md_cell(", ".join(run.targets)),
                     f"[report.md]({_link(report, base)})" if report.is_file() else "n/a",
                     " ".join(links) or "n/a"])
    if not body:
        return []
    headers = ["run", "model", "mode", "budget", "seed", "sources", "targets", "report", "plots"]
    return ["## Runs", "",
            "Every stored run, with its report (best prompts, trajectory, reproduce commands) and plots: the "
            "optimization trajectory (best composite per step, per stage), the reliability diagram of the "
            "original vs the optimized prompt, and per-metric before/after bars.", "",
            tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), ""]


def build_leaderboard(
    runs: list[StoredRun],
    *,
    problems: Sequence[str] = (),
    link_base: Path | None = None,
    figures: dict[str, str] | None = None,
    rows: Sequence[Row] | None = None,
) -> str:
    """Render the leaderboard markdown.

    :param runs: stored runs, as :func:`load_results` returns them.
    :param problems: lines for skipped files, listed under a "Skipped" section when non-empty.
    :param link_base: the directory the markdown will live in; links to run files are relative to it
        (default: each run's results folder, i.e. links read ``runs/<run_id>/...``).
    :param figures: ``{"overview" | "ablation": relative PNG path}`` to embed (drawn by the caller).
    :param rows: precomputed :func:`evaluation_rows` of ``runs`` (computed here when omitted).
    :return: markdown text ending in a newline: title and metric explanation; "Overview" (models x
        datasets); one ``## <task>`` table per dataset (columns model, run, mode, prompt, ACC, IFR,
        ECE, AUROC, PR-P, PR-N, composite, ACC 95% CI, composite 95% CI, n; rows sorted by model, run
        id and prompt kind original < best source < best target); "Ablation" when a model/dataset has
        two or more modes; "Across seeds" when a (model, dataset, mode, budget) has two or more seeds; "Findings"
        (each mode against the original and two-stage against no transfer, significant or noise) from those;
        "Runs" with links; "Skipped". Deterministic: same inputs, same bytes.
    """
    rows = evaluation_rows(runs) if rows is None else rows
    figures = figures or {}
    lines = ["# tp-harness leaderboard", "", LEADERBOARD_INTRO, ""]
    if rows:
        lines += _overview_lines(rows, figures.get("overview"))
        lines += task_tables(rows, "##")
        lines += _ablation_lines(rows, figures.get("ablation"))
        lines += _seed_lines(rows)
        lines += _findings_lines(rows)
    else:
        lines += ["No test-split evaluations found.", ""]
    lines += _runs_lines(runs, link_base)
    if problems:
        lines += ["## Skipped", ""]
        lines += [f"- {md_cell(p)}" for p in problems]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# CSV and JSON


def _record(row: Row) -> dict[str, Any]:
    def ci(value: tuple[float, float] | None, end: int) -> float | None:
        return None if value is None else value[end]

    rec: dict[str, Any] = {
        "task": row.task, "model": row.run.model, "run_id": row.run.run_id, "mode": row.run.mode,
        "budget": row.run.budget, "seed": row.run.tp.get("seed"), "prompt_kind": row.kind, "n": row.n,
    }
    for key, _ in METRIC_COLUMNS:
        value = row.metrics.get(key)
        rec[key] = float(value) if is_number(value) else None
    rec.update(acc_ci_low=ci(row.acc_ci, 0), acc_ci_high=ci(row.acc_ci, 1),
               composite_ci_low=ci(row.composite_ci, 0), composite_ci_high=ci(row.composite_ci, 1),
               prompt_sha=row.prompt_sha, prompt=row.prompt)
    return rec


def leaderboard_csv(rows: Sequence[Row]) -> str:
    """One CSV line per test-split evaluation (header first; full-precision numbers, empty for n/a).

    Columns: task, model, run_id, mode, budget, seed, prompt_kind, n, acc, acc_norm, ifr, ece, auroc, pr_p, pr_n,
    composite, acc_ci_low, acc_ci_high, composite_ci_low, composite_ci_high, prompt_sha, prompt.
    """
    buf = io.StringIO()
    records = [_record(r) for r in rows]
    fields = list(_record(rows[0])) if rows else ["task", "model", "run_id", "mode", "prompt_kind"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in rec.items()})
    return buf.getvalue()


def leaderboard_json(rows: Sequence[Row], *, problems: Sequence[str] = ()) -> str:
    """``{"rows": [...], "skipped": [...]}``: the CSV's records as JSON objects (null for n/a), indented."""
    return json.dumps({"rows": [_record(r) for r in rows], "skipped": list(problems)}, indent=2,
                      ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------
# Writing


def _draw_figures(rows: Sequence[Row], out_dir: Path, link_base: Path) -> dict[str, str]:
    """Draw the overview and ablation bar charts into ``out_dir``; return their links relative to ``link_base``."""
    figures: dict[str, str] = {}
    cells = overview_cells(rows)
    if cells:
        bars = {f"{m}\n{t}": (b.composite, a.composite, b.composite_ci, a.composite_ci)
                for (m, t), (b, a) in sorted(cells.items())}
        out_dir.mkdir(parents=True, exist_ok=True)
        figures["overview"] = _link(plot_overview(bars, out_dir / "overview.png"), link_base)
    groups = ablation_groups(rows)
    if groups:
        data = {}
        for (model, task, budget, seed), by_mode in groups.items():
            original = next((r for m in ABLATION_MODES for r in by_mode.get(m, []) if r.kind == "original"), None)
            values = {"original": original.composite if original else None}
            for mode in ABLATION_MODES:
                best = optimized_row(by_mode[mode]) if mode in by_mode else None
                values[mode] = best.composite if best else None
            data[f"{model}\n{task}\n{budget} s{seed}"] = values
        out_dir.mkdir(parents=True, exist_ok=True)
        figures["ablation"] = _link(plot_ablation(data, out_dir / "ablation.png"), link_base)
    return figures


def render_leaderboard(results_root: Path, *, fmt: str = "md", output: Path | None = None) -> str:
    """The leaderboard of ``results_root/runs/*`` as text in ``fmt`` (``md``, ``csv`` or ``json``).

    For ``md``, the overview and ablation figures are drawn into ``<output dir>/leaderboard_plots/``
    (``output`` defaults to ``results_root/LEADERBOARD.md``) and links are relative to that directory.
    :raises ValueError: unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; use one of {', '.join(FORMATS)}")
    results_root = Path(results_root)
    runs, problems = load_results(results_root)
    rows = evaluation_rows(runs)
    if fmt == "csv":
        return leaderboard_csv(rows)
    if fmt == "json":
        return leaderboard_json(rows, problems=problems)
    output = Path(output) if output is not None else results_root / "LEADERBOARD.md"
    base = output.parent
    figures = _draw_figures(rows, base / FIGURES_DIR, base)
    return build_leaderboard(runs, problems=problems, link_base=base, figures=figures, rows=rows)


def write_leaderboard(results_root: Path, output: Path | None = None, *, fmt: str = "md") -> Path:
    """Rebuild the leaderboard from ``results_root/runs/*/results.json`` and write it atomically.

    :param results_root: the results folder.
    :param output: the file to write; default ``results_root/LEADERBOARD.md`` (``.csv`` / ``.json`` for
        those formats).
    :param fmt: ``md`` (with figures under ``leaderboard_plots/`` next to ``output``), ``csv`` or ``json``.
    :return: the written path. Corrupt result files are listed (md "Skipped" section, json ``skipped``)
        and logged, never raised.
    """
    results_root = Path(results_root)
    default = {"md": "LEADERBOARD.md", "csv": "leaderboard.csv", "json": "leaderboard.json"}.get(fmt, "LEADERBOARD")
    output = Path(output) if output is not None else results_root / default
    atomic_write_text(output, render_leaderboard(results_root, fmt=fmt, output=output))
    log.info("wrote leaderboard %s", output)
    return output
