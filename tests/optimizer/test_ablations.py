"""The ablation modes and a separate reference LLM, on the real embedded model (``--budget smoke``)."""

from __future__ import annotations

import json

import pytest

from tp_harness.entrypoints.cli import main
from tp_harness.runs.runner import OptimizeSettings, prepare_run

pytestmark = pytest.mark.slow


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def _stages(run_dir):
    return {json.loads(line)["stage"] for line in (run_dir / "journal.jsonl").read_text().splitlines()}


def test_no_transfer_runs_stage_2_alone_from_the_original(tmp_path):
    assert main(["optimize", "--budget", "smoke", "--no-transfer", "--results-dir", str(tmp_path),
                 "--run-id", "nt"]) == 0
    run = tmp_path / "runs" / "nt"
    assert _stages(run) == {"target", "select", "guard", "final"}
    rows = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    assert "seed" not in {r["proposer"] for r in rows}  # nothing transferred
    kinds = {e["prompt_kind"] for e in _results(run)["tp"]["evaluations"]}
    assert kinds == {"original", "best_target"} and _results(run)["tp"]["mode"] == "no_transfer"


def test_source_only_uses_the_best_source_prompt_as_is(tmp_path):
    assert main(["optimize", "--budget", "smoke", "--source-only", "--results-dir", str(tmp_path),
                 "--run-id", "so"]) == 0
    run = tmp_path / "runs" / "so"
    assert _stages(run) == {"source", "guard", "final"}
    results = _results(run)
    kinds = {e["prompt_kind"]: e for e in results["tp"]["evaluations"]}
    assert set(kinds) == {"original", "best_source"}
    best = json.loads((run / "best_prompts.json").read_text())
    guard = results["tp"]["selection"]["financial_phrasebank"]
    assert guard["candidate"] == best["source"][0]["prompt"]  # stage 1's best prompt, used as is, is the candidate
    shipped = kinds["original"]["prompt"] if guard["kept_original"] else guard["candidate"]
    assert kinds["best_source"]["prompt"] == shipped  # the guard decides whether it replaces the original
    assert "financial_phrasebank__tp_best" in results["results"]  # the exported best is the shipped prompt


def test_reference_llm_can_differ_from_the_scorer(tmp_path, embedded_backend, registries):
    # the same weights in bfloat16 are a different model object; the same checkpoint and dtype would be
    # reused (one HFLM per model per process)
    settings = OptimizeSettings(reference_model="hf",
                                reference_model_args=f"pretrained={embedded_backend.checkpoint},dtype=bfloat16",
                                budget="smoke", results_dir=str(tmp_path), run_id="ref")
    ctx, projection = prepare_run(settings, registries)
    assert ctx.scorer.lm is embedded_backend.lm and ctx.reference.lm is not ctx.scorer.lm and ctx.reference.name == "hf"
    config = json.loads((tmp_path / "runs" / "ref" / "config.json").read_text())
    assert config["reference_model"] == "hf" and config["reference_identity"]["backend"] == "hf"
    assert config["reference_identity"]["dtype"] == "bfloat16" and config["scorer_identity"]["dtype"] == "float32"
    assert projection.reference_samples > 0 and projection.scorer_requests > 0


def test_equal_budget_no_transfer_matches_the_two_stage_search(tmp_path):
    """Issue 18 item 2: --no-transfer --equal-budget scores as many candidates as two-stage's stages 1 and 2, and
    scorer requests within 10% (the journal is the evidence, not the projection)."""
    assert main(["optimize", "--budget", "smoke", "--no-transfer", "--equal-budget", "--results-dir", str(tmp_path),
                 "--run-id", "eq"]) == 0
    assert main(["optimize", "--budget", "smoke", "--results-dir", str(tmp_path), "--run-id", "two"]) == 0
    eq, two = _results(tmp_path / "runs" / "eq")["tp"], _results(tmp_path / "runs" / "two")["tp"]
    record = eq["equal_budget"]
    assert eq["budget"] == two["budget"] == "smoke"  # one budget name: the leaderboard's ablation row pairs them
    assert record["no_transfer"]["candidates"] == record["two_stage"]["candidates"] == two["search"]["candidates"]
    assert eq["search"] == {**eq["search"], **record["no_transfer"]}
    assert abs(record["requests_ratio"] - 1) <= 0.10, record

    def searched(run: str) -> int:
        rows = [json.loads(line) for line in (tmp_path / "runs" / run / "journal.jsonl").read_text().splitlines()]
        return sum(1 for r in rows if r["stage"] in ("source", "target"))

    # every search candidate is one journal row (partial or full); promoted candidates add a full row each
    assert searched("eq") >= record["no_transfer"]["candidates"] and searched("two") >= two["search"]["candidates"]
