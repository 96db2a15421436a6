"""Racing on evidence (issue 15): the paired bound that drops a candidate, the minibatch that grows with the split
and turns racing off on small ones, and a real run on the embedded model with ``race="bound"``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tp_harness.evaluation.metrics import DEFAULT_WEIGHTS
from tp_harness.optimizer.budget import BUDGETS, Budget
from tp_harness.optimizer.transfer import _minibatch, equal_budget, race_bound


def _row(correct: list[bool], confidence: list[float], task: str = "t") -> dict:
    return {"per_doc": {task: {"doc_id": list(range(len(correct))), "correct": correct, "confidence": confidence,
                               "followed": [None] * len(correct)}}}


def _task(name: str = "t", n: int = 0, weights=None):
    return SimpleNamespace(name=name, weights=dict(weights or DEFAULT_WEIGHTS), splits={"optimize": [{}] * n})


def test_the_bound_drops_a_clearly_worse_candidate_and_never_an_equal_or_better_one() -> None:
    bound = race_bound([_task()], alpha=0.05, seed=0)
    good = _row([True] * 12 + [False] * 4, [0.9] * 12 + [0.3] * 4)
    bad = _row([False] * 12 + [True] * 4, [0.9] * 12 + [0.3] * 4)
    same = bound(good, good)
    assert same is not None and same >= 0.0  # an equal candidate is never dropped
    assert bound(good, bad) < 0.0  # clearly worse on the same 16 docs: dropped
    assert bound(bad, good) > 0.0


def test_the_bound_is_undefined_without_paired_columns_or_for_weights_it_cannot_resample() -> None:
    row = _row([True, False, True], [0.9, 0.2, 0.8])
    assert race_bound([_task()], alpha=0.05, seed=0)({"metrics": {}}, row) is None
    other = {"per_doc": {"t": {**row["per_doc"]["t"], "doc_id": [5, 6, 7]}}}
    assert race_bound([_task()], alpha=0.05, seed=0)(row, other) is None  # not the same docs: no pairing
    plugin_weights = {**DEFAULT_WEIGHTS, "brevity": 1.0}
    assert race_bound([_task(weights=plugin_weights)], alpha=0.05, seed=0)(row, row) is None


def test_the_bound_averages_the_tasks_of_stage_one() -> None:
    tasks = [_task("a"), _task("b")]
    good = {"per_doc": {**_row([True] * 12 + [False] * 4, [0.9] * 12 + [0.3] * 4, "a")["per_doc"],
                        **_row([True] * 12 + [False] * 4, [0.9] * 12 + [0.3] * 4, "b")["per_doc"]}}
    half = {"per_doc": {**good["per_doc"], **_row([False] * 12 + [True] * 4, [0.9] * 12 + [0.3] * 4, "b")["per_doc"]}}
    one = race_bound([tasks[1]], alpha=0.05, seed=0)(good, half)
    both = race_bound(tasks, alpha=0.05, seed=0)(good, half)
    assert one < both < 0.5 and both > one / 2 - 0.05


@pytest.mark.parametrize(("n", "expected"), [(12, None), (15, None), (16, 8), (24, 8), (64, 16), (200, 50)])
def test_the_bound_minibatch_grows_with_the_split_and_is_off_on_small_ones(n, expected) -> None:
    budget = Budget("b", steps=1, num_candidates=4, optimize_n=None, validation_n=None, test_n=None, k_source=1,
                    finalists=1, minibatch=8, race="bound", minibatch_fraction=0.25)
    assert _minibatch(SimpleNamespace(budget=budget), [_task(n=n)]) == expected


def test_halving_keeps_its_fixed_minibatch() -> None:
    ctx = SimpleNamespace(budget=BUDGETS["medium"])
    assert _minibatch(ctx, [_task(n=64)]) == BUDGETS["medium"].minibatch
    assert _minibatch(ctx, [_task(n=8)]) is None


def test_an_equal_budget_ablation_refuses_a_budget_that_races_on_a_bound() -> None:
    from tp_harness.errors import UsageError

    budget = Budget("b", steps=1, num_candidates=4, optimize_n=None, validation_n=None, test_n=None, k_source=1,
                    finalists=1, minibatch=8, race="bound")
    with pytest.raises(UsageError, match="races on a bound"):
        equal_budget(budget, sources=[], target=_task(n=64), target_full=_task(n=64), reference_share=0.5)


@pytest.mark.slow
def test_a_real_run_racing_on_evidence_journals_incumbent_and_paired_columns(registries, tmp_path, monkeypatch):
    """The embedded model on Financial PhraseBank: every racing step scores the incumbent on the candidates'
    minibatch, every minibatch row carries the paired columns, and exactly the candidates the bound does not reject
    are fully scored."""
    import json

    from tp_harness.runs.runner import OptimizeSettings, run_optimize

    budget = Budget("race-test", steps=1, num_candidates=3, optimize_n=24, validation_n=6, test_n=6, k_source=1,
                    finalists=1, reference_max_tokens=48, minibatch=6, race="bound", minibatch_fraction=0.25)
    monkeypatch.setitem(BUDGETS, budget.name, budget)
    settings = OptimizeSettings(targets=["financial_phrasebank"], sources=[], mode="no_transfer", budget=budget.name,
                                seed=3, results_dir=str(tmp_path), run_id="race", leaderboard=False)
    run, _results = run_optimize(settings, registries)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "race" / "journal.jsonl").read_text().splitlines()]
    step = [r for r in rows if r.get("stage") == "target" and r.get("step") == 1]
    partial = [r for r in step if r["eval"] == "partial"]
    (incumbent,) = [r for r in step if r["eval"] == "incumbent"]
    full = {r["prompt_sha"] for r in step if r["eval"] == "full"}
    (original,) = [r for r in rows if r.get("stage") == "target" and r.get("step") == 0]
    assert incumbent["prompt_sha"] == original["prompt_sha"] and incumbent["n"] == 6 and original["n"] == 24
    assert partial and all(r["n"] == 6 and len(r["per_doc"]["financial_phrasebank"]["doc_id"]) == 6 for r in partial)
    assert all(r["per_doc"]["financial_phrasebank"]["doc_id"] == incumbent["per_doc"]["financial_phrasebank"]["doc_id"]
               for r in partial)  # the same docs: a paired comparison
    bound = race_bound([SimpleNamespace(name="financial_phrasebank", weights=dict(DEFAULT_WEIGHTS))], alpha=0.05,
                       seed=3)
    for r in partial:
        upper = bound(incumbent, r)
        assert (r["prompt_sha"] in full) is (upper is None or upper >= 0), (r["prompt"], upper)
