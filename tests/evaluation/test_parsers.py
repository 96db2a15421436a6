"""Tests of the verbalized-answer parsers (tp_harness.evaluation.parsers) and prompt_sha."""

from __future__ import annotations

import hashlib
import re

import pytest

from tp_harness.evaluation.evaluator import prompt_sha
from tp_harness.evaluation.parsers import ANSWER_PARSERS, ParsedAnswer, parse_verbalized
from tp_harness.spec.schema import AnswerFormat

LETTERS = ["A", "B", "C", "D"]
LETTER = AnswerFormat(parser="letter_confidence", labels=LETTERS).parser
SENTIMENT = ["positive", "negative", "neutral"]
LABEL = AnswerFormat(parser="label_confidence", labels=SENTIMENT).parser
NUMBER = AnswerFormat(parser="number_confidence").parser


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Answer: B\nConfidence: 80%", ParsedAnswer("B", 0.8, True)),
        ("Answer: (c)\nConfidence: 65", ParsedAnswer("C", 0.65, True)),
        ("The best choice.\nANSWER = d\nconfidence = 100%", ParsedAnswer("D", 1.0, True)),
        ("Answer: A) because it fits. Confidence: 0%", ParsedAnswer("A", 0.0, True)),
        ("Confidence: 70%\nAnswer: A", ParsedAnswer("A", 0.7, True)),
        ("Answer: B", ParsedAnswer("B", None, False)),
        ("Answer: B\nConfidence: 150%", ParsedAnswer("B", None, False)),
        ("Answer: E\nConfidence: 90%", ParsedAnswer(None, 0.9, False)),
        ("Answer: Apple\nConfidence: 90%", ParsedAnswer(None, 0.9, False)),
        ("I think it is B.\nConfidence: 90%", ParsedAnswer(None, 0.9, False)),
        ("Answer: B\nConfidence: 72.5%", ParsedAnswer("B", 0.725, True)),
        ("", ParsedAnswer(None, None, False)),
    ],
    ids=["basic", "lower-paren", "equals-sign", "zero-confidence", "confidence-first", "no-confidence",
         "confidence-150", "not-allowed", "word-not-letter", "no-answer-line", "decimal-confidence", "empty"],
)
def test_letter_confidence(response: str, expected: ParsedAnswer) -> None:
    assert parse_verbalized(response, LETTER, LETTERS) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Answer: Positive.\nConfidence: 90%", ParsedAnswer("positive", 0.9, True)),
        ("Answer: NEUTRAL\nConfidence: 55%", ParsedAnswer("neutral", 0.55, True)),
        ("Answer: negative, clearly\nConfidence: 60%", ParsedAnswer("negative", 0.6, True)),
        ("Answer: mixed\nConfidence: 60%", ParsedAnswer(None, 0.6, False)),
        ("Answer: positive", ParsedAnswer("positive", None, False)),
    ],
    ids=["punctuation", "upper-case", "trailing-words", "unknown-label", "no-confidence"],
)
def test_label_confidence(response: str, expected: ParsedAnswer) -> None:
    assert parse_verbalized(response, LABEL, SENTIMENT) == expected


def test_label_parser_returns_the_allowed_spelling() -> None:
    parsed = parse_verbalized("Answer: yes\nConfidence: 90%", "label_confidence", ["Yes", "No"])
    assert parsed == ParsedAnswer("Yes", 0.9, True)


def test_label_parser_does_not_match_a_label_inside_a_longer_word() -> None:
    labels = ["yes", "no", "maybe"]
    parsed = parse_verbalized("Answer: Nothing can be concluded.\nConfidence: 50%",
                              "label_confidence", labels)
    assert parsed == ParsedAnswer(None, 0.5, False)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Answer: 1,234\nConfidence: 90%", ParsedAnswer("1234", 0.9, True)),
        ("Answer: 3.50\nConfidence: 40%", ParsedAnswer("3.5", 0.4, True)),
        ("Answer: 42.0 apples\nConfidence: 40%", ParsedAnswer("42", 0.4, True)),
        ("Answer: -7\nConfidence: 40%", ParsedAnswer("-7", 0.4, True)),
        ("Answer: $1,000,000\nConfidence: 10%", ParsedAnswer("1000000", 0.1, True)),
        ("Answer: unknown\nConfidence: 10%", ParsedAnswer(None, 0.1, False)),
    ],
    ids=["thousands", "trailing-zero", "integer-float", "negative", "currency", "no-number"],
)
def test_number_confidence(response: str, expected: ParsedAnswer) -> None:
    assert parse_verbalized(response, NUMBER, []) == expected


def test_prompt_sha_is_16_hex_of_sha256_of_the_exact_text() -> None:
    text = "Think step by step, then answer with a letter."
    sha = prompt_sha(text)
    assert re.fullmatch(r"[0-9a-f]{16}", sha), sha
    assert sha == hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    assert prompt_sha(text) == sha
    assert prompt_sha(text + " ") != sha, "prompt_sha must hash the exact text, not a normalized one"
    assert prompt_sha("") == "e3b0c44298fc1c14"


def test_every_parser_a_spec_may_name_is_in_the_table() -> None:
    import typing

    from tp_harness.constants import ANSWER_PARSER_NAMES

    assert tuple(ANSWER_PARSERS) == ANSWER_PARSER_NAMES
    assert typing.get_args(AnswerFormat.model_fields["parser"].annotation) == ANSWER_PARSER_NAMES
