"""The projected scorer calls (printed before a run) match the calls a run makes, racing included.

A unit test drives the real optimization loop (``run_stage``) with a scorer double that counts requests
and checks ``project_calls`` against it, exactly; a slow test runs a real, small racing optimization on the
embedded model and checks ``tp.calls`` in results.json against the projection.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tp_harness.optimizer.budget import BUDGETS, Budget
from tp_harness.optimizer.candidates import Candidate
from tp_harness.optimizer.loop import StageSettings, run_stage
from tp_harness.optimizer.transfer import project_calls

#: a racing budget: 4 candidates per step raced on 2 of 10 docs, the best one promoted, and every 2nd
#: step the best minibatch-scored candidate not yet promoted
RACING = Budget("test-racing", steps=3, num_candidates=4, optimize_n=10, validation_n=5, test_n=8, k_source=2,
                finalists=2, minibatch=2, promote=1, full_eval_interval=2)
CHOICES = 2  # requests per doc: one loglikelihood request per label word


def _task(name: str = "toy") -> SimpleNamespace:
    """A prepared-task double: splits of the budget's sizes, ``CHOICES`` label words per doc."""
    splits = {split: [{"i": i} for i in range(n)] for split, n in (("optimize", 10), ("validation", 5), ("test", 8))}
    task = SimpleNamespace(doc_to_choice=lambda doc: ["no", "yes"][:CHOICES])
    return SimpleNamespace(name=name, mode="multiple_choice", splits=splits, task=task)


def _ctx(budget: Budget, mode: str = "no_transfer", reference_share: float = 1.0,
         selection_alpha: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(budget=budget, reference_share=reference_share, mode=mode, sources=[],
                           selection_alpha=selection_alpha,
                           targets=[_task()])


class _Reference:
    """Reference-LLM double: distinct, well-formed instructions (so hygiene keeps every candidate)."""

    def sample(self, prompt: str, *, num_samples: int, temperature: float, max_tokens: int, seed: int) -> list[str]:
        return [f"<INS>Variant {seed}-{i}: read the sentence and answer with one label word.</INS>"
                for i in range(num_samples)]


def _run_loop(budget: Budget) -> tuple[int, list[dict]]:
    """Run one real stage with a counting scorer double; return (requests asked of the scorer, journal rows)."""
    asked = 0
    rows: list[dict] = []

    def score(cands, step, minibatch):
        nonlocal asked
        docs = minibatch if minibatch is not None else 10
        asked += len(cands) * docs * CHOICES
        rng = random.Random(f"{step}:{minibatch}")
        return [({"composite": rng.random()}, {"n": docs}) for _ in cands]

    settings = StageSettings(steps=budget.steps, num_candidates=budget.num_candidates, reference_share=1.0,
                             minibatch=budget.minibatch, promote=budget.promote,
                             full_eval_interval=budget.full_eval_interval)
    run_stage(stage="target", description="toy", initial=[Candidate("Label the sentence.", "original")],
              score=score, sink=rows.append, recall=lambda step, sha, kind: None, reference=_Reference(),
              exemplars=lambda rng: [], settings=settings, seed=0)
    return asked, rows


def test_projection_counts_racing_like_the_loop_does():
    asked, rows = _run_loop(RACING)
    # by hand: original 10 docs x 2 = 20; per step 4 x 2 x 2 (minibatch) + 20 (promoted) = 36, 3 steps = 108;
    # step 2 promotes one more = 20: 148 in the search; validation 2 finalists x 5 x 2 = 20; test 2 x 8 x 2 = 32
    assert asked == 148
    assert sum(r.get("eval") == "partial" for r in rows) == 12 and sum(r.get("eval") == "full" for r in rows) == 5
    projection = project_calls(_ctx(RACING))
    assert projection.scorer_requests == asked + 20 + 32 == 200
    assert projection.candidates == 1 + 3 * 4 + 2 + 2
    assert projection.reference_samples == 3 * 4
    # the guarded final choice scores the original and the choice on validation once more: 2 x 5 x 2
    assert project_calls(_ctx(RACING, selection_alpha=0.05)).scorer_requests == 200 + 20


def test_projection_without_racing_scores_every_candidate_on_the_full_split():
    full = replace(RACING, name="test-full", minibatch=None)
    asked, rows = _run_loop(full)
    assert asked == 20 + 3 * 4 * 20 and all(r.get("eval") == "full" for r in rows)
    assert project_calls(_ctx(full)).scorer_requests == asked + 20 + 32


def test_projection_drops_racing_when_the_minibatch_covers_the_split():
    whole = replace(RACING, name="test-whole", minibatch=10)
    full = replace(RACING, name="test-full", minibatch=None)
    assert project_calls(_ctx(whole)).scorer_requests == project_calls(_ctx(full)).scorer_requests


def test_projection_of_racing_on_evidence_is_an_upper_bound_full_evaluation_never_exceeds():
    bound = replace(RACING, name="test-bound", minibatch=5, race="bound")  # 10 docs: 2 blocks of 5
    full = replace(RACING, name="test-full", minibatch=None)
    projection = project_calls(_ctx(bound))
    assert projection.at_most and projection.scorer_requests == project_calls(_ctx(full)).scorer_requests
    assert "at most 312 scorer requests" in projection.describe()  # 20 + 3 x 4 x 20 + 20 (validation) + 32 (test)
    assert "at most" not in project_calls(_ctx(RACING)).describe()


#: a small real racing budget where the search dominates (final and validation scoring vary by a few docs)
REAL = Budget("test-projection", steps=2, num_candidates=4, optimize_n=12, validation_n=6, test_n=6, k_source=2,
              finalists=2, reference_max_tokens=48, minibatch=3, promote=1, full_eval_interval=2)


@pytest.mark.slow
def test_real_run_makes_the_projected_scorer_calls(tmp_path, monkeypatch, registries):
    from tp_harness.runs.runner import OptimizeSettings, run_optimize

    monkeypatch.setitem(BUDGETS, REAL.name, REAL)
    settings = OptimizeSettings(targets=["financial_phrasebank"], sources=[], mode="no_transfer",
                                budget=REAL.name, seed=0, results_dir=str(tmp_path), run_id="projection")
    run, results = run_optimize(settings, registries)
    calls = results["tp"]["calls"]
    on_disk = json.loads((run.path / "results.json").read_text())["tp"]["calls"]
    assert on_disk == calls
    projected = calls["projected_scorer_requests"]
    # FPB: 3 label words per doc; 36 + 2 x (4 x 9 + 36) + 36 (step 2's extra promotion) + 2 x 18 + 2 x 18,
    # + 2 x 18 for the guarded final choice (the original and the choice on validation)
    assert projected == 324
    assert abs(calls["scorer_requests"] - projected) <= 0.1 * projected, calls
    assert 0 <= calls["scorer_computed"] <= calls["scorer_requests"]
    rows = run.journal()
    assert sum(r.get("eval") == "partial" for r in rows) >= 2 * 4 - 2  # hygiene may leave a slot empty
