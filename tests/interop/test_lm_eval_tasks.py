"""Every shipped spec is a stock lm-eval task, and a new task needs a YAML file and its data, no code.

The specs load their rows through ``custom_dataset: !function tp_harness.lm_eval_dataset.load`` and keep
the ``tp`` block under ``metadata``; these tests check that stock lm-eval builds, validates and runs them
on the embedded checkpoint, on exactly the test docs tp-harness scores, and that a brand-new spec
written to a temporary directory is listed, evaluated and optimized through ``--specs`` and gated by
the pytest plugin through ``--tp-specs``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tp_harness.entrypoints.cli import main
from tp_harness.spec.loader import BUILTIN_SPEC_DIR, discover_specs, load_spec
from tp_harness.spec.schema import lm_eval_description

NAMES = sorted(discover_specs([BUILTIN_SPEC_DIR]))
LM_EVAL_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _task_manager(include_path: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path))


def test_stock_lm_eval_builds_every_spec_on_the_harness_test_split() -> None:
    """No model: lm-eval's TaskManager builds each spec; its test docs are the harness's, in order."""
    from tp_harness.evaluation.evaluator import prepare_task
    from tp_harness.plugin.manager import build_registries

    registries = build_registries()
    loaded = _task_manager(BUILTIN_SPEC_DIR).load(NAMES)["tasks"]
    assert sorted(loaded) == NAMES
    for name in NAMES:
        task = loaded[name]
        spec = load_spec(BUILTIN_SPEC_DIR / f"{name}.yaml")
        assert task.config.output_type == spec.output_type
        assert task.config.description == lm_eval_description(spec.tp.instruction)  # the original prompt
        harness = prepare_task(spec, data_formats=registries.data_formats).splits["test"]
        docs = [dict(doc) for doc in task.test_docs()]
        assert docs == harness, name
        assert [len(task.dataset[s]) for s in ("optimize", "validation", "test")] == [
            spec.tp.splits.optimize, spec.tp.splits.validation, spec.tp.splits.test,
        ]
        assert task.doc_to_text(docs[0]).strip()


def _metric(row: dict) -> float:
    """The task's one score in lm-eval's results row (``acc,none`` or ``exact_match,<filter>``)."""
    (value,) = [v for k, v in row.items() if k.split(",")[0] in ("acc", "exact_match") and "stderr" not in k]
    return value


@pytest.mark.slow
def test_lm_eval_validates_and_runs_every_spec_on_the_embedded_checkpoint(tmp_path: Path) -> None:
    """``lm-eval validate`` and one stock ``lm-eval run --limit 5`` over all specs (each in its default mode)."""
    from tp_harness.backends.embedded import ZOO, ensure_checkpoint

    checkpoint = ensure_checkpoint(ZOO["smollm2-135m"])
    tasks = ",".join(NAMES)
    validate = subprocess.run(
        [sys.executable, "-m", "lm_eval", "validate", "--include_path", str(BUILTIN_SPEC_DIR), "--tasks", tasks],
        capture_output=True, text=True, timeout=300, env=LM_EVAL_ENV,
    )
    assert validate.returncode == 0, validate.stdout[-2000:] + validate.stderr[-2000:]
    assert "All tasks found and valid" in validate.stdout

    out = tmp_path / "lm_eval_out"
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={checkpoint},dtype=float32", "--device", "cpu", "--include_path", str(BUILTIN_SPEC_DIR),
         "--tasks", tasks, "--limit", "5", "--batch_size", "8", "--output_path", str(out)],
        capture_output=True, text=True, timeout=2400, env=LM_EVAL_ENV,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert sorted(results["results"]) == NAMES
    for name in NAMES:
        assert 0.0 <= _metric(results["results"][name]) <= 1.0, name
        assert results["n-samples"][name]["effective"] == 5, name
        assert results["configs"][name]["metadata"]["config_source"] == str(BUILTIN_SPEC_DIR / f"{name}.yaml")


# ----------------------------------------------------------------------------------------------
# a brand-new task: YAML and data only

NEW_SPEC = """\
# A made-up task, written by a test: is the number even?
task: even_numbers
output_type: multiple_choice
custom_dataset: !function tp_harness.lm_eval_dataset.load
training_split: optimize
validation_split: validation
test_split: test
description: "Answer yes if the number is even and no if it is odd.\\n\\n"
doc_to_text: "Number: {{n}}\\nIs it even? Answer:"
doc_to_choice: ["no", "yes"]
doc_to_target: "{{['no', 'yes'].index(even)}}"
target_delimiter: " "
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
metadata:
  version: 1.0
  tp:
    domain: arithmetic
    role: both
    description: Decide whether a whole number is even.
    instruction: Answer yes if the number is even and no if it is odd.
    data: {format: jsonl, files: [data/numbers.jsonl]}
    splits: {seed: 3, optimize: 8, validation: 8, test: 12}
    modes:
      generate_until:
        doc_to_text: "Number: {{n}}\\nIs it even? Reply with exactly two lines:\\nAnswer: <yes or no>\\nConfidence: <0-100>%"
        doc_to_target: "{{even}}"
        generation_kwargs: {until: ["\\n\\n", "<|im_end|>"], max_gen_toks: 16, do_sample: false}
        answer_format: {parser: label_confidence, labels: ["yes", "no"]}
    gates: ["acc >= 0.1"]
    license: {name: CC0-1.0, flags: [synthetic]}
"""


def _write_new_task(directory: Path) -> Path:
    (directory / "data").mkdir(parents=True)
    rows = [{"n": n, "even": "yes" if n % 2 == 0 else "no"} for n in range(11, 51)]
    (directory / "data" / "numbers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = directory / "even_numbers.yaml"
    spec.write_text(NEW_SPEC, encoding="utf-8")
    return spec


@pytest.mark.slow
def test_a_new_task_is_listed_evaluated_and_optimized_with_no_code(tmp_path: Path, capsys) -> None:
    specs = tmp_path / "specs"
    _write_new_task(specs)

    assert main(["tasks", "--specs", str(specs)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "| even_numbers " in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["even_numbers", "arithmetic", "both", "multiple_choice,generate_until", "8/8/12", "CC0-1.0",
                         "synthetic"]

    assert main(["evaluate", "--specs", str(specs), "--task", "even_numbers", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "task even_numbers (multiple_choice), split test, n=4" in out

    results_dir = tmp_path / "results"
    assert main(["optimize", "--specs", str(specs), "--sources", "even_numbers", "--target", "even_numbers",
                 "--budget", "smoke", "--results-dir", str(results_dir), "--run-id", "new-task"]) == 0
    results = json.loads((results_dir / "runs" / "new-task" / "results.json").read_text())
    evaluated = {(e["task"], e["prompt_kind"]) for e in results["tp"]["evaluations"]}
    assert ("even_numbers", "original") in evaluated and len(evaluated) >= 2

    # stock lm-eval builds it too, from the same directory
    task = _task_manager(specs).load(["even_numbers"])["tasks"]["even_numbers"]
    assert len(task.test_docs()) == 12

    # and the pytest plugin gates it: the original prompt and the best prompt stored by the run above
    env = {**LM_EVAL_ENV, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--tp-model=embedded:smollm2-135m", "--tp-specs", str(specs),
         "--tp-results-dir", str(results_dir), "--tp-limit", "4", "-p", "no:cacheprovider", "-v", "-rA"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASSED specs/even_numbers.yaml::even_numbers::acc>=0.1[original]" in proc.stdout
    assert "PASSED specs/even_numbers.yaml::even_numbers::acc>=0.1[best]" in proc.stdout
    assert "2 gates passed, 0 failed, 0 skipped" in proc.stdout, proc.stdout[-3000:]
