"""Tests of tp_harness.optimizer.candidates: cleaning, hashing, hygiene filters and the evolutionary proposer."""

from __future__ import annotations

import random
import re

import pytest

from tp_harness.optimizer.candidates import (
    FALLBACK_PHRASES,
    Candidate,
    clean,
    evolve,
    hygiene,
    normalize,
    sentences,
    text_hash,
)

RANKED = [
    "Read the question carefully. Choose the single best option. State your confidence as a percentage.",
    "Think step by step. Answer with the letter only.",
    "Consider every option. Eliminate the wrong ones. Pick the remaining letter.",
    "Be concise. Give the answer first.",
]
OPERATIONS = {"crossover", "insert", "delete", "swap"}


# ----------------------------------------------------------------------------------------------
# clean, normalize, text_hash


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<INS> Think step by step. </INS>", "Think step by step."),
        ("Instruction: Answer with a letter.", "Answer with a letter."),
        ("new instruction :  Answer with a letter.", "Answer with a letter."),
        ("```\nAnswer   with\n a letter.\n```", "Answer with a letter."),
        ('"Answer with a letter."', "Answer with a letter."),
        ("   ", ""),
    ],
    ids=["tags", "label", "new-label", "fences-and-spaces", "quotes", "blank"],
)
def test_clean(raw: str, expected: str) -> None:
    assert clean(raw) == expected


def test_normalize_lowercases_collapses_whitespace_and_strips_quotes() -> None:
    assert normalize('  "Think  STEP\n by   step."  ') == "think step by step."


def test_text_hash_is_16_hex_and_equal_for_normalized_equal_texts() -> None:
    h = text_hash("Think step by step.")
    assert re.fullmatch(r"[0-9a-f]{16}", h), h
    assert text_hash("  think STEP by\nstep. ") == h
    assert text_hash("Think step by step!") != h


# ----------------------------------------------------------------------------------------------
# hygiene


def test_hygiene_drops_by_reason_and_keeps_order_and_metadata() -> None:
    cands = [
        Candidate("<INS>Answer with the best option.</INS>", "reference"),
        Candidate("", "reference"),
        Candidate("Too short", "reference"),
        Candidate("x" * 501, "reference"),
        Candidate("Write your new instruction here, please.", "reference"),
        Candidate("text: Answer. score: 80", "reference"),
        Candidate("answer with the BEST option.", "evolution"),
        Candidate("Think step by step, then give the letter.", "evolution", parents=("a", "b"), operation="swap"),
    ]
    kept, dropped = hygiene(cands, max_chars=500, min_chars=12)
    assert kept == [
        Candidate("Answer with the best option.", "reference"),
        Candidate("Think step by step, then give the letter.", "evolution", parents=("a", "b"), operation="swap"),
    ]
    assert dropped == {"empty": 2, "too_long": 1, "marker": 2, "duplicate": 1}


def test_hygiene_drops_duplicates_of_seen_history() -> None:
    seen = [text_hash("Answer with the best option.")]
    kept, dropped = hygiene(
        [Candidate("  ANSWER with the best option. ", "reference"), Candidate("A different instruction.", "reference")],
        seen=seen,
    )
    assert [c.text for c in kept] == ["A different instruction."]
    assert dropped["duplicate"] == 1


def test_hygiene_length_limits_are_inclusive() -> None:
    exact = "y" * 20
    kept, dropped = hygiene([Candidate(exact, "reference")], max_chars=20, min_chars=20)
    assert [c.text for c in kept] == [exact]
    assert sum(dropped.values()) == 0


def test_hygiene_keeps_instructions_that_only_contain_a_marker_inside_a_word() -> None:
    cands = [Candidate("Read the context: then answer the question.", "reference"),
             Candidate("Use this formula: add the two numbers.", "reference")]
    kept, dropped = hygiene(cands)
    assert [c.text for c in kept] == [c.text for c in cands], dropped


# ----------------------------------------------------------------------------------------------
# sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Think step by step. Answer!  Why? ", ["Think step by step.", "Answer!", "Why?"]),
        ("No final stop", ["No final stop."]),
        ("Version 1.5 is fine. Go.", ["Version 1.5 is fine.", "Go."]),
        ("", []),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


# ----------------------------------------------------------------------------------------------
# evolve


def test_evolve_is_deterministic_for_a_seed() -> None:
    first = evolve(RANKED, num=6, rng=random.Random(7))
    second = evolve(RANKED, num=6, rng=random.Random(7))
    assert first == second
    assert first, "evolve proposed nothing from four multi-sentence instructions"
    assert evolve(RANKED, num=6, rng=random.Random(8)) != first


def test_evolve_candidates_are_edits_of_top_parents() -> None:
    top_k = 3
    out = evolve(RANKED, num=12, rng=random.Random(3), top_k=top_k)
    assert 0 < len(out) <= 12
    pool = RANKED[:top_k]
    for cand in out:
        assert cand.proposer == "evolution"
        assert cand.operation in OPERATIONS, cand
        assert cand.parents and set(cand.parents) <= set(pool), f"parent outside the top {top_k}: {cand.parents}"
        parent_sentences = {s for p in pool for s in sentences(p)} | set(FALLBACK_PHRASES)
        assert set(sentences(cand.text)) <= parent_sentences, f"{cand.operation} made a new sentence: {cand.text!r}"
        assert normalize(cand.text) not in {normalize(p) for p in cand.parents}, f"copy of a parent: {cand}"


def test_evolve_uses_every_operation_over_many_draws() -> None:
    ops = {c.operation for seed in range(10) for c in evolve(RANKED, num=8, rng=random.Random(seed))}
    assert ops == OPERATIONS


def test_evolve_delete_and_swap_keep_parent_sentences() -> None:
    for seed in range(10):
        for cand in evolve(RANKED, num=8, rng=random.Random(seed)):
            parent = sentences(cand.parents[0])
            got = sentences(cand.text)
            if cand.operation == "delete":
                assert len(got) == len(parent) - 1 and set(got) < set(parent), cand
            elif cand.operation == "swap":
                assert sorted(got) == sorted(parent) and got != parent, cand


def test_evolve_single_sentence_pool_only_inserts_or_crosses_over() -> None:
    pool = ["Answer with a letter.", "Be brief.", "Think first."]
    out = evolve(pool, num=6, rng=random.Random(1))
    assert out
    assert {c.operation for c in out} <= {"insert", "crossover"}


def test_evolve_empty_or_blank_history_proposes_nothing() -> None:
    assert evolve([], num=4, rng=random.Random(0)) == []
    assert evolve(["   ", ""], num=4, rng=random.Random(0)) == []
