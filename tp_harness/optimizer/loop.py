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
Racing on evidence (``race="bound"``, F-Race, Birattari et al. 2002; irace): the optimize split is cut into
``race_blocks`` blocks (a permutation seeded by the step); the step's candidates are scored block by block (journal
``eval: partial`` with ``block``). After each block the leader is the racer with the best composite on the docs seen
so far, the incumbent (the best fully scored prompt, whose per-doc records on those docs come from its full row at
no cost) included, and a candidate is dropped once the caller's paired bound (the one-sided upper bound of its
composite minus the leader's on those docs) is below 0. A candidate that survives every block has been scored on the
whole split; its full row is merged from its block rows (``merged_blocks`` set, no new scorer requests). A candidate
that left a race is not proposed again in the stage (as a fully scored one is not).
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
    """Settings of one stage (DESIGN.md section 2 defaults).

    Racing: ``minibatch`` (docs per task) turns it on; ``race`` is ``halving`` (the best ``promote`` of the
    minibatch go on to the full split) or ``bound`` (racing on evidence over ``race_blocks`` blocks of the split,
    ``minibatch`` docs each; see the module docstring).
    """

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
    race_blocks: int | None = None

    def at_step(self, step: int) -> StageSettings:
        """These settings for ``step``: the last step proposes ``last_step_candidates`` when that is set."""
        if step == self.steps and self.last_step_candidates is not None:
            return replace(self, num_candidates=self.last_step_candidates, last_step_candidates=None)
        return self

    @property
    def racing(self) -> bool:
        """Whether candidates are raced on minibatches before full scoring."""
        return self.minibatch is not None


@dataclass(frozen=True)
class Block:
    """Racing on evidence: part ``index`` (0-based) of ``of`` near-equal parts of a step's seeded permutation of the
    optimize split (of every task's split in stage 1)."""

    index: int
    of: int


#: scores candidates of one step on a minibatch of that many docs per task (seeded by the step), on one
#: :class:`Block` of the split, or on the full optimize split (None): (candidates, step, part) -> one
#: (metrics, extra row fields) per candidate
ScoreFn = Callable[[Sequence[Candidate], int, "int | Block | None"],
                   list[tuple[dict[str, float | None], dict[str, Any]]]]
class RaceFns(Protocol):
    """What racing on evidence asks of the caller (``tp_harness.optimizer.transfer.RaceOnEvidence`` implements it).

    Rows are journal rows with per-doc records: a full row (the incumbent's) or one racer's block rows so far.
    """

    def composite(self, rows: Sequence[dict], docs: Sequence[dict]) -> float | None:
        """The composite of ``rows``' records on the docs that ``docs`` (another racer's rows) hold; None when
        it cannot be computed."""

    def bound(self, reference: Sequence[dict], candidate: Sequence[dict]) -> float | None:
        """The one-sided upper bound of the candidate's composite minus the reference's over the candidate's docs
        (paired); None when it cannot be computed (the candidate is never dropped then)."""

    def merge(self, rows: Sequence[dict]) -> tuple[dict[str, float | None], dict[str, Any]]:
        """A survivor's (metrics, extra row fields) on the full split from its block rows (every block once)."""


#: writes one scored row to the journal
Sink = Callable[[dict], None]
#: finds the journal row of (step, prompt sha, eval) if it was scored already (eval: partial or full); racing on
#: evidence also passes ``block=`` (the block index of a partial row)
Recall = Callable[..., "dict | None"]


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
    race: RaceFns | None = None,
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
    :param race: racing with ``settings.race == "bound"``: the point estimate, paired bound and merge that racing on
        evidence decides with (:class:`RaceFns`); required then.
    :raises ValueError: ``race == "bound"`` without ``race``, or with fewer than 2 blocks.
    """
    if settings.racing and settings.race == "bound":
        if race is None:
            raise ValueError("racing on a bound (race='bound') needs race")
        if settings.race_blocks is None or settings.race_blocks < 2:
            raise ValueError(f"racing on a bound needs at least 2 blocks (race_blocks = {settings.race_blocks})")
    progress = progress or _Silent()
    history: list[ScoredPrompt] = []
    raced_out: list[str] = []  # racing on evidence: candidates that left a race (never proposed again)
    partial: list[ScoredPrompt] = []
    base = dict(row_base or {})
    stage_settings = settings
    for step in range(stage_settings.steps + 1):
        settings = stage_settings.at_step(step)
        rng = random.Random(f"{seed}:{stage}:{step}")
        racing = settings.racing and step > 0
        bound_race = racing and settings.race == "bound"
        first_kind = "partial" if racing else "full"
        done = [r for r in recall_step(step) if eval_kind(r) == first_kind and r.get("block", 0) == 0] \
            if recall_step and step > 0 else []
        if done and len(done) == done[0].get("num_candidates"):
            rows = sorted(done, key=lambda r: r["candidate_index"])
            cands = [Candidate(r["prompt"], r["proposer"], operation=r.get("operation") or "") for r in rows]
        elif step == 0:
            cands, dropped = hygiene(initial, max_chars=10_000, min_chars=1)
        else:
            cands, dropped, rejected = _propose(history, description, reference, exemplars, settings, rng,
                                                seed=hash_seed(seed, stage, step), screen=screen, raced_out=raced_out)
            log.debug("%s step %d: hygiene dropped %s", stage, step, dropped)
            for cand, reason in rejected:
                log.info("%s step %d: rejected a %s proposal: %s", stage, step, cand.proposer, reason)
                if reject is not None:
                    reject({**base, "stage": "rejected", "of_stage": stage, "step": step, "proposer": cand.proposer,
                            "operation": cand.operation, "prompt": cand.text, "prompt_sha": prompt_sha(cand.text),
                            "reason": reason})
        if bound_race:
            scored = _race(cands, step, history, score, sink, recall, base, stage,
                           blocks=settings.race_blocks, race=race)  # type: ignore[arg-type]
            survivors = {p.sha for p in scored}
            raced_out.extend(c.text for c in cands if prompt_sha(c.text) not in survivors)
        else:
            scored = _score_step(cands, step, score, sink, recall, base, stage, kind=first_kind,
                                 part=settings.minibatch if racing else None)
        if racing and not bound_race:
            partial.extend(scored)
            promoted = _promote(scored, partial, history, step, settings)
            scored = _score_step([_candidate(p) for p in promoted], step,
                                 score, sink, recall, base, stage, kind="full", part=None)
        history.extend(scored)
        best = rank(history)[0].composite if history else None
        progress.advance(len(cands), step=step, best=best,
                         unused=max(0, settings.num_candidates - len(cands)) if step else 0)
        log.info("%s step %d: %d candidates, %d fully scored, best composite %s", stage, step, len(cands),
                 len(scored), best)
    return rank(history)


def _candidate(p: ScoredPrompt) -> Candidate:
    return Candidate(p.text, p.proposer, operation=p.row.get("operation") or "")


def _race(cands: Sequence[Candidate], step: int, history: Sequence[ScoredPrompt], score: ScoreFn, sink: Sink,
          recall: Recall, base: dict, stage: str, *, blocks: int, race: RaceFns) -> list[ScoredPrompt]:
    """Racing on evidence (F-Race): score the step's candidates block by block; after each block the leader is
    the racer (the incumbent included) with the best composite on the docs seen, and a candidate is dropped once
    ``race.bound`` says it is worse than the leader there. Returns the survivors' full scores (merged from their
    blocks), in step order."""
    incumbent = rank(history)[0]
    known = {p.sha for p in history}
    alive = [c for c in cands if prompt_sha(c.text) not in known]
    seen: dict[str, list[dict]] = {}
    for k in range(blocks):
        if not alive:
            break
        for p in _score_step(alive, step, score, sink, recall, base, stage, kind="partial", part=Block(k, blocks)):
            seen.setdefault(p.sha, []).append(p.row)
        if k == blocks - 1:
            break
        racers = {prompt_sha(c.text): seen[prompt_sha(c.text)] for c in alive}
        docs = next(iter(racers.values()))  # every racer has seen the same blocks
        points = {sha: race.composite(rows, docs) for sha, rows in racers.items()}
        points[incumbent.sha] = race.composite([incumbent.row], docs)
        known_points = {sha: v for sha, v in points.items() if v is not None}
        if not known_points:
            continue
        leader = max(known_points, key=lambda sha: (known_points[sha], sha == incumbent.sha))
        leader_rows = [incumbent.row] if leader == incumbent.sha else racers[leader]
        keep = []
        for c in alive:
            sha = prompt_sha(c.text)
            upper = None if sha == leader else race.bound(leader_rows, racers[sha])
            if upper is None or upper >= 0.0:
                keep.append(c)
        log.info("%s step %d: block %d of %d: %d of %d candidates race on (leader %s)", stage, step, k + 1, blocks,
                 len(keep), len(alive), "the incumbent" if leader == incumbent.sha else leader)
        alive = keep
    out = []
    for index, cand in enumerate(alive):
        sha = prompt_sha(cand.text)
        row = recall(step, sha, "full")
        if row is None:
            metrics, extra = race.merge(seen[sha])
            row = _new_row(base, stage, step, "full", index, len(alive), cand, sha, metrics,
                           {**extra, "merged_blocks": blocks})
            sink(row)
        out.append(_from_row(row))
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
             screen: Callable[[str], str | None] | None = None, raced_out: Sequence[str] = ()):
    ranked = rank(history)
    seen = [text_hash(p.text) for p in history] + [text_hash(t) for t in raced_out]  # nothing is scored twice
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
                part: int | Block | None) -> list[ScoredPrompt]:
    shas = [prompt_sha(c.text) for c in cands]
    block = {"block": part.index} if isinstance(part, Block) else {}
    recalled = {sha: recall(step, sha, kind, **block) for sha in shas}
    todo = [c for c, sha in zip(cands, shas) if recalled[sha] is None]
    fresh = dict(zip([prompt_sha(c.text) for c in todo], score(todo, step, part))) if todo else {}
    out = []
    for index, (cand, sha) in enumerate(zip(cands, shas)):
        if recalled[sha] is not None:
            row = recalled[sha]
        else:
            metrics, extra = fresh[sha]
            row = _new_row(base, stage, step, kind, index, len(cands), cand, sha, metrics, {**block, **extra})
            sink(row)
        out.append(_from_row(row))
    return out


def _new_row(base: dict, stage: str, step: int, kind: str, index: int, num: int, cand: Candidate, sha: str,
             metrics: dict, extra: dict) -> dict:
    """One scored journal row (docs/run-directory.md, "journal.jsonl")."""
    return {**base, "stage": stage, "step": step, "eval": kind, "candidate_index": index, "num_candidates": num,
            "proposer": cand.proposer, "operation": cand.operation, "prompt": cand.text, "prompt_sha": sha,
            "metrics": metrics, **extra}
