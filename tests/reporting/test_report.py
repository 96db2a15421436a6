"""Tests for tp_harness.reporting.report: leaderboard, per-run report and plots, built from hand-written run files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tp_harness.errors import RunError
from tp_harness.plugin.hookspecs import Registry, ReporterDef
from tp_harness.reporting.plots import reliability_bins, trajectory_series
from tp_harness.reporting.report import (
    build_leaderboard,
    load_results,
    tp_register_reporters,
    write_leaderboard,
    write_run_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BEST_TARGET_PROMPT = "Classify the sentiment of the financial sentence; prefer neutral when unsure."


def _metrics(acc: float, *, ifr: float | None, auroc: float | None = 0.6) -> dict[str, Any]:
    return {"acc": acc, "ifr": ifr, "ece": 0.2, "auroc": auroc, "pr_p": 0.4, "pr_n": 0.7, "composite": 0.5}


def _evaluation(task: str, kind: str, metrics: dict[str, Any], *, split: str = "test", n: int = 8) -> dict:
    return {
        "task": task,
        "split": split,
        "prompt_kind": kind,
        "prompt": f"{kind} prompt for {task}",
        "prompt_sha": f"{kind[:4]}0123456789ab",
        "n": n,
        "output_type": "multiple_choice",
        "metrics": metrics,
        "samples_file": f"samples/{task}.{split}.{kind}.jsonl",
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _samples(kind: str, n: int = 40) -> list[dict[str, Any]]:
    """Sample records whose confidences cover all bins; best_target is better calibrated than original."""
    rows = []
    for i in range(n):
        conf = (i % 10) / 10 + 0.05
        correct = (i % 3 != 0) if kind == "best_target" else (i % 2 == 0)
        rows.append(
            {
                "doc_id": i,
                "prompt_sha": "x",
                "response": "neutral",
                "parsed_answer": "neutral",
                "gold": "neutral" if correct else "positive",
                "confidence": conf,
                "followed": None,
                "correct": correct,
            }
        )
    rows.append({**rows[0], "doc_id": n, "confidence": None})  # no confidence: left out of the diagram
    return rows


def _make_run_a(root: Path) -> Path:
    """Run A: one target, multiple_choice (IFR n/a), full inputs for the per-run report."""
    run_dir = root / "runs" / "run-a"
    task = "financial_phrasebank"
    evaluations = [  # deliberately out of order; a validation row that the tables must leave out
        _evaluation(task, "best_target", _metrics(0.45, ifr=None, auroc=None), n=41),  # n = rows of _samples()
        _evaluation(task, "original", _metrics(0.3, ifr=None), n=41),
        _evaluation(task, "best_target", _metrics(0.999, ifr=None), split="validation"),
        _evaluation(task, "best_source", _metrics(0.35, ifr=None), n=41),
    ]
    evaluations[0]["prompt"] = BEST_TARGET_PROMPT
    tp = {
        "run_id": "run-a",
        "model": "embedded:smollm2-135m",
        "reference_model": "embedded:smollm2-135m",
        "mode": "two_stage",
        "budget": "smoke",
        "seed": 0,
        "sources": ["mmlu_general", "logiqa"],
        "targets": [task],
        "evaluations": evaluations,
        "trajectory": [],
    }
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"results": {}, "tp": tp}), encoding="utf-8")
    config = {k: tp[k] for k in ("run_id", "model", "reference_model", "mode", "budget", "seed", "sources")}
    config.update(targets=[task], scorer_checkpoint="/models/smollm2-fp32")
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    best = {
        "source": [{"prompt": "Think step by step, then answer.", "prompt_sha": "s1", "composite": 0.41}],
        "target": {task: {"prompt": BEST_TARGET_PROMPT, "prompt_sha": "t1", "validation_composite": 0.52}},
    }
    (run_dir / "best_prompts.json").write_text(json.dumps(best), encoding="utf-8")
    journal = []
    for stage, jtask in (("source", "mmlu_general+logiqa"), ("target", task)):
        offset = 0.0 if stage == "source" else 0.05
        for step, comp in enumerate([0.30, 0.42, 0.38, 0.47]):
            row = {"stage": stage, "step": step, "task": jtask, "metrics": {"composite": comp + offset}}
            journal.append(row)
    journal.append({"stage": "select", "step": 0, "task": task, "metrics": {"composite": 0.99}})
    _write_jsonl(run_dir / "journal.jsonl", journal)
    for kind in ("original", "best_target"):
        _write_jsonl(run_dir / "samples" / f"{task}.test.{kind}.jsonl", _samples(kind))
    (run_dir / "lm_eval_tasks").mkdir()
    (run_dir / "lm_eval_tasks" / f"{task}__tp_best.yaml").write_text("task: x\n", encoding="utf-8")
    return run_dir


def _make_run_b(root: Path) -> Path:
    """Run B: a model that sorts first, two targets, generate_until with IFR values."""
    run_dir = root / "runs" / "run-b"
    evaluations = [
        _evaluation("legalbench_hearsay", "original", _metrics(0.55, ifr=0.9), n=16),
        _evaluation("financial_phrasebank", "best_target", _metrics(0.61, ifr=0.75)),
        _evaluation("financial_phrasebank", "original", _metrics(0.52, ifr=0.5)),
        _evaluation("legalbench_hearsay", "best_target", _metrics(0.66, ifr=1.0), n=16),
    ]
    tp = {
        "run_id": "run-b",
        "model": "alpha-model",
        "reference_model": "alpha-model",
        "mode": "no_transfer",
        "budget": "light",
        "seed": 1,
        "sources": [],
        "targets": ["financial_phrasebank", "legalbench_hearsay"],
        "evaluations": evaluations,
    }
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"results": {}, "tp": tp}), encoding="utf-8")
    return run_dir


@pytest.fixture
def results_root(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    _make_run_a(root)
    _make_run_b(root)
    return root


def _add_broken_runs(root: Path) -> None:
    (root / "runs" / "run-corrupt").mkdir(parents=True)
    (root / "runs" / "run-corrupt" / "results.json").write_text('{"tp": {"evaluations": [', encoding="utf-8")
    (root / "runs" / "run-partial").mkdir(parents=True)
    (root / "runs" / "run-partial" / "results.json").write_text('{"results": {}}', encoding="utf-8")


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Data rows (cells stripped) of the table right under ``heading``."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    header, sep, *data = rows
    assert header[:4] == ["model", "run", "mode", "prompt"] and header[-1] == "n"
    assert set(sep[0]) <= {"-", ":"}
    return data


def test_load_results_skips_corrupt_and_partial_files(results_root: Path, caplog) -> None:
    _add_broken_runs(results_root)
    with caplog.at_level(logging.WARNING, logger="tp_harness.reporting.report"):
        runs, problems = load_results(results_root)
    assert [r.run_id for r in runs] == ["run-a", "run-b"]
    assert runs[0].model == "embedded:smollm2-135m" and runs[0].mode == "two_stage"
    assert runs[1].targets == ("financial_phrasebank", "legalbench_hearsay")
    assert runs[0].run_dir == results_root / "runs" / "run-a"
    assert len(problems) == 2
    assert problems[0].startswith("runs/run-corrupt/results.json: invalid JSON")
    assert problems[1].startswith('runs/run-partial/results.json: missing "tp" section')
    assert "run-corrupt" in caplog.text and "run-partial" in caplog.text


def test_load_results_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert load_results(tmp_path / "nowhere") == ([], [])


def test_leaderboard_has_one_sorted_table_per_target(results_root: Path) -> None:
    runs, problems = load_results(results_root)
    md = build_leaderboard(runs, problems=problems)
    assert md.startswith("# tp-harness leaderboard\n")
    assert "ECE" in md and "lower is better" in md and "n/a" in md
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["## Overview", "## financial_phrasebank", "## legalbench_hearsay", "## Runs"]

    fpb = _table_rows(md, "## financial_phrasebank")
    assert [(r[0], r[1], r[3]) for r in fpb] == [
        ("alpha-model", "run-b", "original"),
        ("alpha-model", "run-b", "best target"),
        ("embedded:smollm2-135m", "run-a", "original"),
        ("embedded:smollm2-135m", "run-a", "best source"),
        ("embedded:smollm2-135m", "run-a", "best target"),
    ]
    # columns: model run mode prompt ACC ACC-norm IFR ECE AUROC PR-P PR-N composite "ACC 95% CI" "composite 95% CI" n
    assert fpb[0][2:] == ["no_transfer", "original", "0.520", "n/a", "0.500", "0.200", "0.600", "0.400", "0.700"] + [
        "0.500",
        "n/a",  # run-b has no samples files: no bootstrap interval
        "n/a",
        "8",
    ]  # ACC-norm n/a: these hand-written results predate it
    assert fpb[2][12].startswith("[") and fpb[2][13] == "n/a"  # ACC CI from samples; the composite CI needs
    # the stored composite to be reproducible from the samples, which the hand-written 0.5 is not
    assert fpb[4][4:9] == ["0.450", "n/a", "n/a", "0.200", "n/a"]  # multiple_choice IFR and undefined AUROC
    assert all(r[6] == "n/a" for r in fpb if r[1] == "run-a")
    assert "0.999" not in md  # the validation-split evaluation is not a leaderboard row

    hearsay = _table_rows(md, "## legalbench_hearsay")
    assert [(r[1], r[3], r[4], r[-1]) for r in hearsay] == [
        ("run-b", "original", "0.550", "16"),
        ("run-b", "best target", "0.660", "16"),
    ]
    assert "## Skipped" not in md


def test_leaderboard_regeneration_is_byte_identical_and_lists_skipped(results_root: Path) -> None:
    _add_broken_runs(results_root)
    first_path = write_leaderboard(results_root)
    assert first_path == results_root / "LEADERBOARD.md"
    first = first_path.read_bytes()
    second_path = write_leaderboard(results_root, results_root / "BOARD.md")
    assert second_path.read_bytes() == first
    assert write_leaderboard(results_root).read_bytes() == first
    text = first.decode("utf-8")
    skipped = text.split("## Skipped\n", 1)[1]
    assert "runs/run-corrupt/results.json: invalid JSON" in skipped
    assert "runs/run-partial/results.json" in skipped
    assert "run-corrupt" not in text.split("## Skipped")[0]
    assert not list(results_root.glob(".LEADERBOARD.md.*"))  # no temp file left behind


def test_leaderboard_without_runs_says_so() -> None:
    md = build_leaderboard([])
    assert "No test-split evaluations found." in md
    assert "## " not in md


def test_write_run_report_writes_report_and_plots(results_root: Path) -> None:
    run_dir = results_root / "runs" / "run-a"
    written = write_run_report(run_dir)
    names = [p.name for p in written]
    assert names == ["report.md", "trajectory.png", "reliability.png", "metrics.png"]
    for png in written[1:]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 5_000

    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# Run report: run-a\n")
    assert "| reference model | embedded:smollm2-135m |" in report
    assert "| sources         | mmlu_general, logiqa" in report
    assert f"```text\n{BEST_TARGET_PROMPT}\n```" in report
    assert "Think step by step, then answer." in report
    assert "### financial_phrasebank" in report
    assert "| embedded:smollm2-135m | run-a | two_stage | best target | 0.450 | n/a" in report
    assert "![Best composite per step](trajectory.png)" in report
    assert "(reliability.png)" in report
    assert "## Metrics before and after" in report and "](metrics.png)" in report
    assert "[financial_phrasebank__tp_best.yaml](lm_eval_tasks/financial_phrasebank__tp_best.yaml)" in report
    assert (
        "lm-eval run --model hf --model_args pretrained=/models/smollm2-fp32,dtype=float32 --device cpu "
        f"--include_path {run_dir}/lm_eval_tasks --tasks financial_phrasebank__tp_best "
        "financial_phrasebank__tp_original --apply_chat_template"
    ) in report
    assert "Skipped" not in report
    assert write_run_report(run_dir)[0].read_text(encoding="utf-8") == report  # deterministic


def test_write_run_report_skips_missing_inputs_with_notes(results_root: Path) -> None:
    run_dir = results_root / "runs" / "run-b"  # no config, journal, best prompts, samples or exports
    written = write_run_report(run_dir)
    assert written == [run_dir / "report.md", run_dir / "metrics.png"]  # metrics come from results.json alone
    assert not (run_dir / "trajectory.png").exists() and not (run_dir / "reliability.png").exists()
    report = written[0].read_text(encoding="utf-8")
    assert "_Skipped: journal.jsonl is missing" in report
    assert "_Skipped: no test-split samples" in report
    assert "best_prompts.json is missing" in report
    assert "original prompt for financial_phrasebank" not in report  # only best target prompts shown
    assert "best_target prompt for legalbench_hearsay" in report
    assert "pretrained=<checkpoint>" in report
    assert "--tasks legalbench_hearsay__tp_best" in report
    assert "_No exported tasks found._" in report
    assert "- config.json not found" in report


def test_write_run_report_empty_journal_skips_only_trajectory(results_root: Path) -> None:
    run_dir = results_root / "runs" / "run-a"
    (run_dir / "journal.jsonl").write_text("", encoding="utf-8")
    written = write_run_report(run_dir)
    assert [p.name for p in written] == ["report.md", "reliability.png", "metrics.png"]
    assert "_Skipped: journal.jsonl is missing or has no scored" in written[0].read_text(encoding="utf-8")


def test_write_run_report_without_results_raises_run_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "empty"
    run_dir.mkdir(parents=True)
    with pytest.raises(RunError, match=r"results\.json: cannot read: .*cannot write the run report"):
        write_run_report(run_dir)
    (run_dir / "results.json").write_text('{"tp": {}}', encoding="utf-8")
    with pytest.raises(RunError, match=r'missing "tp\.evaluations" list'):
        write_run_report(run_dir)


def test_trajectory_series_is_running_max_per_stage_and_task() -> None:
    rows = [
        {"stage": "source", "task": "a+b", "step": 1, "metrics": {"composite": 0.2}},
        {"stage": "source", "task": "a+b", "step": 0, "metrics": {"composite": 0.3}},
        {"stage": "source", "task": "a+b", "step": 1, "metrics": {"composite": 0.25}},
        {"stage": "source", "task": "a+b", "step": 2, "metrics": {"composite": 0.5}},
        {"stage": "target", "task": "t", "step": 0, "metrics": {"composite": None}},
        {"stage": "target", "task": "t", "step": 1, "metrics": {"composite": 0.4}},
        {"stage": "select", "task": "t", "step": 0, "metrics": {"composite": 0.9}},
        {"stage": "final", "task": "t", "step": 0, "metrics": {"composite": 0.9}},
    ]
    assert trajectory_series(rows) == {
        ("source", "a+b"): [(0, 0.3), (1, 0.3), (2, 0.5)],
        ("target", "t"): [(1, 0.4)],
    }


def test_reliability_bins_mean_confidence_and_accuracy() -> None:
    points = reliability_bins([0.05, 0.15, 0.91, 0.99, 1.0], [False, True, True, False, True])
    assert [(round(c, 4), a, n) for c, a, n in points] == [
        (0.05, 0.0, 1),
        (0.15, 1.0, 1),
        (round((0.91 + 0.99 + 1.0) / 3, 4), 2 / 3, 3),
    ]
    with pytest.raises(ValueError, match="confidence has 2 values but correct has 1"):
        reliability_bins([0.1, 0.2], [True])


def test_builtin_reporters_register_and_write(results_root: Path) -> None:
    registry: Registry[ReporterDef] = Registry("reporter", ReporterDef)
    tp_register_reporters(registry)
    assert registry.names() == ["plots", "markdown-report", "leaderboard"]
    assert all(registry.get(n).description for n in registry.names())
    run_dir = results_root / "runs" / "run-a"
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    plots = registry.get("plots").write(run_dir, results, results_root=results_root)
    assert plots and all(p.parent == run_dir and p.read_bytes().startswith(PNG_MAGIC) for p in plots)
    report_paths = registry.get("markdown-report").write(run_dir, results, results_root=results_root)
    assert report_paths == [run_dir / "report.md"] and report_paths[0].is_file()  # links the plots, draws none
    report = report_paths[0].read_text(encoding="utf-8")
    assert all(f"]({p.name})" in report for p in plots)
    board = registry.get("leaderboard").write(run_dir, results, results_root=results_root)
    assert board == [results_root / "LEADERBOARD.md"]
    assert "## financial_phrasebank" in board[0].read_text(encoding="utf-8")
