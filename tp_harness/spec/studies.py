"""Named studies: the source and target tasks of a whole Transfer-Prompting experiment.

A study fixes which general tasks stage 1 (source prompt construction) optimizes on and which domain
tasks stage 2 (target prompt generation) refines for, so a published setup is one flag:
``tp-harness optimize --study paper`` (or ``tp-harness sweep --study paper``).

``paper`` mirrors the structure of Chang, Chang & Wu (2025, arXiv 2502.14211, section 4.1): general
knowledge and reasoning sources (LogiQA, MMLU general knowledge, CommonsenseQA) transferring to target
tasks in the medical (MedQA-USMLE, MedMCQA, PubMedQA), legal (the five LegalBench tasks) and financial
(Financial PhraseBank) domains. Every task is a shipped spec under ``task_specs/`` (docs/datasets.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from tp_harness.errors import UsageError


@dataclass(frozen=True)
class Study:
    """One named study.

    :param name: what ``--study`` takes.
    :param description: one line for ``--help`` and the docs.
    :param sources: source task names (stage 1), in order.
    :param targets: target task names (stage 2), grouped by domain, in order.
    :param reference: where the setup comes from (paper and section).
    """

    name: str
    description: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    reference: str = ""


STUDIES: dict[str, Study] = {
    "paper": Study(
        name="paper",
        description="general sources (LogiQA, MMLU general, CommonsenseQA) -> medical, legal and financial targets",
        sources=("logiqa", "mmlu_general", "commonsenseqa"),
        targets=(
            "medqa_usmle", "medmcqa", "pubmedqa",
            "legalbench_hearsay", "legalbench_abercrombie", "legalbench_proa", "legalbench_diversity_1",
            "legalbench_personal_jurisdiction",
            "financial_phrasebank",
        ),
        reference="Chang, Chang & Wu (2025), arXiv 2502.14211, section 4.1 (datasets across domains)",
    ),
}


def get_study(name: str) -> Study:
    """The study named ``name``.

    :raises UsageError: no such study; the message lists the known ones.
    """
    try:
        return STUDIES[name]
    except KeyError:
        known = ", ".join(f"{s.name} ({s.description})" for s in STUDIES.values())
        raise UsageError(f"--study {name!r} is not a known study; known: {known}") from None


def resolve_tasks(study: str | None, sources: list[str] | None, targets: list[str] | None,
                  default_sources: tuple[str, ...], default_targets: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The source and target task lists of a command line: a study's, the flags', or the defaults.

    :param study: ``--study`` or None.
    :param sources: ``--sources`` as given, or None when the flag was not given.
    :param targets: ``--targets`` as given, or None when the flag was not given.
    :return: ``(sources, targets)``.
    :raises UsageError: ``--study`` together with ``--sources`` or ``--targets``, or an unknown study.
    """
    if study is None:
        return (list(default_sources) if sources is None else sources,
                list(default_targets) if targets is None else targets)
    chosen = get_study(study)
    given = [flag for flag, value in (("--sources", sources), ("--targets", targets)) if value is not None]
    if given:
        raise UsageError(f"--study {study} sets the source and target tasks; drop {' and '.join(given)}, "
                         "or drop --study and name the tasks yourself")
    return list(chosen.sources), list(chosen.targets)
