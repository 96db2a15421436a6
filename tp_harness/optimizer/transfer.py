"""Two-stage Transfer-Prompting: source prompt construction, then target prompt generation.

Owns the run-level algorithm of Chang, Chang & Wu (2025, arXiv 2502.14211, sections 3.1-3.2):
stage 1 optimizes one instruction set over >= 2 source tasks (composite averaged over them) and keeps
the top ``k_source``; stage 2 re-scores those and the target's original instruction on the target's
optimize split, seeds the history with them and optimizes on the target; the final prompt is chosen
on the target validation split and reported with the original on the test split. The ablations
``no_transfer`` (stage 2 from the original alone) and ``source_only`` (stage 1's best used as is) are
modes. Every scored candidate goes to the run journal; finished rows are recalled on ``--resume``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from tp_harness.backends.base import LMBackend
from tp_harness.constants import DEFAULT_REFERENCE_SHARE, DEFAULT_SELECTION_ALPHA
from tp_harness.errors import UsageError
from tp_harness.evaluation.evaluator import (
    EvalJob,
    Evaluation,
    PreparedTask,
    count_scorer_requests,
    evaluate_jobs,
    metrics_of,
    prompt_sha,
)
from tp_harness.evaluation.metrics import SampleRecord
from tp_harness.optimizer.budget import Budget, Projection
from tp_harness.optimizer.candidates import Candidate
from tp_harness.optimizer.loop import Block, Progress, ScoredPrompt, StageSettings, eval_kind, rank, run_stage
from tp_harness.optimizer.meta_prompt import Exemplar
from tp_harness.optimizer.overfit import task_spans
from tp_harness.plugin.hookspecs import OptimizerDef, Registries, Registry, hookimpl

log = logging.getLogger(__name__)

PROMPT_KINDS = ("original", "best_source", "best_target")
#: the guarded final choice computes a bound only from this many validation docs on (fewer: the original is kept)
MIN_GUARD_DOCS = 20


class RunStore(Protocol):
    """Where a run keeps its journal and samples (``tp_harness.store.journal.RunDir`` implements it).

    The optimizer writes through this interface only; it does not know the directory layout.
    """

    def append(self, row: dict) -> None:
        """Append one journal row (durable when it returns)."""

    def find(self, **match: Any) -> list[dict]:
        """The journal rows whose fields equal every ``match`` item, in journal order."""

    def write_samples(self, task: str, split: str, kind: str, rows: Sequence[dict]) -> None:
        """Store the per-sample records of one final evaluation (task, split, prompt kind)."""

    def read_samples(self, task: str, split: str, kind: str) -> list[dict]:
        """The records :meth:`write_samples` stored for (task, split, prompt kind); ``[]`` when none."""


@dataclass(frozen=True)
class RunContext:
    """Everything one optimization run needs; built once by ``prepare_run`` (CLI, API, sweep), then read-only.

    An optimizer reads it and never changes it: the ablation ``mode`` is decided before the run
    (``OptimizerDef.mode`` or the user's flag) and recorded in config.json before the first step.

    :ivar registries: every registered data format, metric, backend, optimizer and reporter.
    :ivar scorer: the scorer LLM (the model under test); :ivar reference: the reference LLM (may be ``scorer``).
    :ivar sources: prepared source tasks (empty in ``no_transfer``); :ivar targets: prepared target tasks.
    :ivar budget: steps, candidates and split sizes; :ivar seed: the run's seed.
    :ivar mode: one of :data:`tp_harness.constants.ABLATION_MODES`.
    :ivar run: the run store (journal rows, samples, config.json).
    :ivar progress: ``progress(label, total) -> Progress`` makes one progress bar per stage, or None.
    :ivar reference_share: share of each step's candidates written by the reference LLM, in [0, 1].
    :ivar optimizer_options: ``--optimizer-option KEY=VALUE`` pairs, for the optimizer to read.
    :ivar selection_alpha: the final prompt replaces the original only when the paired-bootstrap ``1 - alpha`` lower
        bound of its validation-composite gain is above 0 (:func:`guard_selection`); None: no guard.
    """

    registries: Registries
    scorer: LMBackend
    reference: LMBackend
    sources: list[PreparedTask]
    targets: list[PreparedTask]
    budget: Budget
    seed: int
    mode: str
    run: RunStore
    progress: Callable[[str, int], Progress] | None = None
    reference_share: float = DEFAULT_REFERENCE_SHARE
    optimizer_options: Mapping[str, str] = field(default_factory=dict)
    #: the guarded final choice (:func:`guard_selection`): the one-sided level of the paired-bootstrap bound; None: off
    selection_alpha: float | None = DEFAULT_SELECTION_ALPHA


@dataclass
class TargetOutcome:
    """The final evaluations of one target task: test-split evaluations by prompt kind."""

    task: str
    prompts: dict[str, str] = field(default_factory=dict)
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    #: the guarded final choice (:class:`SelectionGuard` as a dict), when the run guarded it
    selection: dict[str, Any] | None = None


@dataclass(frozen=True)
class SelectionGuard:
    """The guarded final choice on one target (arXiv 2502.14211 picks the validation argmax; this adds the guard).

    :ivar candidate: the optimizer's choice (the validation argmax of its finalists).
    :ivar kept_original: True when the candidate did not beat the original beyond noise: the original ships.
    :ivar difference: validation composite, candidate minus original (same docs), or None when undefined.
    :ivar lower_bound: the one-sided ``1 - alpha`` paired-bootstrap lower bound of that difference, or None.
    :ivar alpha: the bound's level; :ivar n: validation docs; :ivar reason: one line for reports.
    """

    candidate: str
    kept_original: bool
    difference: float | None
    lower_bound: float | None
    alpha: float
    n: int
    reason: str


@dataclass
class RunOutcome:
    """What a run found: best source prompts, per-target outcomes and the trajectory rows."""

    source_prompts: list[ScoredPrompt]
    targets: list[TargetOutcome]


def project_calls(ctx: RunContext) -> Projection:
    """Project candidate evaluations, scorer requests and reference samples of the run.

    Counts what the harness will ask of the scorer (cache hits included): step 0 and, per step,
    ``num_candidates`` scored on the minibatch (racing) or the full optimize split, plus the promoted and
    periodically promoted candidates on the full split; finalists on validation; final prompts on test. Racing on
    evidence projects every candidate on the whole split (``at_most``: it can only save).
    """
    b = ctx.budget
    search = search_cost(ctx)
    cands, requests, ref = search["candidates"], search["scorer_requests"], search["reference_samples"]
    for t in ctx.targets:
        if ctx.mode != "source_only":
            cands += b.finalists
            requests += b.finalists * count_scorer_requests(t, "validation")
        if ctx.selection_alpha is not None:  # the guard scores the original and the choice on validation
            requests += 2 * count_scorer_requests(t, "validation")
        finals = 3 if ctx.mode == "two_stage" else 2
        cands += finals
        requests += finals * count_scorer_requests(t, "test")
    return Projection(scorer_requests=requests, reference_samples=ref, candidates=cands,
                      at_most=b.minibatch is not None and b.race == "bound")


def search_cost(ctx: Any) -> dict[str, int]:
    """The search's cost: candidate evaluations and scorer requests of stage 1 and stage 2 (no validation, guard
    or test scoring, which every mode pays alike), and reference-LLM samples. What equal-budget ablations match.

    :param ctx: a :class:`RunContext` (or anything with its ``budget``, ``mode``, ``sources``, ``targets``,
        ``reference_share``).
    """
    b = ctx.budget
    cands = requests = ref = 0

    def stage(tasks: Sequence[PreparedTask], initial: int) -> None:
        nonlocal cands, requests, ref
        full = sum(count_scorer_requests(t, "optimize") for t in tasks)
        m = _minibatch(ctx, tasks)
        mini = sum(count_scorer_requests(t, "optimize", m) for t in tasks) if m is not None else None
        cands += initial + sum(b.step_candidates(step) for step in range(1, b.steps + 1))
        requests += _stage_requests(b, initial=initial, full=full, mini=mini)
        ref += sum(round(b.step_candidates(step) * ctx.reference_share) for step in range(1, b.steps + 1))

    if ctx.mode != "no_transfer" and ctx.sources:
        stage(ctx.sources, len(ctx.sources))
    if ctx.mode != "source_only":
        for t in ctx.targets:
            stage([t], 1 + (b.k_source if ctx.mode == "two_stage" else 0))
    return {"candidates": cands, "scorer_requests": requests, "reference_samples": ref}


def _stage_requests(b: Budget, *, initial: int, full: int, mini: int | None) -> int:
    """Scorer requests of one stage: ``initial`` prompts and every step's candidates on the full optimize split
    (``full`` requests per candidate), or, racing, on the minibatch (``mini``) plus the promoted ones on the full
    split."""
    requests = initial * full
    for step in range(1, b.steps + 1):
        n = b.step_candidates(step)
        if mini is None:
            requests += n * full
        elif b.race == "bound":  # at most: no candidate dropped, every one scored block by block on the whole split
            requests += n * full
        else:
            requests += n * mini + min(b.promote, n) * full
            if b.full_eval_interval and step % b.full_eval_interval == 0:
                requests += full
    return requests


def check_equal_budget(budget: Budget) -> None:
    """:raises UsageError: ``budget`` races on evidence, whose cost depends on the scores, so no equal budget exists."""
    if budget.minibatch is not None and budget.race == "bound":
        raise UsageError(f"budget {budget.name!r} races on evidence, whose cost depends on the scores: an equal-budget "
                         "ablation needs a fixed cost; use --budget evidence (light's search without racing)")


def equal_budget(budget: Budget, *, sources: Sequence[PreparedTask], target: PreparedTask,
                 target_full: PreparedTask, reference_share: float) -> tuple[Budget, dict[str, Any]]:
    """The ``no_transfer`` budget that matches ``two_stage``'s search on the same target (issue 18, item 2).

    The paper's claim that transfer beats direct optimization needs equal budgets: two-stage pays for stage 1 (the
    source tasks) and stage 2, ``--no-transfer`` for stage 2 alone. This gives ``no_transfer`` the same number of
    candidate evaluations (more steps; the last step proposes the remainder) and, by scoring each candidate on
    more optimize docs of the target (a larger optimize split and racing minibatch, searched for the closest
    total), scorer requests as close as the target's optimize split allows: within 10% when it holds enough docs.
    Validation, the guard and the test scoring are the same in both modes.

    :param sources, target: the two-stage run's prepared tasks (the budget's split caps).
    :param target_full: ``target`` prepared without an optimize cap (its whole optimize split).
    :raises UsageError: the budget races on evidence (:func:`check_equal_budget`).
    :return: the matched budget and a record of both modes' search cost (``two_stage``, ``no_transfer``,
        ``requests_ratio``, ``optimize_docs``) for config.json, results.json and the leaderboard.
    """
    from types import SimpleNamespace

    check_equal_budget(budget)
    two = search_cost(SimpleNamespace(budget=budget, mode="two_stage", sources=list(sources), targets=[target],
                                      reference_share=reference_share))
    extra = two["candidates"] - 1  # no_transfer's step 0 scores the original alone
    nc = budget.num_candidates
    steps = max(1, -(-extra // nc))
    last = extra - (steps - 1) * nc
    matched = replace(budget, steps=steps,  # the same name: the leaderboard groups the modes of one budget
                      last_step_candidates=None if last == nc else last)
    available = len(target_full.splits["optimize"])
    prefix = [count_scorer_requests(target_full, "optimize", k) for k in range(available + 1)]  # requests of k docs
    base_docs = max(1, min(budget.optimize_n or available, available))
    best: tuple[float, int, int, int | None] | None = None  # (gap, docs, requests, minibatch)
    for docs in range(base_docs, available + 1):
        minibatches: list[int | None] = [None]
        if matched.minibatch is not None:
            minibatches = [m for m in range(matched.minibatch, docs)] or [None]
        for m in minibatches:
            requests = _stage_requests(matched, initial=1, full=prefix[docs], mini=prefix[m] if m else None)
            gap = abs(requests - two["scorer_requests"]) / max(1, two["scorer_requests"])
            if best is None or gap < best[0] - 1e-12:
                best = (gap, docs, requests, m)
    assert best is not None
    _, docs, requests, minibatch = best
    matched = replace(matched, optimize_n=docs, minibatch=minibatch)
    record = {"two_stage": two, "no_transfer": {"candidates": 1 + extra, "scorer_requests": requests},
              "requests_ratio": round(requests / max(1, two["scorer_requests"]), 4), "optimize_docs": docs,
              "minibatch": minibatch,
              "steps": steps, "last_step_candidates": matched.last_step_candidates}
    return matched, record


def _minibatch(ctx: RunContext, tasks: Sequence[PreparedTask]) -> int | None:
    """The racing minibatch (docs per task), or None when the budget does not race or the split is too small.

    ``halving``: the budget's ``minibatch``, off when the smallest optimize split is not larger. ``bound``: the
    block, which grows with the split, ``max(minibatch, ceil(minibatch_fraction * N))`` for the smallest split's N
    docs; racing is off when the split holds fewer than 2 such blocks (a bound over so few docs decides little, and
    saves little).
    """
    b = ctx.budget
    if b.minibatch is None or not tasks:
        return None
    n = min(len(t.splits["optimize"]) for t in tasks)
    if b.race == "bound":
        m = max(b.minibatch, math.ceil(b.minibatch_fraction * n))
        return m if 2 * m <= n else None
    return b.minibatch if b.minibatch < n else None


def _settings(ctx: RunContext, tasks: Sequence[PreparedTask]) -> StageSettings:
    b = ctx.budget
    m = _minibatch(ctx, tasks)
    blocks = min(len(t.splits["optimize"]) for t in tasks) // m if m and b.race == "bound" else None
    return StageSettings(steps=b.steps, num_candidates=b.num_candidates, reference_share=ctx.reference_share,
                         reference_max_tokens=b.reference_max_tokens, minibatch=m, promote=b.promote,
                         full_eval_interval=b.full_eval_interval, last_step_candidates=b.last_step_candidates,
                         race=b.race, race_blocks=blocks)


def minibatch_ids(ctx: RunContext, stage: str, step: int, task: PreparedTask,
                  part: int | Block | None) -> tuple[int, ...] | None:
    """The optimize-split doc ids a step's candidates are scored on for one task; sorted, so requests batch the
    same way every time.

    ``part``: None (the whole split: returns None), a minibatch size (a sample seeded by run seed, stage, step and
    task) or a :class:`Block` (part ``index`` of ``of`` near-equal parts of a permutation seeded alike; the parts
    of one step cover the split once).
    """
    if part is None:
        return None
    n = len(task.splits["optimize"])
    if isinstance(part, Block):
        perm = list(range(n))
        random.Random(f"{ctx.seed}:{stage}:{step}:race:{task.name}").shuffle(perm)
        lo, hi = part.index * n // part.of, (part.index + 1) * n // part.of
        return tuple(sorted(perm[lo:hi]))
    rng = random.Random(f"{ctx.seed}:{stage}:{step}:minibatch:{task.name}")
    return tuple(sorted(rng.sample(range(n), min(part, n))))


#: the per-doc columns journaled with a racing-on-evidence row: every field of its sample records
_RECORD_FIELDS = tuple(f.name for f in fields(SampleRecord))


def _per_doc(ev: Evaluation) -> dict[str, list]:
    """One evaluation's sample records as columns (journaled with every optimize row of a stage racing on evidence:
    the paired bound reads them, a survivor's full row is merged from them, and ``--resume`` decides alike)."""
    return _columns(ev.records)


def _columns(records: Sequence[SampleRecord]) -> dict[str, list]:
    """Sample records as columns, one list per SampleRecord field (what ``per_doc`` journals)."""
    return {name: [getattr(r, name) for r in records] for name in _RECORD_FIELDS}


def _records(row: dict, task: str) -> list[SampleRecord] | None:
    """The sample records of ``task`` journaled in ``row`` (its ``per_doc`` columns), or None without them."""
    cols = (row.get("per_doc") or {}).get(task)
    if not cols or any(name not in cols for name in _RECORD_FIELDS):
        return None
    return [SampleRecord(*values) for values in zip(*(cols[name] for name in _RECORD_FIELDS), strict=True)]


@dataclass(frozen=True)
class RaceOnEvidence:
    """Racing on evidence for one stage's tasks (:class:`tp_harness.optimizer.loop.RaceFns`): point composites,
    the paired bound and the merge, all from the per-doc records journaled with the stage's optimize rows.

    Source: F-Race (Birattari et al., GECCO 2002) drops a configuration once a test on the instances seen says it is
    worse than the best; here the test is the paired bootstrap of the composite
    (:func:`tp_harness.evaluation.bootstrap.paired_delta_samples`, 1,000 resamples of the docs seen, seeded by the
    run's seed), taken per task and averaged over the tasks as the stage's composite is.

    :ivar alpha: a candidate is dropped when the one-sided ``1 - alpha`` upper bound is below 0.
    :ivar per_task: merged rows carry each task's metrics (stage 1's rows do).
    """

    tasks: tuple[PreparedTask, ...]
    metrics: Registry[Any]
    alpha: float
    seed: int
    per_task: bool = False

    def _on(self, rows: Sequence[dict], docs: Sequence[dict], task: str) -> list[SampleRecord] | None:
        """``rows``' records of ``task`` on the doc ids ``docs`` hold (in their order); None when some are missing."""
        mine = [_records(row, task) for row in rows]
        want = [_records(row, task) for row in docs]
        if any(r is None for r in mine) or any(r is None for r in want) or not want:
            return None
        by_id = {r.doc_id: r for rs in mine for r in rs}  # type: ignore[union-attr]
        ids = sorted(r.doc_id for rs in want for r in rs)  # type: ignore[union-attr]
        if any(i not in by_id for i in ids):
            return None
        return [by_id[i] for i in ids]

    def composite(self, rows: Sequence[dict], docs: Sequence[dict]) -> float | None:
        """The mean over tasks of the composite of ``rows``' records on the docs of ``docs``; None without them."""
        values = []
        for task in self.tasks:
            records = self._on(rows, docs, task.name)
            if records is None:
                return None
            values.append(metrics_of(task, records, self.metrics)["composite"])
        return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]

    def bound(self, reference: Sequence[dict], candidate: Sequence[dict]) -> float | None:
        """The one-sided ``1 - alpha`` upper bound of the candidate's composite minus the reference's on the
        candidate's docs; None (never dropped) when records are missing or the composite weights include a metric
        the bootstrap cannot resample."""
        import numpy as np

        from tp_harness.evaluation.bootstrap import HIGHER_IS_BETTER, SampleArrays, paired_delta_samples

        deltas = []
        for task in self.tasks:
            if set(task.weights) - set(HIGHER_IS_BETTER):
                return None
            before, after = self._on(reference, candidate, task.name), self._on(candidate, candidate, task.name)
            if before is None or after is None:
                return None
            d = paired_delta_samples(SampleArrays.from_records([asdict(r) for r in before]),
                                     SampleArrays.from_records([asdict(r) for r in after]),
                                     weights=task.weights, seed=[self.seed, 2002])
            if d is None:
                return None
            deltas.append(d)
        mean = np.mean(np.vstack(deltas), axis=0)
        mean = mean[~np.isnan(mean)]
        return float(np.percentile(mean, 100.0 * (1.0 - self.alpha))) if mean.size else None

    def merge(self, rows: Sequence[dict]) -> tuple[dict[str, float | None], dict[str, Any]]:
        """A survivor's full-split (metrics, extra row fields) from its block rows, which together hold every optimize
        doc of every task once: the same records, in split order, as scoring the whole split at once, so the same
        metrics (:func:`tp_harness.evaluation.evaluator.metrics_of`). ``n`` counts the docs; ``seconds`` and
        ``tokens`` are 0 (nothing new is scored).

        :raises ValueError: the rows lack a task's records or do not cover its optimize split exactly once.
        """
        evals, per_doc = [], {}
        for task in self.tasks:
            parts = [_records(row, task.name) for row in rows]
            if any(p is None for p in parts):
                raise ValueError(f"a block row of {task.name} has no per_doc records to merge")
            records = sorted((r for p in parts for r in p), key=lambda r: r.doc_id)  # type: ignore[union-attr]
            if [r.doc_id for r in records] != list(range(len(task.splits["optimize"]))):
                raise ValueError(f"the block rows of {task.name} do not cover its optimize split once")
            evals.append(metrics_of(task, records, self.metrics))
            per_doc[task.name] = _columns(records)
        extra: dict[str, Any] = {"split": "optimize", "n": sum(len(t.splits["optimize"]) for t in self.tasks),
                                 "seconds": 0.0, "tokens": 0, "per_doc": per_doc}
        if self.per_task:
            extra["per_task"] = {task.name: m for task, m in zip(self.tasks, evals)}
        return _mean_metric_dicts(evals), extra


def _exemplar_fn(tasks: Sequence[PreparedTask], k: int = 3) -> Callable[[random.Random], list[Exemplar]]:
    def draw(rng: random.Random) -> list[Exemplar]:
        out = []
        for _ in range(k):
            prep = rng.choice(list(tasks))
            docs = prep.splits["optimize"]
            if not docs:
                continue
            doc = rng.choice(docs)
            out.append(Exemplar(question=str(prep.task.doc_to_text(doc)), answer=_gold_text(prep, doc)))
        return out

    return draw


def _gold_text(prep: PreparedTask, doc: dict) -> str:
    target = prep.task.doc_to_target(doc)
    if prep.task.config.doc_to_choice is not None:
        choices = prep.task.doc_to_choice(doc)
        if isinstance(target, int) and 0 <= target < len(choices):
            return str(choices[target])
    return str(target)


def _mean_metrics(evals: Sequence[Evaluation]) -> dict[str, float | None]:
    return _mean_metric_dicts([e.metrics for e in evals])


def _mean_metric_dicts(values: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Each metric's mean over tasks (those where it is not None); None where no task has it."""
    keys = list(dict.fromkeys(k for m in values for k in m))
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [m[k] for m in values if m.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def _cost(evals: Sequence[Evaluation]) -> dict[str, Any]:
    return {"n": sum(e.n for e in evals), "seconds": round(sum(e.seconds for e in evals), 3),
            "tokens": sum(e.tokens for e in evals)}


# ---------------------------------------------------------------------------------------------
# stages


def run_source_stage(ctx: RunContext) -> list[ScoredPrompt]:
    """Stage 1 (source prompt construction): history best first; composite = mean over source tasks."""
    sources = ctx.sources
    label = "+".join(s.name for s in sources)

    settings = _settings(ctx, sources)
    records = settings.racing and settings.race == "bound"  # racing on evidence reads and merges per-doc records

    def score(cands: Sequence[Candidate], step: int, part: int | Block | None):
        ids = {s.name: minibatch_ids(ctx, "source", step, s, part) for s in sources}
        jobs = [EvalJob(s, "optimize", c.text, ids[s.name]) for c in cands for s in sources]
        evals = evaluate_jobs(ctx.scorer, jobs, metrics=ctx.registries.metrics)
        out = []
        for i, _c in enumerate(cands):
            group = evals[i * len(sources):(i + 1) * len(sources)]
            extra = {"split": "optimize", **_cost(group), "per_task": {e.task: e.metrics for e in group}}
            if records:
                extra["per_doc"] = {e.task: _per_doc(e) for e in group}
            out.append((_mean_metrics(group), extra))
        return out

    def recall(step: int, sha: str, kind: str, block: int | None = None) -> dict | None:
        rows = [r for r in ctx.run.find(stage="source", task=label, step=step, prompt_sha=sha)
                if eval_kind(r) == kind and r.get("block") == block]
        return rows[0] if rows else None

    description = "Write one instruction that works across these tasks. " + " ".join(
        f"({i + 1}) {s.spec.tp.description.strip()}" for i, s in enumerate(sources))
    initial = [Candidate(s.spec.tp.instruction, "original") for s in sources]
    total = len(initial) + ctx.budget.steps * ctx.budget.num_candidates
    return run_stage(
        stage="source", description=description, initial=initial, score=score, sink=ctx.run.append,
        recall=recall, reference=ctx.reference, exemplars=_exemplar_fn(sources), settings=settings,
        seed=ctx.seed, progress=ctx.progress("stage 1 (source)", total) if ctx.progress else None,
        row_base={"task": label}, recall_step=lambda step: ctx.run.find(stage="source", task=label, step=step),
        screen=task_spans([_data_of(s) for s in sources]).reason, reject=_rejection_sink(ctx),
        race=RaceOnEvidence(tuple(sources), ctx.registries.metrics, alpha=ctx.budget.race_alpha, seed=ctx.seed,
                            per_task=True),
    )


def run_target_stage(ctx: RunContext, target: PreparedTask, seeds: Sequence[ScoredPrompt]) -> list[ScoredPrompt]:
    """Stage 2 (target prompt generation) on one target, seeded with the original and ``seeds``."""

    settings = _settings(ctx, [target])
    records = settings.racing and settings.race == "bound"  # racing on evidence reads and merges per-doc records

    def score(cands: Sequence[Candidate], step: int, part: int | Block | None):
        ids = minibatch_ids(ctx, "target", step, target, part)
        evals = evaluate_jobs(ctx.scorer, [EvalJob(target, "optimize", c.text, ids) for c in cands],
                              metrics=ctx.registries.metrics)
        return [(e.metrics, {"split": "optimize", **_cost([e]),
                             **({"per_doc": {e.task: _per_doc(e)}} if records else {})})
                for e in evals]

    def recall(step: int, sha: str, kind: str, block: int | None = None) -> dict | None:
        rows = [r for r in ctx.run.find(stage="target", task=target.name, step=step, prompt_sha=sha)
                if eval_kind(r) == kind and r.get("block") == block]
        return rows[0] if rows else None

    initial = [Candidate(target.spec.tp.instruction, "original")]
    initial += [Candidate(s.text, "seed") for s in seeds]
    total = len(initial) + ctx.budget.steps * ctx.budget.num_candidates
    return run_stage(
        stage="target", description=target.spec.tp.description, initial=initial, score=score,
        sink=ctx.run.append, recall=recall, reference=ctx.reference, exemplars=_exemplar_fn([target]),
        settings=settings, seed=ctx.seed,
        progress=ctx.progress(f"stage 2 (target {target.name})", total) if ctx.progress else None,
        row_base={"task": target.name},
        recall_step=lambda step: ctx.run.find(stage="target", task=target.name, step=step),
        screen=task_spans([_data_of(target)]).reason, reject=_rejection_sink(ctx),
        race=RaceOnEvidence((target,), ctx.registries.metrics, alpha=ctx.budget.race_alpha, seed=ctx.seed),
    )


def _data_of(prep: PreparedTask) -> dict[str, Sequence[dict]]:
    """The docs the anti-overfit guard checks proposals against: every split, and the few-shot demonstrations."""
    return {**prep.splits, "demonstrations": list(prep.demonstrations)}


def _rejection_sink(ctx: RunContext) -> Callable[[dict], None]:
    """Journal a rejected proposal once: ``--resume`` proposes the same step again and must not repeat the row."""

    def reject(row: dict) -> None:
        if not ctx.run.find(stage="rejected", of_stage=row["of_stage"], task=row["task"], step=row["step"],
                            prompt_sha=row["prompt_sha"]):
            ctx.run.append(row)

    return reject


def select_on_validation(ctx: RunContext, target: PreparedTask, history: Sequence[ScoredPrompt]) -> ScoredPrompt:
    """Re-score the ``finalists`` best target candidates on the validation split; return the best there.

    Ties keep the optimize-split order. Rows go to the journal with stage ``select``.
    """
    finalists = rank(history)[: max(1, ctx.budget.finalists)]
    scores: dict[str, float] = {}
    todo = []
    for cand in finalists:
        rows = ctx.run.find(stage="select", task=target.name, prompt_sha=cand.sha)
        if rows:
            scores[cand.sha] = _composite(rows[0]["metrics"])
        else:
            todo.append(cand)
    evals = evaluate_jobs(ctx.scorer, [EvalJob(target, "validation", c.text) for c in todo],
                          metrics=ctx.registries.metrics) if todo else []
    position = {c.sha: i for i, c in enumerate(finalists)}  # the index among the finalists, whatever was resumed
    for cand, ev in zip(todo, evals):
        ctx.run.append({"stage": "select", "step": 0, "task": target.name, "split": "validation",
                        "candidate_index": position[cand.sha], "proposer": cand.proposer, "prompt": cand.text,
                        "prompt_sha": cand.sha, "metrics": ev.metrics, **_cost([ev])})
        scores[cand.sha] = ev.composite
    return max(finalists, key=lambda c: scores[c.sha])  # max keeps the first of equals


def _composite(metrics: dict) -> float:
    value = metrics.get("composite")
    return float("-inf") if value is None else float(value)


def final_evaluations(ctx: RunContext, target: PreparedTask, prompts: dict[str, str]) -> TargetOutcome:
    """Evaluate each prompt kind on the target's test split (one call), write samples and journal rows."""
    outcome = TargetOutcome(task=target.name, prompts=dict(prompts))
    distinct = list(dict.fromkeys(prompts.values()))
    recalled: dict[str, Evaluation] = {}
    todo = []
    for text in distinct:
        ev = _recall_final(ctx, target, text)
        if ev is not None:
            recalled[text] = ev
        else:
            todo.append(text)
    evals = evaluate_jobs(ctx.scorer, [EvalJob(target, "test", t) for t in todo],
                          metrics=ctx.registries.metrics) if todo else []
    for text, ev in zip(todo, evals):
        recalled[text] = ev
        kinds = [k for k, v in prompts.items() if v == text]
        for kind in kinds:
            ctx.run.write_samples(target.name, "test", kind, [asdict(r) for r in ev.records])
        ctx.run.append({"stage": "final", "step": 0, "task": target.name, "split": "test", "prompt_kinds": kinds,
                        "proposer": "final", "prompt": text, "prompt_sha": ev.prompt_sha, "metrics": ev.metrics,
                        **_cost([ev])})
    for kind, text in prompts.items():
        outcome.evaluations[kind] = recalled[text]
        if not ctx.run.read_samples(target.name, "test", kind):
            ctx.run.write_samples(target.name, "test", kind, [asdict(r) for r in recalled[text].records])
    return outcome


def _recall_final(ctx: RunContext, target: PreparedTask, text: str) -> Evaluation | None:
    sha = prompt_sha(text)
    rows = ctx.run.find(stage="final", task=target.name, prompt_sha=sha)
    if not rows:
        return None
    row = rows[0]
    records = tuple(SampleRecord(**r) for r in ctx.run.read_samples(target.name, "test", row["prompt_kinds"][0]))
    if not records:
        return None
    return Evaluation(task=target.name, split="test", instruction=text, prompt_sha=sha, mode=target.mode,
                      records=records, metrics=row["metrics"], seconds=row.get("seconds", 0.0),
                      tokens=row.get("tokens", 0))


def run_transfer(ctx: RunContext) -> RunOutcome:
    """Run the whole two-stage algorithm (or an ablation, by ``ctx.mode``) and the final evaluations.

    :return: the source-stage history (best first; empty in ``no_transfer``) and one
        :class:`TargetOutcome` per target with test-split evaluations of ``original``, ``best_source``
        (not in ``no_transfer``) and ``best_target`` (not in ``source_only``).
    """
    source_history: list[ScoredPrompt] = []
    if ctx.mode != "no_transfer":
        source_history = run_source_stage(ctx)
    top_sources = _distinct_top(source_history, ctx.budget.k_source)
    outcomes = []
    for target in ctx.targets:
        prompts = {"original": target.spec.tp.instruction}
        if top_sources:
            prompts["best_source"] = top_sources[0].text
        if ctx.mode != "source_only":
            seeds = top_sources if ctx.mode == "two_stage" else []
            history = run_target_stage(ctx, target, seeds)
            prompts["best_target"] = select_on_validation(ctx, target, history).text
        final_kind = "best_target" if "best_target" in prompts else "best_source"
        guard = None
        if ctx.selection_alpha is not None and final_kind in prompts:
            guard = guard_selection(ctx, target, prompts[final_kind])
            if guard.kept_original:
                prompts[final_kind] = prompts["original"]
        outcome = final_evaluations(ctx, target, prompts)
        outcome.selection = asdict(guard) if guard is not None else None
        outcomes.append(outcome)
    return RunOutcome(source_prompts=top_sources, targets=outcomes)


def guard_selection(ctx: RunContext, target: PreparedTask, candidate: str) -> SelectionGuard:
    """Keep the original instruction unless ``candidate`` beats it on the validation split beyond noise.

    Both are scored on the target's validation docs (one backend call; the response cache answers what the
    selection step scored already); the paired bootstrap (:func:`tp_harness.evaluation.bootstrap.paired_delta_interval`,
    1,000 resamples of the docs, seeded by the run's seed) gives the one-sided ``1 - alpha`` lower bound of the
    composite difference, candidate minus original. The candidate wins only when that bound is above 0. A journal
    row (stage ``guard``) records the decision; ``--resume`` recalls it instead of scoring again.

    With fewer than :data:`MIN_GUARD_DOCS` validation docs no bound is computed and the original is kept: a
    percentile bootstrap over a handful of docs under-covers (the ``smoke`` and ``sweep`` budgets validate on 6).

    :return: the :class:`SelectionGuard`; ``kept_original`` also when the bound is undefined (e.g. a composite
        over a plugin metric the bootstrap cannot resample), with the reason.
    """
    from tp_harness.evaluation.bootstrap import HIGHER_IS_BETTER, SampleArrays, paired_delta_interval

    alpha = float(ctx.selection_alpha if ctx.selection_alpha is not None else DEFAULT_SELECTION_ALPHA)
    original = target.spec.tp.instruction
    for row in ctx.run.find(stage="guard", task=target.name, prompt_sha=prompt_sha(candidate)):  # --resume
        if isinstance(row.get("selection"), dict) and row["selection"].get("alpha") == alpha:
            return SelectionGuard(**row["selection"])
    before, after = evaluate_jobs(ctx.scorer, [EvalJob(target, "validation", original),
                                               EvalJob(target, "validation", candidate)],
                                  metrics=ctx.registries.metrics)
    diff = (None if before.composite is None or after.composite is None
            else float(after.composite) - float(before.composite))
    bound = None
    if candidate == original:
        reason = "the optimizer's choice is the original instruction"
    elif before.n < MIN_GUARD_DOCS:
        reason = (f"only {before.n} validation docs (fewer than {MIN_GUARD_DOCS}): too few for a trustworthy bound, "
                  f"original kept (validation composite {diff:+.3f}); use a budget with a larger validation split"
                  if diff is not None else f"only {before.n} validation docs: original kept")
    elif set(target.weights) - set(HIGHER_IS_BETTER):
        reason = f"no bootstrap bound for composite weights over {sorted(set(target.weights) - set(HIGHER_IS_BETTER))}"
    else:
        interval = paired_delta_interval(
            SampleArrays.from_records([asdict(r) for r in before.records]),
            SampleArrays.from_records([asdict(r) for r in after.records]),
            weights=target.weights, seed=[ctx.seed, 2502_14211], level=1.0 - 2.0 * alpha)
        bound = interval[0] if interval is not None else None
        if bound is None:
            reason = "the composite difference is undefined on every resample"
        elif bound > 0:
            reason = f"validation composite {diff:+.3f}, {1 - alpha:.0%} lower bound {bound:+.3f} > 0: replaced"
        else:
            reason = (f"validation composite {diff:+.3f}, {1 - alpha:.0%} lower bound {bound:+.3f} <= 0: "
                      "not distinguishable from the original, original kept")
    kept = candidate == original or bound is None or bound <= 0
    guard = SelectionGuard(candidate=candidate, kept_original=kept, difference=diff, lower_bound=bound, alpha=alpha,
                           n=before.n, reason=reason)
    ctx.run.append({"stage": "guard", "step": 0, "task": target.name, "split": "validation", "proposer": "guard",
                    "prompt": candidate, "prompt_sha": prompt_sha(candidate), "metrics": after.metrics,
                    "selection": asdict(guard), **_cost([before, after])})
    return guard


def _distinct_top(history: Sequence[ScoredPrompt], k: int) -> list[ScoredPrompt]:
    seen, out = set(), []
    for p in rank(history):
        if p.sha not in seen:
            seen.add(p.sha)
            out.append(p)
        if len(out) >= k:
            break
    return out


def _run_two_stage(ctx: RunContext) -> RunOutcome:
    return run_transfer(ctx)


@hookimpl
def tp_register_optimizers(registry: Registry[OptimizerDef]) -> None:
    registry.add("transfer", OptimizerDef(
        run=_run_two_stage,
        description="Transfer-Prompting (arXiv 2502.14211): source prompt construction, then target prompt "
                    "generation; --no-transfer and --source-only select the ablations"))
    registry.add("single-stage", OptimizerDef(
        run=run_transfer, mode="no_transfer",
        description="one OPRO-style stage on each target from its original instruction (no transfer)"))
