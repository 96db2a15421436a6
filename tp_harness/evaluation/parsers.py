"""Answer parsers of the verbalized protocol: a ``generate_until`` response -> (answer, confidence, followed).

A table, not string dispatch: each parser named in ``tp.modes.generate_until.answer_format.parser`` is one
:class:`AnswerParser` in :data:`ANSWER_PARSERS` (its names are :data:`tp_harness.constants.ANSWER_PARSERS`). Every
parser reads ``Answer: <x>`` and ``Confidence: <0-100>%`` (the paper's verbalized protocol, after Xiong et al.,
ICLR 2024); they differ in what ``<x>`` may be and how it is compared with the gold answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from tp_harness.constants import ANSWER_PARSER_NAMES

_CONF_RE = re.compile(r"confidence\s*[:=]\s*(\d+(?:\.\d+)?)\s*(%?)", re.IGNORECASE)
_ANSWER_RE = re.compile(r"answer\s*[:=]\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """What a parser read from a response: the answer (or None), the confidence in [0, 1] (or None),
    and whether the response followed the required format (an allowed answer AND a confidence in 0-100)."""

    answer: str | None
    confidence: float | None
    followed: bool


def normalize_number(text: str) -> str:
    """``"1,234.0"`` -> ``"1234"``: a number as canonical text (commas dropped, integral floats as ints)."""
    text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else str(value)


def _letter(raw: str, allowed: Sequence[str]) -> str | None:
    m = re.match(r"^\(?([A-Za-z])\b\)?", raw)
    return m.group(1).upper() if m and m.group(1).upper() in allowed else None


def _label(raw: str, allowed: Sequence[str]) -> str | None:
    lowered = {a.lower(): a for a in allowed}
    word = re.sub(r"[^\w\s-]", "", raw).strip().lower()
    return lowered.get(word) or next(
        (lowered[k] for k in sorted(lowered, key=len, reverse=True) if re.match(rf"{re.escape(k)}\b", word)), None)


def _number(raw: str, allowed: Sequence[str]) -> str | None:
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", raw)
    return normalize_number(m.group(0)) if m else None


def _same(text: str) -> str:
    return text


@dataclass(frozen=True, slots=True)
class AnswerParser:
    """One answer parser.

    :ivar read: ``read(answer_text, allowed) -> answer | None``: the answer in the first line after ``Answer:``,
        if it is allowed (``allowed`` is empty for numbers).
    :ivar gold: how the gold answer is put in the same form before the (case-insensitive) comparison.
    :ivar letters_by_default: without ``labels``, the allowed answers are the letters of the choices (A, B, ...).
    """

    read: Callable[[str, Sequence[str]], str | None]
    gold: Callable[[str], str] = _same
    letters_by_default: bool = False


#: the parsers by name: ``letter_confidence`` (a letter among the allowed), ``label_confidence`` (a label among the
#: allowed, case-insensitive, the longest match first), ``number_confidence`` (a number, compared as canonical text)
ANSWER_PARSERS: Mapping[str, AnswerParser] = MappingProxyType({
    "letter_confidence": AnswerParser(read=_letter, letters_by_default=True),
    "label_confidence": AnswerParser(read=_label),
    "number_confidence": AnswerParser(read=_number, gold=normalize_number),
})
assert tuple(ANSWER_PARSERS) == ANSWER_PARSER_NAMES, "tp_harness.constants.ANSWER_PARSER_NAMES is the one list"


def parse_verbalized(response: str, parser: str, allowed: Sequence[str]) -> ParsedAnswer:
    """Parse ``Answer: <x>`` and ``Confidence: <0-100>%`` from a scorer response with the parser named ``parser``.

    Confidence is read as a percentage (0-100) and returned as a probability in [0, 1]; outside 0-100 it counts
    as missing. ``followed`` (the response is in the instructed format, what IFR counts) needs both.
    :raises KeyError: no parser of that name (specs are validated against :data:`ANSWER_PARSERS` at load).
    """
    read = ANSWER_PARSERS[parser].read
    answer: str | None = None
    m = _ANSWER_RE.search(response)
    if m:
        answer = read(m.group(1).strip().splitlines()[0].strip(), allowed)
    confidence: float | None = None
    c = _CONF_RE.search(response)
    if c:
        value = float(c.group(1))
        if 0.0 <= value <= 100.0:
            confidence = value / 100.0
    return ParsedAnswer(answer=answer, confidence=confidence, followed=answer is not None and confidence is not None)
