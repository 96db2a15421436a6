"""Objective prompt-evaluation metrics: ACC, IFR, ECE, AUROC, PR-P, PR-N and the weighted composite.

Owns the per-sample :class:`SampleRecord`, the pure metric functions over plain sequences, their
record-level wrappers, the composite score and the built-in ``tp_register_metrics`` hook. It calls no
model, parses no response and writes nothing: records come in from the evaluator, numbers go out.
Definitions follow DESIGN.md section 3; scores and confidences are floats in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tp_harness.constants import BUILTIN_METRICS
from tp_harness.errors import MetricInputError
from tp_harness.plugin.hookspecs import MetricDef, Registry, hookimpl

DEFAULT_WEIGHTS: dict[str, float] = {
    "acc": 0.35,
    "ifr": 0.25,
    "ece": 0.2,
    "auroc": 0.1,
    "pr_p": 0.05,
    "pr_n": 0.05,
}
"""Default composite weights (a project choice; the paper does not publish its weights)."""


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One scored sample of one (task, prompt, split) evaluation; see docs/run-directory.md."""

    doc_id: int  # index of the doc within its split
    prompt_sha: str  # sha256 hex of the instruction text (first 16 chars)
    response: str  # generated text (generate_until) or the argmax choice text (multiple_choice)
    parsed_answer: str | None  # None when the response could not be parsed
    gold: str  # the gold answer in the same vocabulary as parsed_answer
    confidence: float | None  # probability in [0, 1]; None when no confidence was parsed
    followed: bool | None  # output format followed; None when IFR does not apply (multiple_choice)
    correct: bool  # parsed_answer == gold (an unparsed answer is wrong)
    correct_norm: bool | None = None  # multiple_choice: the length-normalized argmax is gold (lm-eval's acc_norm)


# ----------------------------------------------------------------------------------------------
# Input checks shared by the pure functions


def _as_bool_array(values: Sequence[object], name: str) -> np.ndarray:
    """Return ``values`` as a 1-D bool array; :raises MetricInputError: for a value that is not 0/1/bool."""
    for i, v in enumerate(values):
        if v is None or isinstance(v, str) or v not in (0, 1):
            raise MetricInputError(f"{name}[{i}] = {v!r} is not a bool; pass True/False per sample")
    return np.asarray([bool(v) for v in values], dtype=bool)


def _as_confidence_array(confidence: Sequence[float], correct: Sequence[bool]) -> np.ndarray:
    """Check one confidence in [0, 1] per sample and return them as a float64 array.

    :raises MetricInputError: lengths differ, or a confidence is None, NaN or outside [0, 1].
    """
    if len(confidence) != len(correct):
        raise MetricInputError(
            f"confidence has {len(confidence)} values but correct has {len(correct)}; "
            "pass exactly one confidence per sample"
        )
    out = np.empty(len(confidence), dtype=np.float64)
    for i, c in enumerate(confidence):
        if c is None or isinstance(c, (bool, str)):
            raise MetricInputError(
                f"confidence[{i}] = {c!r} is not a number; drop samples without a parsed confidence first"
            )
        c = float(c)
        if math.isnan(c) or not 0.0 <= c <= 1.0:
            raise MetricInputError(
                f"confidence[{i}] = {c!r} is outside [0, 1]; confidences are probabilities, "
                "not percentages (divide a percentage by 100)"
            )
        out[i] = c
    return out


def _checked(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (confidence, correct) pair and return them as float64 and bool arrays."""
    conf = _as_confidence_array(confidence, correct)
    return conf, _as_bool_array(correct, "correct")


def _bin_indices(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Map each confidence to its right-closed bin: ``(k/n_bins, (k+1)/n_bins]`` -> k; 0.0 -> bin 0.

    Edges are ``k / n_bins`` (correctly rounded), so a confidence written as a decimal on an edge
    (0.3, 0.7, 80/100) lands in the bin below it; plain ``ceil(c * n_bins) - 1`` would not, because
    ``0.3 * 10 == 3.0000000000000004`` in binary floating point.
    """
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)


# ----------------------------------------------------------------------------------------------
# Pure metric functions


def accuracy(correct: Sequence[bool]) -> float | None:
    """ACC: the fraction of samples answered correctly.

    Shapes: ``correct`` is 1-D, length n, one bool per sample of the evaluation.
    Units: a fraction, not a percentage. An unparsed answer must be passed as ``False``.
    Returns: ACC in [0, 1], higher is better; ``None`` when n == 0.
    Raises: ``MetricInputError`` if a value is not a bool (or 0/1).
    Source: Transfer-Prompting (arXiv 2502.14211); DESIGN.md section 3.
    """
    arr = _as_bool_array(correct, "correct")
    if arr.size == 0:
        return None
    return float(arr.mean())


def instruction_following_rate(followed: Sequence[bool | None]) -> float | None:
    """IFR: the fraction of samples whose response follows the task's required output format.

    Shapes: ``followed`` is 1-D, length n, one value per sample: ``True``/``False``, or ``None`` when
    IFR does not apply to the sample's output type (``multiple_choice``: loglikelihood scoring has no
    format to follow).
    Returns: IFR in [0, 1], higher is better; ``None`` when n == 0 or every value is ``None`` (IFR is
    n/a and the composite spreads its weight over the other metrics).
    Raises: ``MetricInputError`` if ``None`` is mixed with bools (one evaluation has one output type,
    so a mix means records of different tasks were pooled), or a value is not a bool.
    Source: Transfer-Prompting (arXiv 2502.14211); DESIGN.md section 3.
    """
    num_none = sum(v is None for v in followed)
    if num_none == len(followed):
        return None
    if num_none:
        first = next(i for i, v in enumerate(followed) if v is None)
        raise MetricInputError(
            f"followed has {num_none} None value(s) (first at index {first}) among {len(followed)} samples; "
            "IFR is either n/a for every sample (multiple_choice) or defined for every sample "
            "(generate_until): do not pool records of different output types"
        )
    return float(_as_bool_array(followed, "followed").mean())


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], *, n_bins: int = 10
) -> float | None:
    """ECE: sample-weighted mean of |accuracy - mean confidence| over equal-width confidence bins.

    Shapes: ``confidence`` and ``correct`` are 1-D, equal length n: samples with a parsed confidence only.
    Units: confidence is a probability in [0, 1], never a percentage.
    Formula: ``sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)|`` over the non-empty bins B_b.
    Bins: ``n_bins`` equal-width, right-closed bins over [0, 1]: bin k holds ``(k/n_bins, (k+1)/n_bins]``
    and bin 0 also holds 0.0. So with 10 bins, 0.0 and 0.1 are in bin 0, 0.1000001 in bin 1, 0.3 in bin 2
    and 1.0 in bin 9. This is Guo et al.'s ``I_m = ((m-1)/M, m/M]`` and the edges of torchmetrics'
    older ``torch.bucketize(conf, edges)`` binning (``right=False``). Current torchmetrics
    ``binary_calibration_error`` uses ``right=True``: left-closed bins plus an extra bin for exactly 1.0.
    The two differ only for confidences exactly on an edge, which is common for verbalized confidences
    ("80%"), so do not use current torchmetrics as an oracle for such inputs. Edges are exact decimals
    ``k/n_bins``, so float rounding never moves a value on an edge.
    Returns: ECE in [0, 1], lower is better; ``None`` when n == 0 (the term leaves the composite).
    Raises: ``MetricInputError`` if the lengths differ, a confidence is None, NaN or outside [0, 1],
    a correctness value is not a bool, or ``n_bins`` is not a positive int.
    Source: Guo et al., ICML 2017, "On Calibration of Modern Neural Networks"; metric set per
    Xiong et al., ICLR 2024, "Can LLMs Express Their Uncertainty?".
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise MetricInputError(f"n_bins = {n_bins!r}; use a positive integer such as 10")
    conf, corr = _checked(confidence, correct)
    n = conf.size
    if n == 0:
        return None
    bins = _bin_indices(conf, n_bins)
    sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(bins, weights=corr.astype(np.float64), minlength=n_bins)
    # (|B|/n) * |sum_acc/|B| - sum_conf/|B|| == |sum_acc - sum_conf| / n; empty bins add 0.
    return float(np.abs(sum_acc - sum_conf).sum() / n)


def _unit(value: float) -> float:
    """``value`` clamped to [0, 1]: floating sums (sklearn's, and ours) can land a few ULPs outside (``1.0000000000000002`` was seen in a
    real run's PR-N), which the composite would refuse. Only rounding is absorbed: the metrics are in [0, 1] by
    definition."""
    return min(1.0, max(0.0, float(value)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (ascending), tied values sharing the mean of their ranks (``scipy.stats.rankdata``'s
    ``average`` method)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first = np.flatnonzero(starts)
    sizes = np.diff(np.r_[first, values.size])
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = (first + (sizes + 1) / 2.0)[np.cumsum(starts) - 1]
    return ranks


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Step-wise average precision over the distinct ``scores`` as thresholds, high to low: ``sum_k (R_k - R_{k-1})
    * P_k`` with ``R_0 = 0`` (``sklearn.metrics.average_precision_score``). Needs a positive sample."""
    order = np.argsort(-scores, kind="mergesort")
    ordered, pos = scores[order], positive[order].astype(np.float64)
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last sample of each distinct score
    tp = np.cumsum(pos)[last]
    precision = tp / (np.flatnonzero(last) + 1.0)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _both_classes(corr: np.ndarray) -> bool:
    """True when there is at least one correct and one incorrect sample."""
    return bool(corr.any()) and not bool(corr.all())


def auroc(confidence: Sequence[float], correct: Sequence[bool]) -> float | None:
    """AUROC: how well confidence ranks correct answers above incorrect ones.

    Shapes: ``confidence`` and ``correct`` are 1-D, equal length n: samples with a parsed confidence only.
    Equal to ``sklearn.metrics.roc_auc_score(y_true=correct, y_score=confidence)`` (tested against it): correct
    is the positive class; equal confidences count half. Computed in numpy as the Mann-Whitney U statistic over
    average ranks, ``(sum of the correct samples' ranks - n_c (n_c + 1) / 2) / (n_c n_w)``, so that scoring never
    imports scikit-learn and scipy (about a second a run).
    Returns: AUROC in [0, 1] (0.5 = chance), higher is better; ``None`` when n == 0 or all samples are
    correct or all wrong (undefined; the term leaves the composite, never a crash).
    Raises: ``MetricInputError`` if the lengths differ or a confidence is None, NaN or outside [0, 1].
    Source: metric set per Xiong et al., ICLR 2024, "Can LLMs Express Their Uncertainty?".
    """
    conf, corr = _checked(confidence, correct)
    if not _both_classes(corr):
        return None
    ranks = _average_ranks(conf)
    n_c = int(corr.sum())
    n_w = corr.size - n_c
    return _unit((ranks[corr].sum() - n_c * (n_c + 1) / 2.0) / (n_c * n_w))


def pr_p(confidence: Sequence[float], correct: Sequence[bool]) -> float | None:
    """PR-P: area under the precision-recall curve with correct answers as the positive class.

    Shapes: ``confidence`` and ``correct`` are 1-D, equal length n: samples with a parsed confidence only.
    The area is average precision, equal to ``sklearn.metrics.average_precision_score(correct, confidence)``
    (tested against it; numpy here): the step-wise sum ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct
    confidences as thresholds, high to low, not a trapezoidal area.
    Returns: PR-P in [0, 1], higher is better; ``None`` when n == 0 or all samples are correct or
    all wrong (undefined; the term leaves the composite).
    Raises: ``MetricInputError`` if the lengths differ or a confidence is None, NaN or outside [0, 1].
    Source: AUPR-Succ of Hendrycks & Gimpel, ICLR 2017; metric set per Xiong et al., ICLR 2024.
    """
    conf, corr = _checked(confidence, correct)
    if not _both_classes(corr):
        return None
    return _unit(_average_precision(conf, corr))


def pr_n(confidence: Sequence[float], correct: Sequence[bool]) -> float | None:
    """PR-N: area under the precision-recall curve with incorrect answers as the positive class.

    Shapes: ``confidence`` and ``correct`` are 1-D, equal length n: samples with a parsed confidence only.
    The score is ``1 - confidence`` and the area is average precision (step-wise AP, as sklearn's
    ``average_precision_score(~correct, 1 - confidence)``), not a trapezoidal area.
    Returns: PR-N in [0, 1], higher is better; ``None`` when n == 0 or all samples are correct or
    all wrong (undefined; the term leaves the composite).
    Raises: ``MetricInputError`` if the lengths differ or a confidence is None, NaN or outside [0, 1].
    Source: AUPR-Err of Hendrycks & Gimpel, ICLR 2017; metric set per Xiong et al., ICLR 2024.
    """
    conf, corr = _checked(confidence, correct)
    if not _both_classes(corr):
        return None
    return _unit(_average_precision(1.0 - conf, ~corr))


# ----------------------------------------------------------------------------------------------
# Record-level wrappers (what MetricDef.compute receives)


def _is_correct(record: SampleRecord) -> bool:
    """A record counts as correct only with a parsed answer: an unparsed answer is wrong."""
    return bool(record.correct) and record.parsed_answer is not None


def _calibration_inputs(records: Sequence[SampleRecord]) -> tuple[list[float], list[bool]]:
    """(confidence, correct) of the records whose confidence is not None, in record order."""
    kept = [r for r in records if r.confidence is not None]
    return [r.confidence for r in kept], [_is_correct(r) for r in kept]


def accuracy_from_records(records: Sequence[SampleRecord]) -> float | None:
    """ACC over all ``records`` (an unparsed answer is wrong); ``None`` when there are none."""
    return accuracy([_is_correct(r) for r in records])


def acc_norm_from_records(records: Sequence[SampleRecord]) -> float | None:
    """lm-eval's ``acc_norm``: the fraction of samples whose loglikelihood per character of the choice picks the
    gold choice (``SampleRecord.correct_norm``). Range [0, 1], higher is better; ``None`` when no record has
    ``correct_norm`` (generate_until, or records stored before it existed).
    Source: lm-eval 0.4.13 ``ConfigurableTask.process_results`` (``pred_norm = argmax(lls / completion_len)``).
    """
    values = [r.correct_norm for r in records if r.correct_norm is not None]
    return accuracy(values) if values else None


def ifr_from_records(records: Sequence[SampleRecord]) -> float | None:
    """IFR over all ``records``; ``None`` when there are none or ``followed`` is None throughout."""
    return instruction_following_rate([r.followed for r in records])


def ece_from_records(records: Sequence[SampleRecord]) -> float | None:
    """ECE (10 bins) over the records with a confidence; ``None`` when no record has one."""
    return expected_calibration_error(*_calibration_inputs(records))


def auroc_from_records(records: Sequence[SampleRecord]) -> float | None:
    """AUROC over the records with a confidence; ``None`` when undefined."""
    return auroc(*_calibration_inputs(records))


def pr_p_from_records(records: Sequence[SampleRecord]) -> float | None:
    """PR-P over the records with a confidence; ``None`` when undefined."""
    return pr_p(*_calibration_inputs(records))


def pr_n_from_records(records: Sequence[SampleRecord]) -> float | None:
    """PR-N over the records with a confidence; ``None`` when undefined."""
    return pr_n(*_calibration_inputs(records))


# ----------------------------------------------------------------------------------------------
# Composite


def composite_score(
    values: Mapping[str, float | None],
    weights: Mapping[str, float],
    *,
    higher_is_better: Mapping[str, bool],
) -> float | None:
    """The composite: weighted mean of per-metric scores phi_m, over the metrics that are defined.

    ``phi_m = value`` for a higher-is-better metric and ``1 - value`` otherwise (ECE enters as 1 - ECE).
    A term is present when its metric has a weight and a non-None value; the weights of the present
    terms are renormalized to sum to 1. This is how IFR's weight is spread over the other metrics for
    ``multiple_choice`` and how an undefined AUROC/PR term is dropped. Values without a weight are ignored.
    Shapes: mappings keyed by metric name (``acc``, ``ece``, ...); weights need not sum to 1.
    Returns: composite in [0, 1], higher is better; ``None`` if no term is present or the present
    terms' weights are all 0.
    Raises: ``MetricInputError`` for a negative or non-finite weight, a weight for a metric missing from
    ``higher_is_better``, or a weighted value that is NaN or outside [0, 1].
    Source: DESIGN.md section 3; default weights in :data:`DEFAULT_WEIGHTS`.
    """
    for name, w in weights.items():
        if name not in higher_is_better:
            raise MetricInputError(
                f"weight given for unknown metric {name!r}; known metrics: {sorted(higher_is_better)}"
            )
        if not math.isfinite(w) or w < 0:
            raise MetricInputError(
                f"weight for metric {name!r} is {w!r}; weights must be finite and >= 0, e.g. {{acc: 0.5, ece: 0.5}}"
            )
    total = 0.0
    weighted = 0.0
    for name, w in weights.items():
        value = values.get(name)
        if value is None:
            continue
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise MetricInputError(f"metric {name!r} has value {value!r}; composite terms must be in [0, 1]")
        phi = value if higher_is_better[name] else 1.0 - value
        total += w
        weighted += w * phi
    if total == 0.0:
        return None
    return weighted / total


def compute_metrics(
    records: Sequence[SampleRecord],
    metric_defs: Mapping[str, MetricDef],
    *,
    weights: Mapping[str, float],
) -> dict[str, float | None]:
    """Compute every metric in ``metric_defs`` over ``records``, plus ``"composite"``.

    Shapes: ``records`` are the per-sample records of one (task, prompt, split) evaluation.
    Returns: ``{name: value or None, ..., "composite": value or None}`` in ``metric_defs`` order.
    Raises: ``MetricInputError`` if a metric is named ``composite``, plus whatever
    :func:`composite_score` and the metrics raise.
    """
    if "composite" in metric_defs:
        raise MetricInputError("a metric may not be named 'composite': that key holds the composite score")
    records = tuple(records)
    out: dict[str, float | None] = {name: d.compute(records) for name, d in metric_defs.items()}
    hib = {name: d.higher_is_better for name, d in metric_defs.items()}
    out["composite"] = composite_score(out, weights, higher_is_better=hib)
    return out


# ----------------------------------------------------------------------------------------------
# Built-in plugin


@hookimpl
def tp_register_metrics(registry: Registry[MetricDef]) -> None:
    """Register the built-in metrics: acc, acc_norm, ifr, ece, auroc, pr_p, pr_n (acc_norm has no default weight)."""
    registry.add(
        "acc",
        MetricDef(
            compute=accuracy_from_records,
            display="ACC",
            higher_is_better=BUILTIN_METRICS["acc"],
            description="fraction of samples answered correctly (an unparsed answer is wrong)",
        ),
    )
    registry.add(
        "acc_norm",
        MetricDef(
            compute=acc_norm_from_records,
            display="ACC-norm",
            higher_is_better=BUILTIN_METRICS["acc_norm"],
            output_types=frozenset({"multiple_choice"}),
            description="lm-eval's acc_norm: ACC with each choice's loglikelihood divided by its length in characters",
        ),
    )
    registry.add(
        "ifr",
        MetricDef(
            compute=ifr_from_records,
            display="IFR",
            higher_is_better=BUILTIN_METRICS["ifr"],
            output_types=frozenset({"generate_until"}),
            description="fraction of responses in the task's required output format (n/a for multiple_choice)",
        ),
    )
    registry.add(
        "ece",
        MetricDef(
            compute=ece_from_records,
            display="ECE",
            higher_is_better=BUILTIN_METRICS["ece"],
            needs_confidence=True,
            description="expected calibration error over 10 equal-width, right-closed confidence bins",
        ),
    )
    registry.add(
        "auroc",
        MetricDef(
            compute=auroc_from_records,
            display="AUROC",
            higher_is_better=BUILTIN_METRICS["auroc"],
            needs_confidence=True,
            description="area under ROC of confidence separating correct from incorrect answers",
        ),
    )
    registry.add(
        "pr_p",
        MetricDef(
            compute=pr_p_from_records,
            display="PR-P",
            higher_is_better=BUILTIN_METRICS["pr_p"],
            needs_confidence=True,
            description="average precision with correct answers as positives, score = confidence",
        ),
    )
    registry.add(
        "pr_n",
        MetricDef(
            compute=pr_n_from_records,
            display="PR-N",
            higher_is_better=BUILTIN_METRICS["pr_n"],
            needs_confidence=True,
            description="average precision with incorrect answers as positives, score = 1 - confidence",
        ),
    )
