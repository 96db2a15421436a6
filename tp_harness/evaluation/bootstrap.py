"""Bootstrap confidence intervals of ACC, the calibration metrics and the composite from stored samples.

Owns resampling the per-sample records of one stored evaluation (``samples/*.jsonl``) with replacement
and recomputing ACC, IFR, ECE, AUROC, PR-P, PR-N and the composite on every resample, vectorized with
numpy (a resample is a row of per-sample multiplicities, so 1,000 resamples cost milliseconds), and
the percentile interval of each. The weighted formulas reproduce :mod:`tp_harness.evaluation.metrics` exactly
on the full sample (tested against it). Pure: arrays and dicts in, numbers out; randomness only from
the ``numpy.random.Generator`` seed the caller passes. Source: Efron & Tibshirani (1993), "An
Introduction to the Bootstrap", percentile interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tp_harness.constants import BUILTIN_METRICS

NUM_RESAMPLES = 1000
LEVEL = 0.95
#: the metrics this module resamples, and whether higher is better (``tp_harness.constants.BUILTIN_METRICS``)
HIGHER_IS_BETTER = {k: v for k, v in BUILTIN_METRICS.items() if k != "acc_norm"}
NUM_BINS = 10


@dataclass(frozen=True)
class SampleArrays:
    """The per-sample columns the metrics need, one entry per stored record (length n).

    :ivar correct: bool; a record is correct only if it has a parsed answer and ``correct`` is true.
    :ivar confidence: float in [0, 1], NaN where the record has no confidence.
    :ivar followed: 1.0 / 0.0, NaN where IFR does not apply (``followed`` is null).
    :ivar doc_ids: the records' ``doc_id`` values (to pair two evaluations of the same docs).
    """

    correct: np.ndarray
    confidence: np.ndarray
    followed: np.ndarray
    doc_ids: tuple[Any, ...]

    @property
    def n(self) -> int:
        """The number of samples."""
        return int(self.correct.size)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> SampleArrays:
        """Columns of stored sample records (``SampleRecord`` dicts from ``samples/*.jsonl``).

        A confidence that is missing, not a number or outside [0, 1] counts as missing (NaN).
        """
        correct, conf, followed = [], [], []
        for r in records:
            correct.append(bool(r.get("correct")) and r.get("parsed_answer") is not None)
            c = r.get("confidence")
            ok = isinstance(c, (int, float)) and not isinstance(c, bool) and 0.0 <= float(c) <= 1.0
            conf.append(float(c) if ok else math.nan)
            f = r.get("followed")
            followed.append(math.nan if f is None else float(bool(f)))
        return cls(np.asarray(correct, dtype=bool), np.asarray(conf, dtype=np.float64),
                   np.asarray(followed, dtype=np.float64), tuple(r.get("doc_id") for r in records))


def resample_counts(n: int, *, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities of ``num_resamples`` bootstrap resamples of n items: shape (num_resamples, n).

    Row b counts how often each item was drawn (n draws with replacement); every row sums to n.
    """
    draws = rng.integers(0, n, size=(num_resamples, n))
    offsets = (np.arange(num_resamples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=num_resamples * n).reshape(num_resamples, n).astype(
        np.float64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _bins(conf: np.ndarray) -> np.ndarray:
    """Right-closed bins as :func:`tp_harness.evaluation.metrics.expected_calibration_error` uses them."""
    edges = np.arange(NUM_BINS + 1, dtype=np.float64) / NUM_BINS
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, NUM_BINS - 1)


def _average_precision(counts: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Step-wise average precision (sklearn's ``average_precision_score``) of weighted samples.

    Thresholds are the distinct scores, high to low; AP = sum_k (R_k - R_{k-1}) * P_k. A distinct score
    with weight 0 in a resample adds 0. NaN where a resample has no positive or no negative weight.
    """
    if scores.size == 0:  # no sample has a confidence: undefined in every resample
        return np.full(counts.shape[0], np.nan)
    uniq, group = np.unique(-scores, return_inverse=True)  # ascending -score == descending score
    onehot = np.zeros((scores.size, uniq.size))
    onehot[np.arange(scores.size), group] = 1.0
    pos_w = (counts * positive) @ onehot
    all_w = counts @ onehot
    tp, seen = np.cumsum(pos_w, axis=1), np.cumsum(all_w, axis=1)
    total_pos, total = tp[:, -1], seen[:, -1]
    precision = _safe_div(tp, seen)
    ap = np.nansum(pos_w * np.nan_to_num(precision), axis=1)
    defined = (total_pos > 0) & (total_pos < total)
    return np.where(defined, _safe_div(ap, total_pos), np.nan)


def weighted_metrics(arrays: SampleArrays, counts: np.ndarray) -> dict[str, np.ndarray]:
    """ACC, IFR, ECE, AUROC, PR-P and PR-N of every weighted resample.

    :param counts: shape (B, n): per-sample multiplicities, one row per resample (all ones = the sample).
    :return: ``{metric: array of shape (B,)}``; NaN where the metric is undefined for that resample
        (IFR without ``followed`` values; ECE without confidences; AUROC, PR-P and PR-N when the samples
        with a confidence are all correct or all wrong), as the metric functions return ``None``.
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    corr = arrays.correct.astype(np.float64)
    out: dict[str, np.ndarray] = {"acc": _safe_div(counts @ corr, counts.sum(axis=1))}
    has_f = ~np.isnan(arrays.followed)
    out["ifr"] = _safe_div(counts[:, has_f] @ arrays.followed[has_f], counts[:, has_f].sum(axis=1))
    has_c = ~np.isnan(arrays.confidence)
    cw, conf, ok = counts[:, has_c], arrays.confidence[has_c], arrays.correct[has_c]
    onehot = np.zeros((conf.size, NUM_BINS))
    onehot[np.arange(conf.size), _bins(conf)] = 1.0
    gap = np.abs((cw * ok) @ onehot - (cw * conf) @ onehot).sum(axis=1)
    out["ece"] = _safe_div(gap, cw.sum(axis=1))
    pos, neg = ok, ~ok
    cmp = (conf[pos][:, None] > conf[neg][None, :]) + 0.5 * (conf[pos][:, None] == conf[neg][None, :])
    wp, wn = cw[:, pos], cw[:, neg]
    out["auroc"] = _safe_div(((wp @ cmp) * wn).sum(axis=1), wp.sum(axis=1) * wn.sum(axis=1))
    out["pr_p"] = _average_precision(cw, conf, pos)
    out["pr_n"] = _average_precision(cw, 1.0 - conf, neg)
    return out


def weighted_composite(values: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """The composite of every resample: weighted mean of phi_m over the defined metrics (renormalized).

    phi = value, or 1 - value for ECE, as :func:`tp_harness.evaluation.metrics.composite_score`. Metrics without a
    weight are ignored; NaN where no weighted metric is defined.
    """
    num = den = 0.0
    for name, w in weights.items():
        if name not in values or not w:
            continue
        v = np.asarray(values[name], dtype=np.float64)
        phi = v if HIGHER_IS_BETTER.get(name, True) else 1.0 - v
        present = ~np.isnan(v)
        num = num + np.where(present, w * np.nan_to_num(phi), 0.0)
        den = den + np.where(present, w, 0.0)
    return _safe_div(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))


def percentile_interval(values: np.ndarray, *, level: float = LEVEL) -> tuple[float, float] | None:
    """The central ``level`` percentile interval of the defined (non-NaN) values, or None if there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_intervals(
    arrays: SampleArrays,
    *,
    weights: Mapping[str, float],
    seed: int | Sequence[int],
    num_resamples: int = NUM_RESAMPLES,
    level: float = LEVEL,
) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of every metric and the composite of one evaluation.

    :param arrays: the evaluation's samples (n >= 1).
    :param weights: the composite weights (e.g. :data:`tp_harness.evaluation.metrics.DEFAULT_WEIGHTS`).
    :param seed: seeds ``numpy.random.default_rng``; the same seed and samples give the same intervals.
    :return: ``{"acc" | "ifr" | "ece" | "auroc" | "pr_p" | "pr_n" | "composite": (low, high) or None}``;
        None where the metric is undefined on every resample, or n == 0.
    """
    if arrays.n == 0:
        return {k: None for k in [*HIGHER_IS_BETTER, "composite"]}
    counts = resample_counts(arrays.n, num_resamples=num_resamples, rng=np.random.default_rng(seed))
    values = weighted_metrics(arrays, counts)
    values["composite"] = weighted_composite(values, weights)
    return {k: percentile_interval(v, level=level) for k, v in values.items()}


def paired_delta_samples(
    before: SampleArrays,
    after: SampleArrays,
    *,
    weights: Mapping[str, float],
    seed: int | Sequence[int],
    metric: str = "composite",
    num_resamples: int = NUM_RESAMPLES,
) -> np.ndarray | None:
    """The bootstrap distribution of ``metric(after) - metric(before)`` over the same docs: ``num_resamples``
    values (NaN where undefined), both evaluations resampled with the same doc multiplicities.

    :return: the array, or None when the two do not hold the same doc ids (in any order).
    """
    if before.n == 0 or sorted(map(str, before.doc_ids)) != sorted(map(str, after.doc_ids)):
        return None
    position = {str(d): i for i, d in enumerate(after.doc_ids)}
    if len(position) != after.n:
        return None
    order = np.asarray([position[str(d)] for d in before.doc_ids])
    counts = resample_counts(before.n, num_resamples=num_resamples, rng=np.random.default_rng(seed))
    deltas = []
    for arrays, c in ((before, counts), (after, counts[:, np.argsort(order)])):
        values = weighted_metrics(arrays, c)
        values["composite"] = weighted_composite(values, weights)
        deltas.append(values[metric])
    return deltas[1] - deltas[0]


def paired_delta_interval(
    before: SampleArrays,
    after: SampleArrays,
    *,
    weights: Mapping[str, float],
    seed: int | Sequence[int],
    metric: str = "composite",
    num_resamples: int = NUM_RESAMPLES,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Paired bootstrap interval of ``metric(after) - metric(before)`` over the same docs.

    Both evaluations are resampled with the same doc multiplicities (they scored the same test docs
    under two prompts), which is narrower and more honest than two independent intervals.
    :return: ``(low, high)``, or None when the two do not hold the same doc ids (in any order), or the
        difference is undefined on every resample.
    """
    deltas = paired_delta_samples(before, after, weights=weights, seed=seed, metric=metric,
                                  num_resamples=num_resamples)
    return None if deltas is None else percentile_interval(deltas, level=level)


def seeds_and_docs_interval(
    per_seed: Sequence[np.ndarray],
    *,
    seed: int | Sequence[int],
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Two-level (hierarchical) bootstrap interval of the mean paired difference over seeds.

    Each resample draws as many seeds as there are, with replacement, and for each drawn seed one of its own
    doc-level bootstrap differences (:func:`paired_delta_samples`, same resample index across seeds is not
    required); the mean over the drawn seeds is one value of the distribution. So the interval reflects both
    the spread between seeds (different searches) and the sampling of test docs within each.
    Source: the two-stage bootstrap for clustered data (Davison & Hinkley, 1997, section 3.8).

    :param per_seed: one bootstrap distribution (length B, NaN where undefined) per seed.
    :return: ``(low, high)``, or None with no seed or no defined value.
    """
    if not per_seed:
        return None
    rng = np.random.default_rng(seed)
    stacked = np.vstack([np.asarray(d, dtype=np.float64) for d in per_seed])  # seeds x B
    k, b = stacked.shape
    chosen = rng.integers(0, k, size=(b, k))          # which seeds each resample draws
    column = rng.integers(0, b, size=(b, k))          # which doc-level resample of that seed
    with warnings.catch_warnings():  # a resample where every drawn value is undefined is NaN, and dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(stacked[chosen, column], axis=1)
    return percentile_interval(values, level=level)
