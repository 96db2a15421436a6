"""The anti-overfit guard: reject a proposed instruction that copies a span of the task's data.

An instruction that quotes a question, a passage or an answer of the dataset can score well on the docs it
quotes and means nothing on others; GEPA's users ask for this guard (gepa-ai/gepa#261). A proposal
(reference LLM or evolutionary edit) that shares a run of :data:`SPAN_WORDS` or more consecutive words with a
string field of any doc of the stage's tasks (every split; the meta-prompt's exemplars are drawn from these
docs, so what it showed is covered) is rejected before it is scored. Words are lower-cased ``\\w+`` tokens, so
punctuation and case do not hide a copy. The task's template text (what ``doc_to_text`` adds around the
fields, e.g. ``Question:``) and its instruction are not data and are not checked. It calls no model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

#: a proposal that shares this many consecutive words with the data is rejected
SPAN_WORDS = 5

_WORD_RE = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``) of ``text``."""
    return _WORD_RE.findall(text.lower())


def _strings(value: object) -> Iterator[str]:
    """Every string in a doc field, recursing into lists, tuples and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


@dataclass(frozen=True)
class DataSpans:
    """The word n-grams of a task's data, for :meth:`copied_span`.

    :ivar spans: every run of ``n`` consecutive words of every string field of the docs.
    :ivar n: the span length in words (:data:`SPAN_WORDS`).
    """

    spans: frozenset[tuple[str, ...]]
    n: int = SPAN_WORDS

    @classmethod
    def from_docs(cls, docs: Iterable[Mapping], n: int = SPAN_WORDS) -> DataSpans:
        """Collect the spans of the string fields of ``docs`` (each a dataset row)."""
        spans: set[tuple[str, ...]] = set()
        for doc in docs:
            for text in _strings(doc):
                toks = words(text)
                spans.update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        return cls(frozenset(spans), n)

    def copied_span(self, instruction: str) -> str | None:
        """The first ``n``-word span of ``instruction`` that occurs in the data (words joined by spaces),
        or None when the instruction copies none."""
        toks = words(instruction)
        for i in range(len(toks) - self.n + 1):
            span = tuple(toks[i:i + self.n])
            if span in self.spans:
                return " ".join(span)
        return None

    def reason(self, instruction: str) -> str | None:
        """The journal's rejection reason for ``instruction``, or None when it copies no span."""
        span = self.copied_span(instruction)
        return None if span is None else f"copies {self.n} or more words of the task's data: {span!r}"


def task_spans(split_docs: Sequence[Mapping[str, Sequence[Mapping]]], n: int = SPAN_WORDS) -> DataSpans:
    """:class:`DataSpans` of the docs of every split of the given tasks (``PreparedTask.splits`` each)."""
    return DataSpans.from_docs((doc for splits in split_docs for docs in splits.values() for doc in docs), n)
