"""The command line: help, task listing, and broken specs failing with one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tp_harness.entrypoints.cli import main

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "task_specs" / "financial_phrasebank.yaml").read_text()
DATA = str(REPO / "task_specs" / "data" / "financial_phrasebank" / "Sentences_AllAgree.txt")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: "\n".join(line for line in t.splitlines() if not line.lstrip().startswith("instruction:")),
         "tp.instruction"),
        (lambda t: t.replace("splits: {seed: 1234, optimize: 64", "splits: {seed: 1234, optimize: many"),
         "tp.splits.optimize"),
        (lambda t: t.replace(DATA, DATA + ".missing").replace(
            "data/financial_phrasebank/Sentences_AllAgree.txt", "data/financial_phrasebank/missing.txt"),
         "tp.data.files[0]"),
    ],
    ids=["missing-field", "wrong-type", "missing-data-file"],
)
def test_broken_spec_gives_one_line_with_file_and_field_and_exit_2(tmp_path, capsys, edit, field):
    text = edit(GOOD.replace("data/financial_phrasebank/Sentences_AllAgree.txt", DATA))
    d = tmp_path / "specs"
    d.mkdir()
    (d / "broken_fpb.yaml").write_text(text.replace("task: financial_phrasebank", "task: broken_fpb"))
    code = main(["evaluate", "--task", "broken_fpb", "--specs", str(d)])
    assert code == 2
    line = _error_line(capsys)
    assert str(d / "broken_fpb.yaml") in line and field in line


def test_unknown_task_names_close_matches(capsys):
    assert main(["evaluate", "--task", "financial_phrasebak"]) == 2
    line = _error_line(capsys)
    assert "unknown task 'financial_phrasebak'" in line and "did you mean financial_phrasebank" in line


def test_tasks_lists_shipped_specs(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("logiqa", "mmlu_general", "medqa_usmle", "medmcqa", "financial_phrasebank", "legalbench_hearsay"):
        assert name in out
    assert "non-commercial" in out


def test_plugins_lists_builtins_of_every_kind(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind, name in [("data_format", "jsonl"), ("metric", "ece"), ("backend", "embedded"), ("optimizer", "transfer"),
                       ("reporter", "leaderboard")]:
        assert any([c.strip() for c in line.split("|")[1:3]] == [kind, name] for line in out.splitlines()
                   if line.startswith("|")), (kind, name)


def test_python_dash_m_help_is_fast_and_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "tp_harness", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for cmd in ("optimize", "evaluate", "sweep", "leaderboard", "tasks", "models", "plugins"):
        assert cmd in proc.stdout


def test_vllm_without_cuda_is_one_clear_message(capsys):
    code = main(["evaluate", "--task", "financial_phrasebank", "--model", "vllm", "--model-args", "pretrained=x",
                 "--limit", "2"])
    assert code == 1
    line = capsys.readouterr().err.strip().splitlines()
    assert line[0].startswith("tp-harness: error: backend 'vllm':")
    assert "not installed" in line[0] or "no CUDA" in line[0]
    assert "Traceback" not in "\n".join(line)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--selection-alpha", "0.7", "expected a number in (0, 0.5), got 0.7"),
    ("--selection-alpha", "x", "expected a number in (0, 0.5), got 'x'"),
    ("--reference-share", "1.5", "expected a number in [0, 1], got 1.5"),
])
def test_number_flags_say_the_range(flag, value, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["optimize", flag, value])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_malformed_optimizer_option_is_one_error_line_with_an_example(capsys):
    assert main(["optimize", "--optimizer-option", "foo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tp-harness: error: --optimizer-option: 'foo' is not one key=value pair (e.g. rewrites=2)"]
