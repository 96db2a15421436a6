"""The anti-overfit guard (issue 18, item 7): proposals that copy 5 or more words of the task's data are
rejected before scoring and journaled with the reason; the loop with doubles, and the real task data."""

from __future__ import annotations

import random
from typing import Any

from tp_harness.optimizer.candidates import Candidate
from tp_harness.optimizer.loop import StageSettings, run_stage
from tp_harness.optimizer.meta_prompt import Exemplar
from tp_harness.optimizer.overfit import SPAN_WORDS, DataSpans, task_spans

DOCS = [
    {"question": "Which vitamin deficiency causes scurvy in sailors?", "choices": ["Vitamin C", "Vitamin D"],
     "answer": 0, "meta": {"source": "Textbook of internal medicine, chapter four"}},
    {"question": "What is the capital of France?", "choices": ["Paris", "Rome"], "answer": 0},
]


def test_a_five_word_span_of_any_string_field_is_found_whatever_the_case_and_punctuation() -> None:
    spans = DataSpans.from_docs(DOCS)
    assert SPAN_WORDS == 5
    assert spans.copied_span("Think: which VITAMIN deficiency causes scurvy, then answer.") == \
        "which vitamin deficiency causes scurvy"
    assert spans.copied_span("Cite the textbook of internal medicine chapter four.") == \
        "textbook of internal medicine chapter"  # nested mapping fields are data too
    assert spans.reason("Which vitamin deficiency causes scurvy?").startswith("copies 5 or more words")


def test_four_words_or_words_of_different_docs_are_not_a_copy() -> None:
    spans = DataSpans.from_docs(DOCS)
    assert spans.copied_span("Which vitamin deficiency causes problems? Answer with a letter.") is None
    # "capital of france" (doc 2) + "vitamin c" (doc 1): five words in a row, but no five in a row of one field
    assert spans.copied_span("The capital of France vitamin C") is None
    assert spans.reason("Answer the question.") is None
    assert DataSpans.from_docs([{"label": 3, "text": "too short"}]).spans == frozenset()


def test_task_spans_cover_every_split_of_every_task() -> None:
    spans = task_spans([{"optimize": [DOCS[0]], "validation": [], "test": [DOCS[1]]}])
    assert spans.copied_span("what is the capital of france") == "what is the capital of"
    assert spans.copied_span("which vitamin deficiency causes scurvy") is not None


class CopyingReference:
    """Reference double whose every other reply copies a question of the data."""

    def sample(self, prompt: str, *, num_samples: int, temperature: float, max_tokens: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [f"<INS>{'Which vitamin deficiency causes scurvy in sailors? ' if i % 2 == 0 else ''}"
                f"Answer carefully, variant {rng.randint(0, 10**6)}.</INS>" for i in range(num_samples)]


def _stage(journal: list[dict], screen: Any) -> list:
    def recall(step: int, sha: str, kind: str) -> dict | None:
        return next((r for r in journal if r.get("stage") == "target" and r["step"] == step
                     and r["prompt_sha"] == sha and r["eval"] == kind), None)

    def score(cands, step, minibatch=None):
        return [({"acc": 0.5, "composite": len(c.text) % 50 / 100}, {"split": "optimize"}) for c in cands]

    def reject(row: dict) -> None:
        if not any(r.get("stage") == "rejected" and r["step"] == row["step"] and r["prompt_sha"] == row["prompt_sha"]
                   for r in journal):
            journal.append(row)

    return run_stage(stage="target", description="Answer medical questions.",
                     initial=[Candidate("Answer the question with the letter of the best option.", "original")],
                     score=score, sink=journal.append, recall=recall, reference=CopyingReference(),
                     exemplars=lambda rng: [Exemplar(DOCS[0]["question"], "Vitamin C")],
                     settings=StageSettings(steps=3, num_candidates=4, reference_share=1.0), seed=5,
                     row_base={"task": "tiny"}, screen=screen, reject=reject)


def test_the_loop_rejects_copies_journals_why_and_scores_only_clean_proposals() -> None:
    spans = DataSpans.from_docs(DOCS)
    journal: list[dict] = []
    history = _stage(journal, spans.reason)
    rejected = [r for r in journal if r.get("stage") == "rejected"]
    assert rejected, "the double copies data in half of its replies"
    for row in rejected:
        assert row["of_stage"] == "target" and row["task"] == "tiny" and row["proposer"] == "reference"
        assert row["reason"] == "copies 5 or more words of the task's data: 'which vitamin deficiency causes scurvy'"
        assert "metrics" not in row
    assert all(spans.copied_span(p.text) is None for p in history)
    # the step's slots are filled all the same: 1 original + 3 steps x 4 candidates
    assert len(history) == 1 + 3 * 4

    # --resume proposes the same steps again: nothing is scored or journaled twice
    before = list(journal)
    again = _stage(journal, spans.reason)
    assert journal == before
    assert [p.text for p in again] == [p.text for p in history]


def test_without_a_screen_the_copies_are_scored() -> None:
    journal: list[dict] = []
    history = _stage(journal, None)
    assert not [r for r in journal if r.get("stage") == "rejected"]
    assert any(DataSpans.from_docs(DOCS).copied_span(p.text) for p in history)
