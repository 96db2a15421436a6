"""The guarded final choice (issue 18): the optimized prompt replaces the original only beyond noise.

Unit tests drive :func:`guard_selection` on a real prepared task (Financial PhraseBank's validation split, no model)
with a scorer double whose answers depend on the instruction; the real path is covered by the smoke pipeline run
(tests/runs/test_pipeline.py) and the committed runs' ``tp.selection``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tp_harness import LMBackend
from tp_harness.evaluation.evaluator import prepare_task
from tp_harness.optimizer.transfer import guard_selection
from tp_harness.runs.runner import load_specs


class InstructionLM:
    """LM double: right answers (confidently) under an instruction containing ``GOOD``, a constant guess otherwise."""

    def __init__(self, prep):
        self.gold = {}
        for doc in prep.splits["validation"]:
            choices = prep.task.doc_to_choice(doc)
            self.gold[prep.task.doc_to_text(doc)] = choices[prep.task.doc_to_target(doc)]

    def loglikelihood(self, requests, disable_tqdm=True):
        out = []
        for req in requests:
            context, continuation = req.args
            if "GOOD" in context:
                gold = next(g for text, g in self.gold.items() if text in context)
                out.append((0.0 if continuation.strip() == gold else -6.0, False))
            else:
                out.append((-1.0, False))
        return out


@pytest.fixture(scope="module")
def target(registries):
    (spec,) = load_specs(["financial_phrasebank"], [], registries)
    return prepare_task(spec, data_formats=registries.data_formats, caps={"validation": 24})


def _ctx(target, registries, alpha=0.05):
    rows: list[dict] = []
    backend = LMBackend(name="double", lm=InstructionLM(target), identity={"backend": "double"})
    run = SimpleNamespace(append=rows.append, find=lambda **match: [r for r in rows
                                                                   if all(r.get(k) == v for k, v in match.items())])
    return SimpleNamespace(scorer=backend, registries=registries, seed=0, selection_alpha=alpha, run=run), rows


def test_a_prompt_that_wins_beyond_noise_replaces_the_original(target, registries):
    ctx, rows = _ctx(target, registries)
    guard = guard_selection(ctx, target, "GOOD: classify the sentiment.")
    assert not guard.kept_original and guard.lower_bound > 0 and guard.difference > 0.3 and guard.n == 24
    assert "replaced" in guard.reason and rows[0]["stage"] == "guard" and rows[0]["selection"]["kept_original"] is False


def test_a_prompt_within_noise_of_the_original_keeps_the_original(target, registries):
    ctx, _ = _ctx(target, registries)
    guard = guard_selection(ctx, target, "Another wording that changes nothing.")
    assert guard.kept_original and guard.difference == pytest.approx(0.0) and guard.lower_bound <= 0
    assert "original kept" in guard.reason


def test_the_original_itself_is_kept_without_a_bound(target, registries):
    ctx, _ = _ctx(target, registries)
    guard = guard_selection(ctx, target, target.spec.tp.instruction)
    assert guard.kept_original and guard.lower_bound is None and guard.difference == 0.0


def test_too_few_validation_docs_keep_the_original_without_a_bound(registries):
    (spec,) = load_specs(["financial_phrasebank"], [], registries)
    small = prepare_task(spec, data_formats=registries.data_formats, caps={"validation": 6})
    ctx, _ = _ctx(small, registries)
    guard = guard_selection(ctx, small, "GOOD: classify the sentiment.")
    assert guard.kept_original and guard.lower_bound is None and guard.difference > 0 and guard.n == 6
    assert "too few for a trustworthy bound" in guard.reason


def test_a_resumed_run_recalls_the_decision_instead_of_scoring_again(target, registries):
    ctx, rows = _ctx(target, registries)
    first = guard_selection(ctx, target, "GOOD: classify the sentiment.")
    issued = ctx.scorer.issued["loglikelihood"]
    again = guard_selection(ctx, target, "GOOD: classify the sentiment.")
    assert again == first and ctx.scorer.issued["loglikelihood"] == issued and len(rows) == 1
