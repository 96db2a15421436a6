"""Candidate proposers and candidate hygiene.

Owns (1) hygiene: turning raw reference-LLM samples into distinct, scoreable instructions (tag
stripping, whitespace normalization, deduplication by normalized-text hash, length and meta-prompt
marker filters) and (2) the evolutionary proposer, which edits and recombines the best instructions
in the history at sentence level (crossover, deletion, insertion of sentences from other high scorers,
reordering), as EvoPrompt (Guo et al., ICLR 2024) and Plum (Pan et al., 2024) do, so the search moves
even when the reference LLM writes poor rewrites. It calls no model and scores nothing.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tp_harness.optimizer.meta_prompt import INS_CLOSE, INS_OPEN, META_MARKERS

PROPOSERS = ("original", "seed", "reference", "evolution")
#: a meta-prompt marker counts only as a whole token ("context:" does not contain the marker "text:")
_MARKER_RE = re.compile("|".join(rf"(?<![\w]){re.escape(m)}" for m in META_MARKERS), re.IGNORECASE)
#: generic instruction sentences inserted when the history offers no other sentence to recombine
#: (phrase-level edit operations as in GrIPS, Prasad et al., EACL 2023)
FALLBACK_PHRASES = (
    "Read the question carefully.",
    "Consider every option before you answer.",
    "Choose the single best answer.",
    "Answer with the option that is most likely correct.",
    "Use the facts stated in the text.",
    "Think about what the question asks.",
    "Be precise.",
    "Rely on well-established knowledge.",
    "If you are unsure, pick the most probable answer.",
    "Ignore options that contradict the question.",
    "Answer as an expert in the field would.",
    "Focus on the key facts.",
    "Do not overthink the question.",
    "Eliminate clearly wrong options first.",
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An unscored instruction and the proposer that made it (``reference`` or ``evolution``;
    ``original`` and ``seed`` for the task's own instruction and transferred source prompts)."""

    text: str
    proposer: str
    parents: tuple[str, ...] = ()
    operation: str = ""


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation: the key for duplicate detection."""
    return re.sub(r"\s+", " ", text).strip().strip("\"'`").strip().lower()


def text_hash(text: str) -> str:
    """sha256 (16 hex chars) of :func:`normalize` ``(text)``."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:16]


def clean(text: str) -> str:
    """Strip ``<INS>`` tags, code fences, quotes, a leading "Instruction:" label and extra whitespace."""
    text = text.replace(INS_OPEN, " ").replace(INS_CLOSE, " ").replace("```", " ")
    text = re.sub(r"^\s*(new\s+)?instruction\s*:\s*", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip("\"'` ").strip()


def hygiene(
    candidates: Iterable[Candidate],
    *,
    seen: Iterable[str] = (),
    max_chars: int = 500,
    min_chars: int = 12,
) -> tuple[list[Candidate], dict[str, int]]:
    """Keep the candidates worth scoring.

    Drops: empty or shorter than ``min_chars`` after :func:`clean`; longer than ``max_chars``;
    containing a meta-prompt marker (``text:``, ``score:``, ``<INS>``, ...); duplicates of each other
    or of ``seen`` (normalized-text hashes of instructions already in the history).
    :return: (kept candidates with cleaned text, counts of drops by reason).
    """
    known = set(seen)
    kept: list[Candidate] = []
    dropped = {"empty": 0, "too_long": 0, "marker": 0, "duplicate": 0}
    for cand in candidates:
        text = clean(cand.text)
        if len(text) < min_chars:
            dropped["empty"] += 1
            continue
        if len(text) > max_chars:
            dropped["too_long"] += 1
            continue
        if _MARKER_RE.search(text):
            dropped["marker"] += 1
            continue
        key = text_hash(text)
        if key in known:
            dropped["duplicate"] += 1
            continue
        known.add(key)
        kept.append(Candidate(text=text, proposer=cand.proposer, parents=cand.parents, operation=cand.operation))
    return kept, dropped


_SENT_RE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """Split an instruction into sentences (on ., ! or ? followed by whitespace)."""
    parts = [s.strip() for s in _SENT_RE.split(text.strip()) if s.strip()]
    return [p if p[-1] in ".!?" else p + "." for p in parts]


def evolve(
    ranked: Sequence[str],
    *,
    num: int,
    rng: random.Random,
    top_k: int = 5,
) -> list[Candidate]:
    """Propose ``num`` edits and recombinations of the best instructions.

    :param ranked: instructions of the history, best first.
    :param rng: the step's random generator (seeded by run seed, stage and step).
    Operations, each picked at random per candidate: ``crossover`` (first sentences of parent A +
    last sentences of parent B), ``insert`` (a sentence of another high scorer inserted into A),
    ``delete`` (drop one sentence of A), ``swap`` (exchange two sentences of A). Half of the insertions
    (and all of them when the top instructions share no other sentence) take a sentence from
    :data:`FALLBACK_PHRASES`, so a history of one-sentence originals still varies. Parents are drawn
    from the ``top_k`` best, biased towards the top. Results may repeat; hygiene deduplicates.
    """
    pool = [p for p in ranked[:top_k] if p.strip()]
    if not pool:
        return []
    out: list[Candidate] = []
    weights = [1.0 / (i + 1) for i in range(len(pool))]
    for _ in range(num * 4):
        if len(out) >= num:
            break
        a = rng.choices(pool, weights=weights)[0]
        b = rng.choice(pool)
        sa, sb = sentences(a), sentences(b)
        ops = ["insert", "insert", "crossover"] if len(sa) < 2 else ["crossover", "insert", "delete", "swap"]
        op = rng.choice(ops)
        if op == "crossover":
            cut_a = rng.randint(1, len(sa))
            cut_b = rng.randint(0, len(sb) - 1) if len(sb) > 1 else 0
            new = sa[:cut_a] + [s for s in sb[cut_b:] if s not in sa[:cut_a]]
        elif op == "insert":
            donors = [s for p in pool if p != a for s in sentences(p) if s not in sa]
            if not donors or rng.random() < 0.5:
                donors = [s for s in FALLBACK_PHRASES if s not in sa] or donors
            new = list(sa)
            new.insert(rng.randint(0, len(new)), rng.choice(donors))
        elif op == "delete":
            new = list(sa)
            del new[rng.randrange(len(new))]
        else:
            new = list(sa)
            i, j = rng.sample(range(len(new)), 2)
            new[i], new[j] = new[j], new[i]
        text = " ".join(new).strip()
        if text and normalize(text) not in {normalize(a), normalize(b)}:
            out.append(Candidate(text=text, proposer="evolution", parents=tuple(dict.fromkeys((a, b))), operation=op))
    return out
