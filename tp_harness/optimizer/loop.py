"""One optimization stage: the OPRO loop with the paper's multi-metric evaluator.

Owns the per-step cycle of Transfer-Prompting (arXiv 2502.14211, section 3; OPRO, Yang et al. 2023):
build the meta-prompt from the history, sample candidates from the reference LLM, add evolutionary
edits of the best instructions, apply hygiene, score the candidates through the caller's scoring
function, append them to the history and hand each scored row to the caller's sink (the journal).
Racing (successive halving, as DSPy's MIPROv2 does with minibatches): with ``minibatch`` set, a step's
candidates are first scored on a seeded minibatch of the optimize split (journal ``eval: partial``); only
the best ``promote`` of them are scored on the full split (``eval: full``), and every
``full_eval_interval`` steps the best partially scored candidate not yet fully scored is promoted too.
The history the meta-prompt shows and every selection use full scores only.
Racing on evidence (``race="bound"``, F-Race's rule, Birattari et al. 2002; irace): the step's candidates and the
incumbent (the best fully scored prompt so far, journal ``eval: incumbent``) are scored on the same minibatch; a
candidate is dropped only when the caller's paired bound (``race_bound``: the one-sided upper bound of its composite
minus the incumbent's over the minibatch's docs) is below 0, and every other candidate is scored on the full split.
Resume: rows already in the journal are recalled instead of re-scored, and every random choice of a
step is seeded by (seed, stage, step), so an interrupted run resumed ends where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tp_harness.constants import DEFAULT_REFERENCE_SHARE
from tp_harness.evaluation.evaluator import prompt_sha
from tp_harness.optimizer.candidates import Candidate, evolve, hygiene, text_hash
from tp_harness.optimizer.meta_prompt import Exemplar, build_meta_prompt, extract_instructions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredPrompt:
    """A scored instruction in the history.

    :ivar composite: the composite in [0, 1] on the stage's optimize split(s) (mean over tasks in stage 1).
    :ivar metrics: every metric value (mean over tasks in stage 1), plus ``composite``.
    """

    text: str
    sha: str
    proposer: str
    composite: float | None
    metrics: dict[str, float | None]
    step: int
    row: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def rank_key(self) -> tuple[float, int]:
        return (-1.0 if self.composite is None else self.composite, -self.step)


class Progress(Protocol):
    """What a stage reports while it runs (the CLI passes a tqdm bar; the default is silent)."""

    def advance(self, n: int = 1, *, step: int | None = None, best: float | None = None, unused: int = 0) -> None:
        """Count ``n`` scored candidates; ``unused`` planned slots of the step that hygiene left empty."""


class _Silent:
    def advance(self, n: int = 1, *, step: int | None = None, best: float | None = None, unused: int = 0) -> None:
        pass


@dataclass(frozen=True)
class StageSettings:
    """Settings of one stage (DESIGN.md section 2 defaults)."""

    steps: int
    num_candidates: int = 8
    reference_share: float = DEFAULT_REFERENCE_SHARE
    max_history: int = 20
    num_exemplars: int = 3
    max_chars: int = 500
    temperature: float = 1.0
    reference_max_tokens: int = 96
    minibatch: int | None = None
    promote: int = 2
    full_eval_interval: int = 0
    last_step_candidates: int | None = None
    race: str = "halving"

    def at_step(self, step: int) -> StageSettings:
        """These settings for ``step``: the last step proposes ``last_step_candidates`` when that is set."""
        if step == self.steps and self.last_step_candidates is not None:
            return replace(self, num_candidates=self.last_step_candidates, last_step_candidates=None)
        return self

    @property
    def racing(self) -> bool:
        """Whether candidates are raced on minibatches before full scoring."""
        return self.minibatch is not None


#: scores candidates of one step on a minibatch of that many docs per task (seeded by the step), or on the
#: full optimize split (None): (candidates, step, minibatch) -> one (metrics, extra row fields) per candidate
ScoreFn = Callable[[Sequence[Candidate], int, "int | None"], list[tuple[dict[str, float | None], dict[str, Any]]]]
#: racing on evidence: (incumbent's minibatch row, candidate's minibatch row) -> the one-sided upper bound of the
#: candidate's composite minus the incumbent's over the same docs, or None when it cannot be computed (never dropped)
RaceBound = Callable[[dict, dict], "float | None"]
#: writes one scored row to the journal
Sink = Callable[[dict], None]
#: finds the journal row of (step, prompt sha, eval) if it was scored already (eval: partial or full)
Recall = Callable[[int, str, str], dict | None]


def eval_kind(row: dict) -> str:
    """``partial`` (a minibatch score) or ``full`` (the whole optimize split); rows before racing are full."""
    return row.get("eval", "full")


def rank(history: Sequence[ScoredPrompt]) -> list[ScoredPrompt]:
    """History sorted best first (composite, then earlier step)."""
    return sorted(history, key=lambda p: p.rank_key, reverse=True)


def run_stage(
    *,
    stage: str,
    description: str,
    initial: Sequence[Candidate],
    score: ScoreFn,
    sink: Sink,
    recall: Recall,
    reference: Any,
    exemplars: Callable[[random.Random], list[Exemplar]],
    settings: StageSettings,
    seed: int,
    progress: Progress | None = None,
    row_base: dict[str, Any] | None = None,
    recall_step: Callable[[int], list[dict]] | None = None,
    screen: Callable[[str], str | None] | None = None,
    reject: Sink | None = None,
    race_bound: RaceBound | None = None,
) -> list[ScoredPrompt]:
    """Run one stage and return its whole history (initial prompts included), best first.

    :param stage: ``source`` or ``target`` (journal value); also salts the step seeds.
    :param initial: step-0 prompts (originals, and in stage 2 the transferred source prompts).
    :param score: scores a list of candidates on the stage's optimize split(s).
    :param sink: receives each scored row (the journal writer).
    :param recall: returns the journal row of an already scored (step, prompt sha), for ``--resume``.
    :param reference: the reference LLM backend (``sample(prompt, num_samples=..., ...)``).
    :param exemplars: draws the meta-prompt's (question, answer) examples with the step's generator.
    :param recall_step: returns the journal rows of a step; a step whose rows are all there (as many
        as its ``num_candidates``) is taken from the journal without asking the reference LLM again.
    :param screen: the anti-overfit guard: returns why a proposed instruction is rejected (it copies the task's
        data, :mod:`tp_harness.optimizer.overfit`), or None to score it. Originals and transferred seeds are not
        screened; a rejected proposal's slot goes to the next proposal (evolutionary edits fill what is left).
    :param reject: receives one row per rejected proposal (``stage: rejected``, ``of_stage``, ``step``,
        ``proposer``, ``prompt``, ``prompt_sha``, ``reason``); the journal writer.
    :param race_bound: racing with ``settings.race == "bound"``: the paired bound that decides which candidates are
        dropped after the minibatch (:data:`RaceBound`); required then.
    :raises ValueError: ``race == "bound"`` without ``race_bound``.
    """
    if settings.racing and settings.race == "bound" and race_bound is None:
        raise ValueError("racing on a bound (race='bound') needs race_bound")
    progress = progress or _Silent()
    history: list[ScoredPrompt] = []
    partial: list[ScoredPrompt] = []
    base = dict(row_base or {})
    stage_settings = settings
    for step in range(stage_settings.steps + 1):
        settings = stage_settings.at_step(step)
        rng = random.Random(f"{seed}:{stage}:{step}")
        racing = settings.racing and step > 0
        first_kind = "partial" if racing else "full"
        done = [r for r in recall_step(step) if eval_kind(r) == first_kind] if recall_step and step > 0 else []
        if done and len(done) == done[0].get("num_candidates"):
            rows = sorted(done, key=lambda r: r["candidate_index"])
            cands = [Candidate(r["prompt"], r["proposer"], operation=r.get("operation") or "") for r in rows]
        elif step == 0:
            cands, dropped = hygiene(initial, max_chars=10_000, min_chars=1)
        else:
            cands, dropped, rejected = _propose(history, description, reference, exemplars, settings, rng,
                                                seed=hash_seed(seed, stage, step), screen=screen)
            log.debug("%s step %d: hygiene dropped %s", stage, step, dropped)
            for cand, reason in rejected:
                log.info("%s step %d: rejected a %s proposal: %s", stage, step, cand.proposer, reason)
                if reject is not None:
                    reject({**base, "stage": "rejected", "of_stage": stage, "step": step, "proposer": cand.proposer,
                            "operation": cand.operation, "prompt": cand.text, "prompt_sha": prompt_sha(cand.text),
                            "reason": reason})
        scored = _score_step(cands, step, score, sink, recall, base, stage, kind=first_kind,
                             minibatch=settings.minibatch if racing else None)
        if racing and settings.race == "bound":
            incumbent = rank(history)[0]
            (on_minibatch,) = _score_step([_candidate(incumbent)], step, score, sink, recall, base, stage,
                                          kind="incumbent", minibatch=settings.minibatch)
            promoted = _survivors(scored, on_minibatch, history, race_bound)  # type: ignore[arg-type]
            log.info("%s step %d: racing on evidence kept %d of %d candidates for the full split", stage, step,
                     len(promoted), len(scored))
            scored = _score_step([_candidate(p) for p in promoted], step, score, sink, recall, base, stage,
                                 kind="full", minibatch=None)
        elif racing:
            partial.extend(scored)
            promoted = _promote(scored, partial, history, step, settings)
            scored = _score_step([_candidate(p) for p in promoted], step,
                                 score, sink, recall, base, stage, kind="full", minibatch=None)
        history.extend(scored)
        best = rank(history)[0].composite if history else None
        progress.advance(len(cands), step=step, best=best,
                         unused=max(0, settings.num_candidates - len(cands)) if step else 0)
        log.info("%s step %d: %d candidates, %d fully scored, best composite %s", stage, step, len(cands),
                 len(scored), best)
    return rank(history)


def _candidate(p: ScoredPrompt) -> Candidate:
    return Candidate(p.text, p.proposer, operation=p.row.get("operation") or "")


def _survivors(step_scored: Sequence[ScoredPrompt], incumbent: ScoredPrompt, history: Sequence[ScoredPrompt],
               bound: RaceBound) -> list[ScoredPrompt]:
    """Racing on evidence: the step's candidates not yet fully scored, except those whose paired upper bound
    against the incumbent on the same minibatch is below 0 (worse beyond the bound). Step order is kept."""
    full = {p.sha for p in history}
    out = []
    for p in step_scored:
        if p.sha in full:
            continue
        upper = bound(incumbent.row, p.row)
        if upper is None or upper >= 0.0:
            out.append(p)
    return out


def _promote(step_scored: Sequence[ScoredPrompt], partial: Sequence[ScoredPrompt], history: Sequence[ScoredPrompt],
             step: int, settings: StageSettings) -> list[ScoredPrompt]:
    """Successive halving: the step's best ``promote`` by minibatch score, plus every ``full_eval_interval``
    steps the best minibatch-scored candidate of any step that has no full score yet (MIPROv2's periodic
    full evaluation)."""
    full = {p.sha for p in history}
    out = [p for p in rank(step_scored) if p.sha not in full][: settings.promote]
    if settings.full_eval_interval and step % settings.full_eval_interval == 0:
        chosen = {p.sha for p in out}
        pool = [p for p in partial if p.sha not in full and p.sha not in chosen]
        if pool:
            out.append(rank(pool)[0])
    return out


def _from_row(row: dict) -> ScoredPrompt:
    return ScoredPrompt(text=row["prompt"], sha=row["prompt_sha"], proposer=row["proposer"],
                        composite=row["metrics"].get("composite"), metrics=row["metrics"], step=row["step"], row=row)


def hash_seed(seed: int, stage: str, step: int) -> int:
    """A 31-bit seed for the reference LLM's sampling at (run seed, stage, step)."""
    return int(text_hash(f"{seed}:{stage}:{step}"), 16) % (2**31 - 1)


def _screened(cands: list[Candidate], screen: Callable[[str], str | None] | None,
              rejected: list[tuple[Candidate, str]]) -> list[Candidate]:
    """The candidates ``screen`` lets through; the others are appended to ``rejected`` with the reason."""
    if screen is None:
        return cands
    out = []
    for cand in cands:
        reason = screen(cand.text)
        if reason is None:
            out.append(cand)
        else:
            rejected.append((cand, reason))
    return out


def _propose(history, description, reference, exemplars, settings: StageSettings, rng: random.Random, *, seed: int,
             screen: Callable[[str], str | None] | None = None):
    ranked = rank(history)
    seen = [text_hash(p.text) for p in history]
    num_ref = round(settings.num_candidates * settings.reference_share)
    raw: list[Candidate] = []
    rejected: list[tuple[Candidate, str]] = []
    if num_ref > 0 and reference is not None:
        meta = build_meta_prompt(description, [(p.text, p.composite) for p in history], exemplars(rng),
                                 max_history=settings.max_history)
        replies = reference.sample(meta, num_samples=num_ref, temperature=settings.temperature,
                                   max_tokens=settings.reference_max_tokens, seed=seed)
        for reply in replies:
            raw.extend(Candidate(text=t, proposer="reference") for t in extract_instructions(reply)[:1])
    kept, dropped = hygiene(raw, seen=seen, max_chars=settings.max_chars)
    kept = _screened(kept, screen, rejected)
    need = settings.num_candidates - len(kept)
    if need > 0:
        evo = evolve([p.text for p in ranked], num=need * 3, rng=rng)
        more, dropped_evo = hygiene(evo, seen=seen + [text_hash(c.text) for c in kept], max_chars=settings.max_chars)
        # screened in order until the step is full, so a rejection costs a slot only when nothing else is left
        for cand in more:
            if need <= 0:
                break
            if _screened([cand], screen, rejected):
                kept.append(cand)
                need -= 1
        for k, v in dropped_evo.items():
            dropped[k] = dropped.get(k, 0) + v
    return kept, dropped, rejected


def _score_step(cands, step, score: ScoreFn, sink: Sink, recall: Recall, base: dict, stage: str, *, kind: str,
                minibatch: int | None) -> list[ScoredPrompt]:
    shas = [prompt_sha(c.text) for c in cands]
    recalled = {sha: recall(step, sha, kind) for sha in shas}
    todo = [c for c, sha in zip(cands, shas) if recalled[sha] is None]
    fresh = dict(zip([prompt_sha(c.text) for c in todo], score(todo, step, minibatch))) if todo else {}
    out = []
    for index, (cand, sha) in enumerate(zip(cands, shas)):
        if recalled[sha] is not None:
            row = recalled[sha]
        else:
            metrics, extra = fresh[sha]
            row = {**base, "stage": stage, "step": step, "eval": kind, "candidate_index": index,
                   "num_candidates": len(cands), "proposer": cand.proposer, "operation": cand.operation,
                   "prompt": cand.text, "prompt_sha": sha, "metrics": metrics, **extra}
            sink(row)
        out.append(_from_row(row))
    return out
