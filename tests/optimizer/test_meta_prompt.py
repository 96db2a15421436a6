"""Tests of tp_harness.optimizer.meta_prompt: the OPRO meta-prompt layout, score display and reply parsing."""

from __future__ import annotations

import pytest

from tp_harness.optimizer.meta_prompt import (
    INS_CLOSE,
    INS_OPEN,
    Exemplar,
    build_meta_prompt,
    extract_instructions,
    score_to_int,
)

HISTORY = [
    ("Answer with the best option.", 0.9),
    ("Pick a letter.", 0.2),
    ("Think step by step, then answer.", 0.55),
]


def _history_block(meta: str) -> list[tuple[str, int]]:
    """The (text, score) pairs shown in a meta-prompt, in the order shown."""
    lines = meta.splitlines()
    pairs = []
    for i, line in enumerate(lines):
        if line.startswith("text: "):
            assert lines[i + 1].startswith("score: "), f"text line {i} is not followed by a score: {lines[i + 1]!r}"
            pairs.append((line[len("text: "):], int(lines[i + 1][len("score: "):])))
    return pairs


# ----------------------------------------------------------------------------------------------
# score_to_int


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, 0), (0.123, 12), (0.5, 50), (0.996, 100), (1.0, 100), (1.7, 100), (-0.2, 0), (None, 0),
     (float("nan"), 0)],
)
def test_score_to_int_maps_composite_to_0_100(score: float | None, expected: int) -> None:
    assert score_to_int(score) == expected


# ----------------------------------------------------------------------------------------------
# build_meta_prompt


def test_history_is_shown_ascending_by_score_as_integers() -> None:
    meta = build_meta_prompt("Answer medical questions.", HISTORY, [])
    assert _history_block(meta) == [
        ("Pick a letter.", 20),
        ("Think step by step, then answer.", 55),
        ("Answer with the best option.", 90),
    ]


def test_history_keeps_only_the_max_history_best() -> None:
    meta = build_meta_prompt("Answer medical questions.", HISTORY, [], max_history=2)
    assert _history_block(meta) == [("Think step by step, then answer.", 55), ("Answer with the best option.", 90)]
    assert "Pick a letter." not in meta


def test_max_history_zero_shows_no_history() -> None:
    meta = build_meta_prompt("Answer medical questions.", HISTORY, [], max_history=0)
    assert _history_block(meta) == []
    assert "Answer with the best option." not in meta


def test_unscored_history_entry_shows_as_zero_and_ranks_lowest() -> None:
    meta = build_meta_prompt("Task.", [("Scored instruction.", 0.3), ("Unscored instruction.", None)], [])
    assert _history_block(meta) == [("Unscored instruction.", 0), ("Scored instruction.", 30)]


def test_history_texts_are_stripped() -> None:
    meta = build_meta_prompt("Task.", [("  Padded instruction.\n", 0.4)], [])
    assert _history_block(meta) == [("Padded instruction.", 40)]


def test_layout_description_history_exemplars_request_in_order() -> None:
    exemplars = [Exemplar("What is 2+2?", "4"), Exemplar(" Capital of France? ", " Paris ")]
    meta = build_meta_prompt("  Answer arithmetic and geography questions.  ", HISTORY, exemplars)
    assert "Task: Answer arithmetic and geography questions.\n" in meta
    assert "Q: What is 2+2?\nA: 4\n" in meta
    assert "Q: Capital of France?\nA: Paris\n" in meta
    task_at = meta.index("Task: ")
    last_history_at = meta.index("text: Answer with the best option.")
    first_exemplar_at = meta.index("Q: What is 2+2?")
    second_exemplar_at = meta.index("Q: Capital of France?")
    assert task_at < last_history_at < first_exemplar_at < second_exemplar_at
    last_line = meta.splitlines()[-1]
    assert f"between {INS_OPEN} and {INS_CLOSE}" in last_line
    assert "different from the old ones" in last_line
    assert meta.index(last_line) > second_exemplar_at


def test_no_exemplar_section_without_exemplars() -> None:
    meta = build_meta_prompt("Task.", HISTORY, [])
    assert "Q: " not in meta
    assert "examples of the task" not in meta
    assert meta.rstrip().endswith(f"Write the instruction between {INS_OPEN} and {INS_CLOSE}.")


def test_meta_prompt_does_not_depend_on_history_order() -> None:
    forward = build_meta_prompt("Task.", HISTORY, [Exemplar("q", "a")])
    backward = build_meta_prompt("Task.", list(reversed(HISTORY)), [Exemplar("q", "a")])
    assert forward == backward


# ----------------------------------------------------------------------------------------------
# extract_instructions


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Sure! <INS>Think step by step.</INS> Done.", ["Think step by step."]),
        ("<INS>First one.</INS>\n<INS>Second one.</INS>", ["First one.", "Second one."]),
        ("<INS>Unclosed instruction text", ["Unclosed instruction text"]),
        ("Answer carefully and briefly.</INS> trailing", ["Answer carefully and briefly."]),
        ("Just an instruction with no tags.", ["Just an instruction with no tags."]),
        ("", [""]),
    ],
    ids=["one-span", "two-spans", "unclosed", "lone-close", "no-tags", "empty"],
)
def test_extract_instructions(reply: str, expected: list[str]) -> None:
    assert extract_instructions(reply) == expected
