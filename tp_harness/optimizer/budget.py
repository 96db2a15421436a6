"""Budgets: how much search a run does (steps, candidates, samples per split), and its projected cost.

Owns the ``--budget smoke|light|medium|heavy`` presets and the projection of scorer and reference
calls printed before a run. Pure data and arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from tp_harness.errors import UsageError


@dataclass(frozen=True)
class Budget:
    """One budget preset.

    :ivar steps: optimization steps per stage (each proposes ``num_candidates`` instructions).
    :ivar optimize_n, validation_n, test_n: samples per split per task (caps on the spec's splits;
        ``None`` means the spec's full split).
    :ivar k_source: best source prompts kept after stage 1 and transferred to stage 2.
    :ivar finalists: best target candidates re-scored on the validation split for the final choice.
    :ivar minibatch: racing: docs per task a step's candidates are first scored on (None: no racing, every
        candidate is scored on the full optimize split).
    :ivar promote: racing: candidates per step promoted from the minibatch to the full optimize split.
    :ivar full_eval_interval: racing: every this many steps, the best minibatch-scored candidate without a
        full score is promoted too (0: never).
    :ivar race: how racing decides which minibatch-scored candidates go on to the full optimize split:
        ``halving`` (the best ``promote`` by minibatch score, as MIPROv2) or ``bound`` (F-Race: candidates are
        scored block by block of the split and dropped once a paired-bootstrap bound on the docs seen says they are
        worse than the incumbent; survivors end fully scored; ``promote`` and ``full_eval_interval`` are not used).
        See :mod:`tp_harness.optimizer.loop`.
    :ivar race_alpha: ``bound``: a candidate is dropped when the one-sided ``1 - race_alpha`` upper bound of its
        composite minus the incumbent's, on the docs it has been scored on, is below 0.
    :ivar minibatch_fraction: ``bound``: a block is ``max(minibatch, ceil(minibatch_fraction * N))`` docs of an
        N-doc optimize split (it grows with the split), the split holds ``N // block`` blocks, and racing is off
        when that is fewer than 2.
    :ivar last_step_candidates: the last step proposes this many candidates instead of ``num_candidates`` (an
        equal-budget ablation matches another mode's candidate count exactly with it); None: ``num_candidates``.
    """

    name: str
    steps: int
    num_candidates: int
    optimize_n: int | None
    validation_n: int | None
    test_n: int | None
    k_source: int
    finalists: int
    reference_max_tokens: int = 96
    minibatch: int | None = None
    promote: int = 2
    full_eval_interval: int = 0
    last_step_candidates: int | None = None
    race: str = "halving"
    race_alpha: float = 0.2
    minibatch_fraction: float = 0.125

    def step_candidates(self, step: int) -> int:
        """Candidates proposed at ``step`` (1-based; step 0 scores the initial prompts)."""
        if step == self.steps and self.last_step_candidates is not None:
            return self.last_step_candidates
        return self.num_candidates

    def caps(self) -> dict[str, int]:
        """Per-split caps for :func:`tp_harness.data.splits.split_docs`."""
        return {k: v for k, v in (("optimize", self.optimize_n), ("validation", self.validation_n),
                                  ("test", self.test_n)) if v is not None}


BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", steps=1, num_candidates=3, optimize_n=6, validation_n=6, test_n=12, k_source=2,
                    finalists=2, reference_max_tokens=48, minibatch=3, promote=1, full_eval_interval=0),
    # smoke's search with 32 test samples per task: the committed example sweep (README, results/LEADERBOARD.md)
    "sweep": Budget("sweep", steps=1, num_candidates=3, optimize_n=6, validation_n=6, test_n=32, k_source=2,
                    finalists=2, reference_max_tokens=48, minibatch=3, promote=1, full_eval_interval=0),
    # light, medium and heavy race on evidence (blocks of 1/8 of the optimize split, at least `minibatch` docs; a
    # one-sided 80% bound): over 2 tasks x 5 seeds it made 0.37 of full evaluation's search-phase scorer calls at no
    # loss of test composite (+0.013 [+0.001, +0.026]); successive halving cost 0.114 (docs/performance.md)
    "light": Budget("light", steps=3, num_candidates=6, optimize_n=24, validation_n=32, test_n=96, k_source=3,
                    finalists=3, minibatch=8, race="bound"),
    # light's search without racing, the spec's whole test split (up to 128 docs for the shipped specs): the evidence
    # study (README, issue 18): an equal-budget ablation needs a cost that does not depend on the scores.
    "evidence": Budget("evidence", steps=3, num_candidates=6, optimize_n=24, validation_n=32, test_n=None, k_source=3,
                       finalists=3, minibatch=None),
    "medium": Budget("medium", steps=6, num_candidates=8, optimize_n=64, validation_n=64, test_n=128, k_source=5,
                     finalists=5, minibatch=8, race="bound"),
    "heavy": Budget("heavy", steps=12, num_candidates=8, optimize_n=None, validation_n=None, test_n=None,
                    k_source=5, finalists=5, minibatch=16, race="bound"),
}


def get_budget(name: str) -> Budget:
    """The preset called ``name``; :raises UsageError: for an unknown name, listing the valid ones."""
    if name not in BUDGETS:
        raise UsageError(f"--budget {name!r} is not a budget; use one of: {', '.join(BUDGETS)}")
    return BUDGETS[name]


@dataclass(frozen=True)
class Projection:
    """Projected calls of a run: scorer requests (loglikelihood or generate_until) and reference samples.

    :ivar at_most: the scorer requests are an upper bound (racing on evidence: what it saves depends on the scores).
    """

    scorer_requests: int
    reference_samples: int
    candidates: int
    at_most: bool = False

    def describe(self) -> str:
        """The one-line projection ``tp-harness optimize`` prints before a run starts."""
        requests = f"{'at most ' if self.at_most else ''}{self.scorer_requests:,} scorer requests"
        return f"projected: {self.candidates} candidate evaluations, {requests}, {self.reference_samples} reference-LLM samples"
