"""The pytest plugin on real pytest sessions (``pytester``, in subprocesses) with the real embedded model.

One module-scoped session runs a tiny CommonsenseQA spec with a passing, a failing, a not-applicable
and a regression gate, the documented example tests, ``--tp-optimize`` and a ``tp_gpu`` test, and is
checked for outcomes, the failure report, JUnit properties, ``$GITHUB_STEP_SUMMARY`` and a single model
load. Collection errors and the inactive plugin need no model. The repo's own shipped specs are gated
once with ``--tp-limit 8`` (slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSQA = REPO / "task_specs" / "data" / "commonsenseqa" / "dev_rand_split.jsonl"

TINY_SPEC = """\
task: tiny_csqa
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nA. {{choices.text[0]}}\\nB. {{choices.text[1]}}\\nC. {{choices.text[2]}}\\nD. {{choices.text[3]}}\\nE. {{choices.text[4]}}\\nAnswer:"
doc_to_choice: "{{choices.text}}"
doc_to_target: "{{choices.label.index(answerKey)}}"
target_delimiter: " "
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
tp:
  domain: general
  role: both
  description: Commonsense questions about everyday concepts, five options.
  instruction: "Answer the following commonsense question by choosing the most sensible option."
  data: {format: jsonl, files: [data/tiny.jsonl]}
  splits: {seed: 3, optimize: 8, validation: 8, test: 8}
  gates: [%s]
"""
# acc >= 0.1: without the chat template (the multiple_choice default) the 135M scorer gets 1 of these 8 docs right
GATES = '"acc >= 0.1", "acc >= 0.95", "ifr >= 0.5", "composite >= original - 1.0"'

MODEL_ARGS = ["--tp-model=embedded:smollm2-135m", "-p", "no:cacheprovider"]


def _write_tiny(root: Path, gates: str = GATES, name: str = "tiny_csqa.yaml") -> Path:
    specs = root / "task_specs"
    (specs / "data").mkdir(parents=True, exist_ok=True)
    lines = CSQA.read_text(encoding="utf-8").splitlines()[:30]
    (specs / "data" / "tiny.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = specs / name
    spec.write_text(TINY_SPEC % gates, encoding="utf-8")
    return spec


@pytest.mark.slow
def test_real_session_gates_example_fixtures_reports_and_one_model_load(pytester, monkeypatch):
    """One real pytest session on the embedded model: a tiny spec's gates, the documented example tests
    (``tp_evaluate``, ``tp_optimize``), ``--tp-optimize``, a ``tp_gpu`` test, JUnit XML, the step summary."""
    pt = pytester
    _write_tiny(pt.path)
    pt.makeconftest("""
        from pathlib import Path

        def pytest_sessionfinish(session):
            from tp_harness.backends import hf
            Path("loads.txt").write_text(str(hf.LOAD_COUNT["hflm"]))
        """)
    example = (REPO / "docs" / "examples" / "test_prompt_quality.py").read_text(encoding="utf-8")
    pt.makepyfile(test_example=example.replace('"commonsenseqa"', '"tiny_csqa"'))
    pt.makepyfile(test_gpu="""
        import pytest

        @pytest.mark.tp_gpu
        def test_needs_cuda():
            raise AssertionError("must be skipped without CUDA")
        """)
    summary = pt.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pt.runpytest_subprocess(*MODEL_ARGS, "--tp-limit", "8", "--tp-optimize", "-rfs",
                                     "--junitxml", str(pt.path / "junit.xml"), timeout=900)
    out = result.stdout.str()

    # outcomes: 4 gates -> 3 absolute x (original, best) + 1 regression x best = 7 items (3 pass, 2 fail,
    # 2 skip: ifr does not apply to multiple_choice); 4 example tests pass; the tp_gpu test is skipped
    result.assert_outcomes(passed=7, failed=2, skipped=3)
    assert "FAILED task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.95[original]" in out
    assert "FAILED task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.95[best]" in out
    assert "ifr does not apply to multiple_choice scoring (tiny_csqa)" in out
    assert "tp_gpu: CUDA is not available" in out

    # the failure report: metric, value, threshold, n, worst samples with prompt, response, parsed answer, gold
    report = out[out.index("gate failed: acc >= 0.95   [tiny_csqa, original prompt"):]
    assert "acc = 0." in report and "threshold >= 0.9500" in report and "n = 8 test docs" in report
    assert "worst 3 samples" in report
    assert "parsed answer" in report and "gold" in report and "prompt:" in report and "response:" in report
    assert "Answer the following commonsense question" in report  # the instruction inside the rendered prompt

    # one model load for the whole session; summary in the terminal and in $GITHUB_STEP_SUMMARY
    assert (pt.path / "loads.txt").read_text() in ("0", "1")  # weights load once, or never when all is cached
    assert "tp-harness gates (embedded:smollm2-135m)" in out
    assert "3 gates passed, 2 failed, 2 skipped; scorer LLM loaded 1 time(s)" in out
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("### tp-harness gates: embedded:smollm2-135m")
    assert "| tiny_csqa" in text and "acc >= 0.95" in text and "failed" in text

    # JUnit XML properties carry the metric values
    junit = ET.parse(pt.path / "junit.xml").getroot()
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in junit.iter("testcase")}
    props = cases["acc>=0.1[original]"]
    assert props["tp_task"] == "tiny_csqa" and props["tp_n"] == "8" and props["tp_threshold"] == "0.1"
    assert 0.0 <= float(props["tp_acc"]) <= 1.0 and 0.0 <= float(props["tp_ece"]) <= 1.0

    # --tp-optimize stored a run under the results dir and the [best] items used its prompt
    assert sorted((pt.path / "results" / "runs").glob("*/results.json"))
    assert cases["acc>=0.1[best]"]["tp_prompt_origin"].startswith("--tp-optimize run ")


def test_malformed_gate_is_a_collection_error_naming_file_and_gate(pytester):
    spec = _write_tiny(pytester.path, gates='"acc => 0.3"', name="broken.yaml")
    result = pytester.runpytest_subprocess(*MODEL_ARGS, "--co")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "ERROR collecting task_specs/broken.yaml" in out
    assert f"{spec}:" in out and "tp.gates[0]" in out and "cannot parse gate 'acc => 0.3'" in out


def test_unknown_metric_in_gate_names_the_known_ones(pytester):
    _write_tiny(pytester.path, gates='"accuracy >= 0.3"')
    result = pytester.runpytest_subprocess(*MODEL_ARGS, "--co")
    assert "names unknown metric 'accuracy'; known: acc, acc_norm, auroc, composite, ece, ifr, pr_n, pr_p" in result.stdout.str()


def test_collection_ids_filters_and_inactive_plugin(pytester):
    _write_tiny(pytester.path)
    result = pytester.runpytest_subprocess(*MODEL_ARGS, "--co", "-q")
    ids = [line for line in result.stdout.lines if "::" in line]
    assert ids == [
        "task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.1[original]",
        "task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.1[best]",
        "task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.95[original]",
        "task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.95[best]",
        "task_specs/tiny_csqa.yaml::tiny_csqa::ifr>=0.5[original]",
        "task_specs/tiny_csqa.yaml::tiny_csqa::ifr>=0.5[best]",
        "task_specs/tiny_csqa.yaml::tiny_csqa::composite>=original-1[best]",
    ]
    assert "no tests" in pytester.runpytest_subprocess(*MODEL_ARGS, "--co", "--tp-tasks", "other*").stdout.str()
    # without --tp-model the plugin collects nothing from specs
    assert "no tests" in pytester.runpytest_subprocess("--co", "-p", "no:cacheprovider").stdout.str()


def test_bad_option_value_is_a_usage_error(pytester):
    result = pytester.runpytest_subprocess(*MODEL_ARGS, "--tp-limit", "many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--tp-limit: expected a whole number of docs, got 'many'" in result.stderr.str()


@pytest.mark.slow
def test_repo_gates_every_shipped_spec_with_tp_limit_8():
    """The README's CI command on this repo: every shipped spec's gates are collected, run and summarized."""
    from tp_harness.runs.runner import spec_index
    from tp_harness.spec.loader import load_spec

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TP_HARNESS_PLUGINS", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--tp-model=embedded:smollm2-135m", "--tp-limit", "8", "-m", "tp",
         "-p", "no:cacheprovider", "-q", "-o", "addopts="],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    out = proc.stdout
    assert proc.returncode in (0, 1), out[-3000:] + proc.stderr[-3000:]  # 1: some gate failed, reported
    assert "tp-harness gates (embedded:smollm2-135m)" in out and "scorer LLM loaded 1 time(s)" in out
    summary = out[out.index("tp-harness gates (embedded:smollm2-135m)"):]
    for name, path in spec_index().items():
        for gate in load_spec(path).tp.gates:
            assert f"{name}" in summary and gate in summary, (name, gate)
    assert " error" not in out.splitlines()[-1]


def test_vllm_gate_items_are_tp_gpu_and_skip_cleanly_without_cuda(pytester):
    _write_tiny(pytester.path)
    result = pytester.runpytest_subprocess("--tp-model=vllm", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=7)
    assert "tp_gpu: CUDA is not available on this machine" in result.stdout.str()
    assert "7 gates" not in result.stdout.str()  # nothing evaluated, no model loaded
    selected = pytester.runpytest_subprocess("--tp-model=vllm", "-p", "no:cacheprovider", "-m", "tp_gpu", "--co", "-q")
    assert "7/7 tests collected" in selected.stdout.str() or "7 tests collected" in selected.stdout.str()


def test_repo_command_collects_shipped_spec_gates_next_to_the_tests():
    """`pytest --tp-model=embedded:smollm2-135m --tp-limit 8` at the repo root collects tests/ and task_specs/."""
    from tp_harness.runs.runner import spec_index

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--tp-model=embedded:smollm2-135m", "--tp-limit", "8", "--co", "-q",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = proc.stdout.splitlines()
    assert any(i.startswith("tests/spec/test_gates.py::") for i in ids)
    for name, path in spec_index().items():
        prefix = f"{path.relative_to(REPO).as_posix()}::{name}::"
        assert any(i.startswith(prefix) and i.endswith("[best]") for i in ids), name


def test_stored_best_is_the_newest_run_by_date_for_the_same_model(tmp_path):
    """`[best]` reads the newest results.json by its lm-eval ``date``, not by run-id order, for the same model."""
    import json

    from tp_harness.entrypoints.pytest_plugin import TpSession

    def store(run_id: str, date: float, prompt: str, model: str = "embedded:smollm2-135m") -> None:
        run = tmp_path / "runs" / run_id
        run.mkdir(parents=True)
        evaluations = [{"task": "tiny_csqa", "split": "test", "prompt_kind": "best_target", "prompt": prompt,
                        "metrics": {}, "n": 8}]
        data = {"results": {}, "date": date, "config": {"model_args": ""},
                "tp": {"run_id": run_id, "model": model, "mode": "two_stage", "targets": ["tiny_csqa"],
                       "evaluations": evaluations}}
        (run / "results.json").write_text(json.dumps(data), encoding="utf-8")

    store("zzz-last-by-name", 100.0, "older prompt")
    store("aaa-first-by-name", 300.0, "newest prompt")
    store("zzzz-other-model", 400.0, "another model's prompt", model="hf")
    session = TpSession(model="embedded:smollm2-135m", model_args="", reference_model=None, tasks=None,
                        spec_dirs=[], limit=None, budget="smoke", results_dir=tmp_path, optimize=False)
    best = session._stored_best("tiny_csqa")
    assert best is not None and best.text == "newest prompt" and "aaa-first-by-name" in best.origin


def test_bad_chat_template_option_is_a_usage_error(pytester):
    result = pytester.runpytest_subprocess(*MODEL_ARGS, "--tp-apply-chat-template", "yes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--tp-apply-chat-template: expected auto, on or off, got 'yes'" in result.stderr.str()


# ----------------------------------------------------------------------------------------------
# outside this repository: pytester's directory has no task_specs/ and no tp_specs ini key


def test_without_task_specs_the_shipped_specs_are_collected(pytester):
    from tp_harness.runs.runner import spec_index

    result = pytester.runpytest_subprocess(*MODEL_ARGS, "--tp-limit", "8", "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]
    ids = [line for line in result.stdout.lines if "::" in line]
    for name, path in spec_index().items():
        assert any(i.endswith(f"task_specs/{path.name}::{name}::" + i.split("::")[-1]) for i in ids), name
    assert len({i.split("::")[0] for i in ids}) == len(spec_index()) == 18


def test_a_directory_argument_collects_the_specs_in_it(pytester):
    _write_tiny(pytester.path)
    (pytester.path / "task_specs").rename(pytester.path / "gates")
    result = pytester.runpytest_subprocess("gates", *MODEL_ARGS, "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    ids = [line for line in result.stdout.lines if "::" in line]
    assert len(ids) == 7 and all(i.startswith("gates/tiny_csqa.yaml::tiny_csqa::") for i in ids), ids
    single = pytester.runpytest_subprocess("gates/tiny_csqa.yaml", *MODEL_ARGS, "--co", "-q")
    assert "7 tests collected" in single.stdout.str()


def test_node_ids_printed_by_verbose_runs_select_their_item(pytester):
    """``-v`` prints ids with the threshold's dot intact; pasted back, each selects exactly its item. The ``vllm``
    scorer skips every gate without CUDA, so no model loads."""
    _write_tiny(pytester.path)
    result = pytester.runpytest_subprocess("--tp-model=vllm", "-p", "no:cacheprovider", "-v")
    printed = [line.split(" SKIPPED")[0] for line in result.stdout.lines if " SKIPPED" in line]
    assert "task_specs/tiny_csqa.yaml::tiny_csqa::acc>=0.1[original]" in printed, result.stdout.lines
    assert len(printed) == 7
    for node_id in (printed[0], "task_specs/tiny_csqa.yaml::tiny_csqa::composite>=original-1[best]"):
        again = pytester.runpytest_subprocess(node_id, "--tp-model=vllm", "-p", "no:cacheprovider", "--co", "-q")
        assert [line for line in again.stdout.lines if "::" in line] == [node_id], again.stdout.str()


def test_shipped_spec_ids_round_trip_from_another_directory(pytester):
    listed = pytester.runpytest_subprocess("--tp-model=vllm", "--tp-tasks", "pubmedqa", "-p", "no:cacheprovider", "-v")
    printed = [line.split(" SKIPPED")[0] for line in listed.stdout.lines if " SKIPPED" in line]
    assert printed and all("task_specs/pubmedqa.yaml::pubmedqa::" in p for p in printed), listed.stdout.str()
    again = pytester.runpytest_subprocess(printed[0], "--tp-model=vllm", "-p", "no:cacheprovider", "--co", "-q")
    assert again.ret == pytest.ExitCode.OK and "1 test collected" in again.stdout.str(), again.stdout.str()


GC_PARSING_TEST = '''
import ast


class ParsesWhenCollected:
    def __del__(self):  # as asyncio's failed futures do: their __del__ logs a traceback, which ast.parses
        ast.parse("x = [1, 2, (3, 4)]\\n")


def test_fails_with_finalizers_pending():
    for _ in range(5000):
        obj = ParsesWhenCollected()
        obj.cycle = obj  # garbage the collector reclaims later, perhaps inside pytest's own ast.parse
    assert 1 == 2
'''


def test_a_failure_renders_even_when_finalizers_parse_python(pytester):
    """CPython 3.11's AST recursion counter is shared: a finalizer that parses while pytest parses the failing
    test's source crashed pytest (INTERNALERROR, SystemError). With the plugin the failure is reported."""
    pytester.makepyfile(test_gc=GC_PARSING_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:] + result.stderr.str()[-3000:]
    result.assert_outcomes(failed=1)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([">       assert 1 == 2", "E       assert 1 == 2"])
    # Without the plugin (-p no:tp_harness) this file crashed pytest 9.0.3 on CPython 3.11.7 with that SystemError;
    # whether it does depends on when the collector runs inside pytest's own parsing, so it is not asserted here.
