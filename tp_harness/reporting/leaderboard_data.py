"""The leaderboard's data: test-split evaluation rows with bootstrap intervals, headline runs and ablations.

Owns turning stored runs into :class:`Row` objects (one per test-split evaluation, with 95% percentile
bootstrap intervals of ACC and the composite from the stored per-sample records), choosing the headline
run of each (model, dataset) overview cell, grouping runs of the three modes into ablation groups, and
the paired difference test that marks a significant change. Pure: stored files in, rows out; the
rendering is :mod:`tp_harness.reporting.leaderboard`.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tp_harness.constants import ABLATION_MODES
from tp_harness.evaluation.bootstrap import (
    SampleArrays,
    bootstrap_intervals,
    paired_delta_interval,
    paired_delta_samples,
    seeds_and_docs_interval,
    weighted_composite,
    weighted_metrics,
)
from tp_harness.evaluation.metrics import DEFAULT_WEIGHTS
from tp_harness.store.stored_runs import StoredRun, is_number, read_jsonl_rows

log = logging.getLogger(__name__)

PROMPT_KINDS = ("original", "best_source", "best_target")

BOOTSTRAP_SEED = 20250220  # arXiv 2502.14211's date; any fixed number keeps the intervals reproducible


def _kind_order(kind: Any) -> tuple[int, str]:
    kind = str(kind)
    return (PROMPT_KINDS.index(kind) if kind in PROMPT_KINDS else len(PROMPT_KINDS), kind)


def _seed(*parts: str) -> list[int]:
    """A bootstrap seed from ``parts`` (model, task, prompt sha(s)): stable across machines and runs, so the
    same prompt scored on the same docs by the same model gets the same interval in every run that holds it."""
    return [BOOTSTRAP_SEED, zlib.crc32("/".join(parts).encode("utf-8"))]


@dataclass(frozen=True)
class Row:
    """One test-split evaluation of the leaderboard: a (run, task, prompt kind) with its metrics.

    :ivar metrics: the stored metric values (floats in [0, 1] or None), keyed ``acc`` ... ``composite``.
    :ivar acc_ci, composite_ci: 95% percentile bootstrap intervals from the stored samples, or None
        (no samples file; or, for the composite, the stored composite used weights other than the
        defaults, so it cannot be recomputed from the samples).
    :ivar samples: the evaluation's sample columns (None without a samples file), for paired deltas.
    """

    run: StoredRun
    task: str
    kind: str
    n: int | None
    metrics: dict[str, Any]
    prompt: str
    prompt_sha: str
    acc_ci: tuple[float, float] | None = None
    composite_ci: tuple[float, float] | None = None
    samples: SampleArrays | None = field(default=None, compare=False, repr=False)
    output_type: str | None = None

    @property
    def dataset(self) -> str:
        """The leaderboard's dataset label: the task, with ``(generate_until)`` when it was scored that way, so
        the same task scored as loglikelihoods and as generated answers never share a table cell or a mean."""
        return self.task if self.output_type in (None, "multiple_choice") else f"{self.task} ({self.output_type})"

    @property
    def composite(self) -> float | None:
        """The stored composite, or None when it is missing or not a number."""
        value = self.metrics.get("composite")
        return float(value) if is_number(value) else None


def _load_samples(run: StoredRun, ev: dict[str, Any]) -> SampleArrays | None:
    """The evaluation's samples, or None (no file, or a file that disagrees with results.json's ``n``: its
    intervals would describe other samples than the stored metrics, so they are dropped with a warning)."""
    rel = ev.get("samples_file")
    path = run.run_dir / str(rel) if rel else None
    if path is None or not path.is_file():
        return None
    rows = read_jsonl_rows(path)
    n = ev.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and len(rows) != n:
        log.warning("%s holds %d sample rows but results.json says n=%d for %s %s: no confidence intervals for "
                    "it (the file was cut or edited; re-run the evaluation to restore them)", path, len(rows), n,
                    ev.get("task"), ev.get("prompt_kind"))
        return None
    return SampleArrays.from_records(rows) if rows else None


def _composite_recomputable(samples: SampleArrays, metrics: dict[str, Any]) -> bool:
    """Whether the default weights reproduce the stored composite from the samples (to 1e-9)."""
    stored = metrics.get("composite")
    if not is_number(stored):
        return False
    values = weighted_metrics(samples, [[1.0] * samples.n])
    full = float(weighted_composite(values, DEFAULT_WEIGHTS)[0])
    return math.isfinite(full) and abs(full - float(stored)) < 1e-9


def evaluation_rows(runs: Sequence[StoredRun], *, with_ci: bool = True) -> list[Row]:
    """The test-split evaluations of ``runs`` as rows sorted by (task, model, run id, prompt kind).

    :param with_ci: compute the bootstrap intervals (needs the samples files; about 10 ms a row).
    """
    keyed = []
    for run in runs:
        for ev in run.evaluations:
            if ev.get("split", "test") != "test":
                continue
            metrics = ev.get("metrics") if isinstance(ev.get("metrics"), dict) else {}
            n = ev.get("n")
            kind, task = str(ev.get("prompt_kind", "?")), str(ev.get("task", "?"))
            samples = _load_samples(run, ev) if with_ci else None
            acc_ci = composite_ci = None
            if samples is not None and samples.n:
                seed = _seed(run.model, task, str(ev.get("prompt_sha") or f"{run.run_id}/{kind}"))
                cis = bootstrap_intervals(samples, weights=DEFAULT_WEIGHTS, seed=seed)
                acc_ci = cis["acc"]
                composite_ci = cis["composite"] if _composite_recomputable(samples, metrics) else None
            row = Row(run=run, task=task, kind=kind, n=n if isinstance(n, int) and not isinstance(n, bool) else None,
                      metrics=metrics, prompt=str(ev.get("prompt", "")), prompt_sha=str(ev.get("prompt_sha", "")),
                      acc_ci=acc_ci, composite_ci=composite_ci, samples=samples,
                      output_type=str(ev["output_type"]) if ev.get("output_type") else None)
            keyed.append(((row.dataset, run.model, run.run_id, _kind_order(kind)), row))
    return [row for _, row in sorted(keyed, key=lambda kr: kr[0])]


def optimized_row(rows: Sequence[Row]) -> Row | None:
    """The optimized prompt's row of one (run, task): best target, else best source."""
    by_kind = {r.kind: r for r in rows}
    return by_kind.get("best_target") or by_kind.get("best_source")


def _group(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows by (run id, task)."""
    out: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        out.setdefault((r.run.run_id, r.dataset), []).append(r)
    return out


def _headline(candidates: list[list[Row]]) -> list[Row]:
    """The run shown in an overview cell: two-stage first, then the most test samples, newest, run id."""
    def key(group: list[Row]) -> tuple:
        run = group[0].run
        date = run.data.get("date")
        mode_rank = len(ABLATION_MODES) - ABLATION_MODES.index(run.mode) if run.mode in ABLATION_MODES else 0
        return (mode_rank, max((r.n or 0) for r in group), date if is_number(date) else 0.0, run.run_id)

    return max(candidates, key=key)


def overview_cells(rows: Sequence[Row]) -> dict[tuple[str, str], tuple[Row, Row]]:
    """``{(model, task): (original row, optimized row)}`` of the headline run of each cell."""
    candidates: dict[tuple[str, str], list[list[Row]]] = {}
    for (_, task), group in sorted(_group(rows).items()):
        if any(r.kind == "original" for r in group) and optimized_row(group) is not None:
            candidates.setdefault((group[0].run.model, task), []).append(group)
    out = {}
    for key, groups in candidates.items():
        group = _headline(groups)
        out[key] = (next(r for r in group if r.kind == "original"), optimized_row(group))
    return out


def ablation_groups(rows: Sequence[Row]) -> dict[tuple[str, str, str, str], dict[str, list[Row]]]:
    """``{(model, task, budget, seed): {mode: rows of that run}}`` where >= 2 of the three modes exist.

    When one mode has several runs in a group, the last by run id is used.
    """
    groups: dict[tuple[str, str, str, str], dict[str, list[Row]]] = {}
    for (_, task), group in sorted(_group(rows).items()):
        run = group[0].run
        if run.mode in ABLATION_MODES:
            groups.setdefault((run.model, task, run.budget, run.seed), {})[run.mode] = group
    return {k: v for k, v in sorted(groups.items()) if len(v) >= 2}


def delta_is_significant(before: Row, after: Row) -> bool:
    """Whether the paired 95% bootstrap interval of ``composite(after) - composite(before)`` excludes 0.

    Pairs the two evaluations' samples by doc id (the same test docs under two prompts); False when
    either has no samples or its stored composite cannot be recomputed from them.
    """
    if before.samples is None or after.samples is None or not before.composite_ci or not after.composite_ci:
        return False
    ci = paired_delta_interval(before.samples, after.samples, weights=DEFAULT_WEIGHTS,
                               seed=_seed(after.run.model, after.task, before.prompt_sha, after.prompt_sha))
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


@dataclass(frozen=True)
class SeedSummary:
    """One (model, dataset, mode, budget) over its seeds: the final prompt against the original, per seed and pooled.

    :ivar seeds: the seeds, ascending. :ivar n: test docs per seed (the smallest).
    :ivar original, final: mean test composite of the original instruction and of the final prompt over the seeds.
    :ivar per_seed: ``{seed: final - original}`` (test composite, the same docs).
    :ivar mean: the mean of ``per_seed``; :ivar ci: its 95% interval over seeds and docs (two-level bootstrap), or
        None when the samples cannot be paired.
    :ivar kept: seeds whose run kept the original (the guarded final choice).
    """

    seeds: tuple[str, ...]
    n: int | None
    original: float | None
    final: float | None
    per_seed: dict[str, float | None]
    mean: float | None
    ci: tuple[float, float] | None
    kept: tuple[str, ...]


def seed_summaries(rows: Sequence[Row]) -> dict[tuple[str, str, str, str], SeedSummary]:
    """``{(model, task, mode, budget): SeedSummary}`` for every group run with two or more seeds.

    When one seed has several runs, the last by run id is used.
    """
    groups: dict[tuple[str, str, str, str], dict[str, list[Row]]] = {}
    for (_, task), group in sorted(_group(rows).items()):
        run = group[0].run
        if any(r.kind == "original" for r in group) and optimized_row(group) is not None:
            groups.setdefault((run.model, task, run.mode, run.budget), {})[str(run.seed)] = group
    out = {}
    for key, by_seed in sorted(groups.items()):
        if len(by_seed) < 2:
            continue
        seeds = tuple(sorted(by_seed, key=lambda s: (len(s), s)))
        pairs = {s: (next(r for r in by_seed[s] if r.kind == "original"), optimized_row(by_seed[s])) for s in seeds}
        per_seed = {s: (None if b.composite is None or a.composite is None else b.composite - a.composite)
                    for s, (a, b) in pairs.items()}
        dists = []
        for s, (a, b) in pairs.items():
            d = None
            if a.samples is not None and b.samples is not None and a.composite_ci and b.composite_ci:
                d = paired_delta_samples(a.samples, b.samples, weights=DEFAULT_WEIGHTS,
                                         seed=_seed(b.run.model, b.task, a.prompt_sha, b.prompt_sha, s))
            if d is None:
                dists = []
                break
            dists.append(d)
        values = [v for v in per_seed.values() if v is not None]
        originals = [a.composite for a, _ in pairs.values() if a.composite is not None]
        finals = [b.composite for _, b in pairs.values() if b.composite is not None]
        ns = [a.n for a, _ in pairs.values() if a.n is not None]
        kept = tuple(s for s, (_, b) in pairs.items()
                     if ((b.run.tp.get("selection") or {}).get(b.task) or {}).get("kept_original"))
        out[key] = SeedSummary(
            seeds=seeds, n=min(ns) if ns else None,
            original=sum(originals) / len(originals) if originals else None,
            final=sum(finals) / len(finals) if finals else None, per_seed=per_seed,
            mean=sum(values) / len(values) if values else None,
            ci=seeds_and_docs_interval(dists, seed=_seed(*key)) if dists else None, kept=kept)
    return out


@dataclass(frozen=True)
class TransferComparison:
    """Two-stage against no transfer on one (model, dataset, budget), over the seeds both modes ran: the paper's
    claim that transfer beats direct optimization, measured on the test split.

    :ivar per_seed: ``{seed: two_stage final composite - no_transfer final composite}`` (the same test docs).
    :ivar mean: their mean; ``ci`` its two-level 95% interval (seeds, then docs; :func:`seeds_and_docs_interval`).
    :ivar equal_budget: whether every no-transfer run was given two-stage's search budget (``--equal-budget``).
    """

    seeds: tuple[str, ...]
    n: int | None
    per_seed: dict[str, float | None]
    mean: float | None
    ci: tuple[float, float] | None
    equal_budget: bool


def transfer_comparisons(rows: Sequence[Row]) -> dict[tuple[str, str, str], TransferComparison]:
    """``{(model, dataset, budget): TransferComparison}`` where two_stage and no_transfer share two or more seeds."""
    finals: dict[tuple[str, str, str], dict[str, dict[str, Row]]] = {}
    for (_, task), group in sorted(_group(rows).items()):
        run, best = group[0].run, optimized_row(group)
        if best is not None and run.mode in ("two_stage", "no_transfer"):
            finals.setdefault((run.model, task, run.budget), {}).setdefault(str(run.seed), {})[run.mode] = best
    out = {}
    for key, by_seed in sorted(finals.items()):
        both = {s: m for s, m in by_seed.items() if {"two_stage", "no_transfer"} <= set(m)}
        if len(both) < 2:
            continue
        seeds = tuple(sorted(both, key=lambda s: (len(s), s)))
        per_seed: dict[str, float | None] = {}
        dists = []
        for s in seeds:
            direct, transfer = both[s]["no_transfer"], both[s]["two_stage"]
            per_seed[s] = (None if direct.composite is None or transfer.composite is None
                           else transfer.composite - direct.composite)
            d = None
            if direct.samples is not None and transfer.samples is not None:
                d = paired_delta_samples(direct.samples, transfer.samples, weights=DEFAULT_WEIGHTS,
                                         seed=_seed(key[0], key[1], direct.prompt_sha, transfer.prompt_sha, s))
            if d is not None:
                dists.append(d)
        values = [v for v in per_seed.values() if v is not None]
        ns = [both[s]["two_stage"].n for s in seeds if both[s]["two_stage"].n is not None]
        out[key] = TransferComparison(
            seeds=seeds, n=min(ns) if ns else None, per_seed=per_seed,
            mean=sum(values) / len(values) if values else None,
            ci=seeds_and_docs_interval(dists, seed=_seed(*key, "transfer")) if len(dists) == len(seeds) else None,
            equal_budget=all(bool(both[s]["no_transfer"].run.tp.get("equal_budget")) for s in seeds))
    return out
