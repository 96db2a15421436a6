"""Integration: the real two-stage pipeline on the real embedded model and real shipped data.

One ``--budget smoke`` run (module fixture) is checked for its run directory, value ranges, the
exported lm-eval tasks (run by stock ``lm-eval``), the leaderboard; a second run is killed with
SIGKILL mid-way and resumed, and must end with the same result and a clean journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tp_harness.entrypoints.cli import main

pytestmark = pytest.mark.slow

SMOKE = ["optimize", "--budget", "smoke", "--seed", "7"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    code = main([*SMOKE, "--results-dir", str(results), "--run-id", "smoke"])
    assert code == 0
    return results, results / "runs" / "smoke"


def test_every_file_of_a_run_follows_the_umask(smoke_run):
    """results.json, report.md, plots, exports, journal, samples: the umask's mode (0644 under 022), not 0600."""
    import os

    results, run = smoke_run
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in results.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".json", ".jsonl", ".md", ".png", ".yaml", ".py"}
    wrong = {str(p.relative_to(results)): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != 0o666 & ~mask}
    assert not wrong, wrong


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def _in_unit(value) -> bool:
    return value is None or (isinstance(value, float | int) and 0.0 <= value <= 1.0)


def test_run_directory_has_every_file_with_real_content(smoke_run):
    results, run = smoke_run
    for name in ("config.json", "journal.jsonl", "best_prompts.json", "results.json", "report.md",
                 "trajectory.png", "reliability.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    tasks = sorted(p.name for p in (run / "lm_eval_tasks").glob("*.yaml"))
    assert tasks == ["financial_phrasebank__tp_best.yaml", "financial_phrasebank__tp_original.yaml"]
    samples = sorted(p.name for p in (run / "samples").glob("*.jsonl"))
    assert samples == [f"financial_phrasebank.test.{k}.jsonl" for k in ("best_source", "best_target", "original")]
    config = json.loads((run / "config.json").read_text())
    assert config["sources"] == ["mmlu_general", "commonsenseqa"] and config["targets"] == ["financial_phrasebank"]
    assert config["seed"] == 7 and config["budget"] == "smoke"
    assert Path(config["scorer_checkpoint"], "model.safetensors").is_file()
    leaderboard = (results / "LEADERBOARD.md").read_text()
    assert "## financial_phrasebank" in leaderboard and "best target" in leaderboard.lower().replace("_", " ")


def test_journal_rows_cover_both_stages_with_proposers_and_metric_ranges(smoke_run):
    _, run = smoke_run
    rows = _rows(run)
    stages = Counter(r["stage"] for r in rows)
    assert stages["source"] >= 3 and stages["target"] >= 3 and stages["final"] >= 1 and stages["select"] >= 1
    proposers = {r["proposer"] for r in rows}
    assert {"original", "seed"} <= proposers and proposers & {"reference", "evolution"}
    for r in rows:
        if r["stage"] == "rejected":  # the anti-overfit guard's rejections are not scored
            continue
        assert set(r["metrics"]) >= {"acc", "ece", "auroc", "pr_p", "pr_n", "composite"}
        assert all(_in_unit(v) for v in r["metrics"].values()), r
        assert r["n"] > 0 and r["seconds"] >= 0 and r["tokens"] > 0
    source_rows = [r for r in rows if r["stage"] == "source"]
    assert all(set(r["per_task"]) == {"mmlu_general", "commonsenseqa"} for r in source_rows)
    # racing: step 1's candidates on a 3-doc minibatch, the best one promoted to the full 6-doc split
    partial = [r for r in rows if r.get("eval") == "partial"]
    assert partial and all(r["step"] == 1 and r["n"] == 3 * (2 if r["stage"] == "source" else 1) for r in partial)
    assert all(r["n"] == 6 * (2 if r["stage"] == "source" else 1)
               for r in rows if r.get("eval") == "full" and r["stage"] in ("source", "target"))
    keys = Counter((r["stage"], r["task"], r["step"], r.get("eval"), r["prompt_sha"]) for r in rows)
    assert max(keys.values()) == 1


def test_no_scored_proposal_copies_the_tasks_data_and_every_rejection_does(smoke_run):
    """The anti-overfit guard on the real path: the run's own splits (smoke caps), the real proposals."""
    from tp_harness.evaluation.evaluator import prepare_task
    from tp_harness.optimizer.budget import get_budget
    from tp_harness.optimizer.overfit import task_spans
    from tp_harness.plugin.manager import build_registries
    from tp_harness.runs.runner import load_specs

    _, run = smoke_run
    registries = build_registries()
    caps = get_budget("smoke").caps()
    spans = {}
    for group in (["mmlu_general", "commonsenseqa"], ["financial_phrasebank"]):
        preps = [prepare_task(spec, data_formats=registries.data_formats, caps=caps)
                 for spec in load_specs(group, [], registries)]
        spans["+".join(group)] = task_spans([p.splits for p in preps])
    rows = _rows(run)
    proposals = [r for r in rows if r["stage"] in ("source", "target") and r["proposer"] in ("reference", "evolution")]
    assert proposals
    assert all(spans[r["task"]].copied_span(r["prompt"]) is None for r in proposals)
    rejected = [r for r in rows if r["stage"] == "rejected"]
    assert all(r["reason"] == spans[r["task"]].reason(r["prompt"]) for r in rejected)
    tp = json.loads((run / "results.json").read_text())["tp"]
    assert [(r["task"], r["step"], r["prompt"]) for r in tp["rejected"]] == \
        [(r["task"], r["step"], r["prompt"]) for r in rejected]
    assert "## Rejected proposals" in (run / "report.md").read_text()


def test_results_json_has_lm_eval_schema_and_three_test_evaluations(smoke_run):
    _, run = smoke_run
    results = json.loads((run / "results.json").read_text())
    assert {"results", "n-samples", "config", "versions", "date", "tp"} <= set(results)
    evals = {e["prompt_kind"]: e for e in results["tp"]["evaluations"]}
    assert set(evals) == {"original", "best_source", "best_target"}
    for e in evals.values():
        assert e["split"] == "test" and e["n"] == 12 and e["output_type"] == "multiple_choice"
        assert all(_in_unit(v) for v in e["metrics"].values())
        assert e["metrics"]["ifr"] is None  # IFR does not apply to loglikelihood scoring
    assert results["results"]["financial_phrasebank__tp_best"]["acc,none"] == evals["best_target"]["metrics"]["acc"]
    best = json.loads((run / "best_prompts.json").read_text())
    assert best["target"]["financial_phrasebank"]["prompt"] == evals["best_target"]["prompt"]
    assert 1 <= len(best["source"]) <= 2
    # the guarded final choice (issue 18): decided on validation with a paired-bootstrap bound, recorded either way
    guard = results["tp"]["selection"]["financial_phrasebank"]
    assert guard["alpha"] == 0.05 and guard["n"] > 0 and guard["reason"]
    assert guard["kept_original"] == (evals["best_target"]["prompt"] == evals["original"]["prompt"])
    if guard["candidate"] != evals["original"]["prompt"] and guard["n"] >= 20:
        assert guard["lower_bound"] is not None and (guard["lower_bound"] > 0) == (not guard["kept_original"])
    elif guard["n"] < 20:  # smoke validates on a few docs: no bound is trusted, the original ships
        assert guard["lower_bound"] is None and guard["kept_original"]
    assert best["target"]["financial_phrasebank"]["kept_original"] == guard["kept_original"]
    report = (run / "report.md").read_text()
    assert "## Final choice" in report and ("original kept" in report) == guard["kept_original"]


def test_exported_best_task_runs_in_stock_lm_eval_and_matches_acc(smoke_run, tmp_path):
    _, run = smoke_run
    config = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    out = tmp_path / "lm_eval_out"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={config['scorer_checkpoint']},dtype=float32", "--device", "cpu",
         "--include_path", str(run / "lm_eval_tasks"),
         "--tasks", "financial_phrasebank__tp_best", "financial_phrasebank__tp_original",
         *(["--apply_chat_template"] if config["chat_template"]["financial_phrasebank"] else []),
         "--batch_size", "16", "--output_path", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stock = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    for name in ("financial_phrasebank__tp_best", "financial_phrasebank__tp_original"):
        assert stock[name]["acc,none"] == pytest.approx(results["results"][name]["acc,none"], abs=0.01)


def test_kill_9_then_resume_finishes_with_no_duplicated_or_lost_rows(smoke_run, tmp_path):
    _, uninterrupted = smoke_run
    results = tmp_path / "results"
    run = results / "runs" / "killed"
    # --no-cache: a warm cache (the smoke_run fixture) would finish the run before it can be killed
    cmd = [sys.executable, "-m", "tp_harness", *SMOKE, "--no-cache", "--results-dir", str(results), "--run-id", "killed"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if (run / "journal.jsonl").is_file() and len(_rows(run)) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_rows = _rows(run)
    assert 4 <= len(killed_rows) and not (run / "results.json").exists()

    assert main(["optimize", "--resume", str(run)]) == 0
    rows = _rows(run)
    assert rows[: len(killed_rows)] == killed_rows  # append-only: nothing rewritten
    keys = Counter((r["stage"], r["task"], r["step"], r.get("eval"), r["prompt_sha"]) for r in rows)
    assert max(keys.values()) == 1  # no duplicated candidate rows
    for (stage, task, step, kind), count in Counter((r["stage"], r["task"], r["step"], r.get("eval")) for r in rows
                                                    if r["stage"] in ("source", "target")).items():
        expected = {r["num_candidates"] for r in rows
                    if (r["stage"], r["task"], r["step"], r.get("eval")) == (stage, task, step, kind)}
        assert expected == {count}, (stage, task, step, kind)  # no lost candidate rows
    reference = {(r["stage"], r["task"], r["step"], r.get("eval"), r["prompt_sha"]) for r in _rows(uninterrupted)}
    assert set(keys) == reference  # the same candidates as an uninterrupted run of the same seed
    same = json.loads((uninterrupted / "best_prompts.json").read_text())
    resumed = json.loads((run / "best_prompts.json").read_text())
    assert resumed["target"]["financial_phrasebank"]["prompt"] == same["target"]["financial_phrasebank"]["prompt"]


def test_model_loads_once_per_process(smoke_run, registries):
    from tp_harness.backends import hf
    from tp_harness.runs.runner import build_backend

    first = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16")
    before = hf.LOAD_COUNT["hflm"]
    second = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16")
    assert second.lm is first.lm and hf.LOAD_COUNT["hflm"] == before  # the run's model is reused, not reloaded


def test_a_warm_rerun_imports_no_torch_and_loads_no_weights_and_reproduces_the_run(smoke_run, tmp_path):
    """Issue 15, item 3: the smoke run's responses are all in the cache, so the same run in a fresh process never
    reaches the model: torch is not imported, the weights are not loaded, and every score is the same."""
    results, run = smoke_run
    cmd = [sys.executable, "-X", "importtime", "-m", "tp_harness", *SMOKE, "--results-dir", str(tmp_path),
           "--run-id", "warm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "tp_harness" in imported and "lm_eval" in imported  # the import log is complete
    assert not {"torch", "sklearn", "scipy"} & imported
    warm = tmp_path / "runs" / "warm"
    calls = json.loads((warm / "results.json").read_text())["tp"]["calls"]
    assert calls["scorer_computed"] == 0 and calls["scorer_requests"] > 0
    assert [(r["stage"], r.get("prompt_sha"), r.get("metrics")) for r in _rows(warm)] == \
        [(r["stage"], r.get("prompt_sha"), r.get("metrics")) for r in _rows(run)]
