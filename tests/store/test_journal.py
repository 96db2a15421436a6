"""Tests of tp_harness.store.journal: the run directory, the append-only journal, torn-line repair and atomic writes."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from tp_harness.errors import RunError
from tp_harness.store.journal import JOURNAL, RunDir, atomic_write_json, make_run_id, read_jsonl

ROWS = [
    {"stage": "source", "task": "medqa", "step": 0, "prompt_sha": "aaaa000000000000", "metrics": {"composite": 0.4}},
    {"stage": "source", "task": "medqa", "step": 1, "prompt_sha": "bbbb000000000000", "metrics": {"composite": 0.5}},
    {"stage": "target", "task": "pubmedqa", "step": 1, "prompt_sha": "aaaa000000000000", "metrics": {}},
]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path / "runs", "run-1", {"model": "tiny", "seed": 3})


def _strip_ts(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "ts"} for r in rows]


# ----------------------------------------------------------------------------------------------
# create / open


def test_create_makes_config_empty_journal_and_samples(run: RunDir, tmp_path: Path) -> None:
    assert run.path == tmp_path / "runs" / "run-1"
    assert run.run_id == "run-1"
    assert json.loads((run.path / "config.json").read_text()) == {"run_id": "run-1", "model": "tiny", "seed": 3}
    assert run.config() == {"run_id": "run-1", "model": "tiny", "seed": 3}
    assert (run.path / JOURNAL).read_text() == ""
    assert (run.path / "samples").is_dir()
    assert run.journal() == []


def test_create_refuses_an_existing_directory_and_names_resume(run: RunDir, tmp_path: Path) -> None:
    with pytest.raises(RunError) as info:
        RunDir.create(tmp_path / "runs", "run-1", {})
    assert str(info.value) == f"run directory {run.path} exists already; resume it with --resume {run.path}"


def test_open_refuses_a_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"is not a tp-harness run directory \(no config.json\)"):
        RunDir.open(tmp_path)


def test_config_that_is_not_json_is_a_run_error(run: RunDir) -> None:
    (run.path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match=r"config\.json: cannot read the run config"):
        run.config()


# ----------------------------------------------------------------------------------------------
# append / read back


def test_append_persists_each_row_with_a_timestamp_before_returning(run: RunDir) -> None:
    before = time.time()
    run.append(ROWS[0])
    lines = (run.path / JOURNAL).read_text().splitlines()  # read while the RunDir is still open
    assert len(lines) == 1
    stored = json.loads(lines[0])
    assert {k: v for k, v in stored.items() if k != "ts"} == ROWS[0]
    assert before - 0.01 <= stored["ts"] <= time.time() + 0.01
    assert "ts" not in ROWS[0], "append mutated the caller's row"


def test_rows_read_back_in_order_by_a_fresh_open(run: RunDir) -> None:
    for row in ROWS:
        run.append(row)
    again = RunDir.open(run.path).journal()
    assert _strip_ts(again) == ROWS
    assert again == run.journal()


def test_append_writes_nan_as_null(run: RunDir) -> None:
    run.append({"step": 0, "metrics": {"auroc": float("nan"), "acc": 0.5}})
    stored = RunDir.open(run.path).journal()[0]
    assert stored["metrics"] == {"auroc": None, "acc": 0.5}
    assert "NaN" not in (run.path / JOURNAL).read_text()


def test_find_matches_every_given_field(run: RunDir) -> None:
    for row in ROWS:
        run.append(row)
    assert _strip_ts(run.find(prompt_sha="aaaa000000000000")) == [ROWS[0], ROWS[2]]
    assert _strip_ts(run.find(stage="source", step=1)) == [ROWS[1]]
    assert run.find(stage="target", step=0) == []
    assert len(run.find()) == 3


# ----------------------------------------------------------------------------------------------
# damage


def test_torn_last_line_is_ignored_and_repaired(run: RunDir) -> None:
    path = run.path / JOURNAL
    good = "".join(json.dumps(r) + "\n" for r in ROWS[:2])
    path.write_text(good + '{"stage": "source", "step": 2, "prom')
    reopened = RunDir.open(run.path)
    assert reopened.journal() == ROWS[:2]
    assert path.read_text() == good, "the partial line was not cut off"
    reopened.append(ROWS[2])
    assert _strip_ts(RunDir.open(run.path).journal()) == ROWS
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_damaged_middle_line_raises_with_file_and_line(run: RunDir) -> None:
    path = run.path / JOURNAL
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(RunError) as info:
        RunDir.open(run.path).journal()
    assert str(info.value).startswith(f"{path}:2: not valid JSON (")
    assert str(info.value).endswith("the journal is damaged")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_complete_last_row_without_newline_is_the_same_in_memory_and_on_disk(run: RunDir) -> None:
    path = run.path / JOURNAL
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]))
    first = RunDir.open(run.path).journal()
    assert RunDir.open(run.path).journal() == first


# ----------------------------------------------------------------------------------------------
# atomic writes and run ids


def test_atomic_write_json_writes_nan_as_null_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.json"
    atomic_write_json(path, {"ece": float("nan"), "rows": [1.5, float("nan")], "nested": {"x": (math.nan,)}})
    assert json.loads(path.read_text()) == {"ece": None, "rows": [1.5, None], "nested": {"x": [None]}}
    assert "NaN" not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_atomic_write_json_replaces_and_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_run_dir_write_json(run: RunDir) -> None:
    path = run.write_json("best_prompts.json", {"best": "Think."})
    assert path == run.path / "best_prompts.json"
    assert json.loads(path.read_text()) == {"best": "Think."}


def test_make_run_id_is_filesystem_safe() -> None:
    now = time.mktime((2025, 2, 20, 13, 4, 5, 0, 0, -1))
    run_id = make_run_id("HuggingFaceTB/SmolLM2-135M-Instruct", ["medqa", "pubmed qa"], "full", now=now)
    assert run_id == "20250220-130405-HuggingFaceTB-SmolLM2-135M-Instruct-medqa-pubmed-qa-full"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", run_id)


def test_make_run_id_without_targets_and_with_long_names() -> None:
    now = time.mktime((2025, 2, 20, 13, 4, 5, 0, 0, -1))
    assert make_run_id("m", [], "source-only", now=now) == "20250220-130405-m-none-source-only"
    long_id = make_run_id("x" * 300, ["t/../../etc"], "full", now=now)
    assert len(long_id) <= 120
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", long_id) and "/" not in long_id


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """Atomic writes go through a 0600 temp file; the result has the mode ``open`` would give (0644 under 022)."""
    import os

    from tp_harness.files import atomic_write_text
    from tp_harness.reporting.plots import plot_metric_bars

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        run = RunDir.create(tmp_path / "runs", "r", {"seed": 1})
        run.append({"stage": "target", "step": 0})
        plot_metric_bars({"t": {"original": {"acc": 0.5, "ece": 0.2}, "best_target": {"acc": 0.6, "ece": 0.1}}},
                         tmp_path / "bars.png")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
    assert not [p for p in tmp_path.rglob(".*tmp")]  # no temp file left behind
