"""The meta-prompt (reference prompt) that asks the reference LLM for a new instruction.

Owns the OPRO layout (Yang et al., 2023, "Large Language Models as Optimizers", section 3) used by
Transfer-Prompting (arXiv 2502.14211, section 3): task description; up to ``max_history`` past
(instruction, score) pairs sorted ascending by score, scores as integers 0-100; a few exemplars;
the request for a new, different, better instruction wrapped in ``<INS>...</INS>``. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INS_OPEN, INS_CLOSE = "<INS>", "</INS>"
#: text that marks a candidate as an echo of the meta-prompt rather than an instruction
META_MARKERS = ("<INS>", "</INS>", "text:", "score:", "new instruction", "higher score", "Q:", "A:",
                "previous instructions", "old ones")


@dataclass(frozen=True, slots=True)
class Exemplar:
    """One (question, answer) example from the optimize split shown in the meta-prompt."""

    question: str
    answer: str


def score_to_int(score: float | None) -> int:
    """Map a composite in [0, 1] to the integer 0-100 shown in the meta-prompt (None -> 0)."""
    if score is None or score != score:
        return 0
    return int(round(max(0.0, min(1.0, score)) * 100))


def build_meta_prompt(
    description: str,
    history: Sequence[tuple[str, float | None]],
    exemplars: Sequence[Exemplar],
    *,
    max_history: int = 20,
) -> str:
    """Build the meta-prompt text.

    :param description: the task description (``tp.description`` of the task spec).
    :param history: scored (instruction, composite in [0, 1]) pairs in any order; the best
        ``max_history`` are kept and shown in ascending score order, so the best is last (OPRO).
    :param exemplars: (question, answer) examples; shown after the history.
    :return: the meta-prompt string; the reply is expected to hold ``<INS>new instruction</INS>``.
    """
    ranked = sorted(history, key=lambda p: (score_to_int(p[1]), p[0]))[-max_history:] if max_history > 0 else []
    lines = [
        "Your task is to write an instruction for an assistant that solves the following task.",
        f"Task: {description.strip()}",
        "",
        "Below are previous instructions with their scores. The scores range from 0 to 100 and higher is "
        "better. The instructions are sorted by score in ascending order.",
        "",
    ]
    for text, score in ranked:
        lines += [f"text: {text.strip()}", f"score: {score_to_int(score)}", ""]
    if exemplars:
        lines.append("Here are examples of the task with their correct answers:")
        lines.append("")
        for ex in exemplars:
            lines += [f"Q: {ex.question.strip()}", f"A: {ex.answer.strip()}", ""]
    lines.append(
        "Write your new instruction that is different from the old ones and has a score as high as possible. "
        f"Write the instruction between {INS_OPEN} and {INS_CLOSE}."
    )
    return "\n".join(lines)


def extract_instructions(reply: str) -> list[str]:
    """The instructions in a reference-LLM reply: every ``<INS>...</INS>`` span, else the text up to a
    lone ``</INS>`` (sampling stops there), else the whole reply. Hygiene happens later."""
    spans: list[str] = []
    rest = reply
    while INS_OPEN in rest:
        _, _, after = rest.partition(INS_OPEN)
        body, sep, rest = after.partition(INS_CLOSE)
        spans.append(body)
        if not sep:
            break
    if spans:
        return spans
    head, sep, _ = reply.partition(INS_CLOSE)
    return [head if sep else reply]
