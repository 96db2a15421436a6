"""Unit tests of tp_harness.evaluation.metrics: every metric against hand-computed values, edges and errors."""

from __future__ import annotations

import math

import pluggy
import pytest

from tp_harness.errors import MetricInputError
from tp_harness.evaluation import metrics as m
from tp_harness.evaluation.metrics import (
    DEFAULT_WEIGHTS,
    SampleRecord,
    accuracy,
    auroc,
    composite_score,
    compute_metrics,
    expected_calibration_error,
    instruction_following_rate,
    pr_n,
    pr_p,
)
from tp_harness.plugin import hookspecs
from tp_harness.plugin.hookspecs import MetricDef, Registry

HIB = {"acc": True, "acc_norm": True, "ifr": True, "ece": False, "auroc": True, "pr_p": True, "pr_n": True}

# The running example for the ranking metrics (5 samples):
#   confidence 0.9  0.8  0.7  0.6  0.5
#   correct    T    T    F    T    F
CONF5 = [0.9, 0.8, 0.7, 0.6, 0.5]
CORR5 = [True, True, False, True, False]


def rec(
    doc_id: int,
    *,
    correct: bool,
    confidence: float | None = 0.5,
    followed: bool | None = True,
    parsed: str | None = "A",
) -> SampleRecord:
    """A SampleRecord with gold 'A' and the given outcome."""
    return SampleRecord(
        doc_id=doc_id,
        prompt_sha="0123456789abcdef",
        response=f"Answer: {parsed}",
        parsed_answer=parsed,
        gold="A",
        confidence=confidence,
        followed=followed,
        correct=correct,
    )


# ---------------------------------------------------------------------------------------------- ACC / IFR


def test_accuracy_hand_computed():
    # 3 correct of 4 -> 3/4 = 0.75
    assert accuracy([True, False, True, True]) == pytest.approx(0.75)


def test_accuracy_empty_is_none():
    assert accuracy([]) is None


def test_accuracy_rejects_non_bool():
    with pytest.raises(MetricInputError, match=r"correct\[1\] = None is not a bool"):
        accuracy([True, None])  # type: ignore[list-item]


def test_accuracy_from_records_counts_unparsed_as_wrong():
    # doc 1 claims correct=True but has no parsed answer -> counted wrong: 1 correct of 3 = 1/3
    records = [
        rec(0, correct=True),
        rec(1, correct=True, parsed=None),
        rec(2, correct=False, parsed="B"),
    ]
    assert m.accuracy_from_records(records) == pytest.approx(1 / 3)


def test_ifr_hand_computed():
    # 2 followed of 5 -> 0.4
    assert instruction_following_rate([True, False, False, True, False]) == pytest.approx(0.4)


@pytest.mark.parametrize("followed", [[], [None, None, None]])
def test_ifr_none_when_empty_or_not_applicable(followed):
    assert instruction_following_rate(followed) is None


def test_ifr_rejects_mixed_none_and_bool():
    with pytest.raises(MetricInputError, match=r"1 None value\(s\) \(first at index 1\).*do not pool"):
        instruction_following_rate([True, None, False])


def test_ifr_from_records_is_none_for_multiple_choice():
    records = [rec(i, correct=i % 2 == 0, followed=None) for i in range(4)]
    assert m.ifr_from_records(records) is None


# ---------------------------------------------------------------------------------------------- ECE


def test_ece_hand_computed():
    # conf [0.9, 0.9, 0.6, 0.2], correct [T, F, T, F]; right-closed bins of width 0.1:
    #   bin 8 (0.8, 0.9]: {0.9 T, 0.9 F} acc 0.5 conf 0.9 -> 2/4 * 0.4 = 0.20
    #   bin 5 (0.5, 0.6]: {0.6 T}        acc 1.0 conf 0.6 -> 1/4 * 0.4 = 0.10
    #   bin 1 (0.1, 0.2]: {0.2 F}        acc 0.0 conf 0.2 -> 1/4 * 0.2 = 0.05
    #   ECE = 0.35
    ece = expected_calibration_error([0.9, 0.9, 0.6, 0.2], [True, False, True, False])
    assert ece == pytest.approx(0.35)


def test_ece_perfectly_calibrated_is_zero_and_overconfident_is_large():
    # bin 7 (0.7, 0.8]: 4 of 5 correct at 0.8 -> |0.8 - 0.8| = 0
    assert expected_calibration_error([0.8] * 5, [True] * 4 + [False]) == pytest.approx(0.0)
    # all wrong at confidence 1.0: bin 9, |0 - 1| = 1
    assert expected_calibration_error([1.0, 1.0], [False, False]) == pytest.approx(1.0)


def test_ece_zero_and_first_edge_share_bin_0():
    # 0.0 and 0.1 both in bin 0: acc 0.5, conf 0.05 -> |0.5 - 0.05| = 0.45
    # (left-closed bins would give 1/2*|1-0| + 1/2*|0-0.1| = 0.55)
    assert expected_calibration_error([0.0, 0.1], [True, False]) == pytest.approx(0.45)


def test_ece_just_above_edge_goes_to_next_bin():
    # 0.1 in bin 0, 0.1000001 in bin 1:
    #   1/2*|1 - 0.1| + 1/2*|0 - 0.1000001| = 0.45 + 0.05000005 = 0.50000005
    # (one shared bin would give |0.5 - 0.10000005| = 0.39999995)
    ece = expected_calibration_error([0.1, 0.1000001], [True, False])
    assert ece == pytest.approx(0.50000005, abs=1e-12)


def test_ece_one_shares_last_bin():
    # 1.0 and 0.95 both in bin 9 (0.9, 1.0]: acc 0.5, conf 0.975 -> 0.475
    # (a separate bin for exactly 1.0 would give 1/2*|0-1| + 1/2*|1-0.95| = 0.525)
    assert expected_calibration_error([1.0, 0.95], [False, True]) == pytest.approx(0.475)


def test_ece_decimal_edge_not_moved_by_float_rounding():
    # 0.3 * 10 == 3.0000000000000004 in floats, yet 0.3 belongs to bin 2 (0.2, 0.3] with 0.25:
    #   shared bin: acc 0.5, conf 0.275 -> 0.225   (naive ceil would split: 0.35 + 0.125 = 0.475)
    assert expected_calibration_error([0.3, 0.25], [True, False]) == pytest.approx(0.225)


def test_ece_bins_of_every_verbalized_percentage():
    # pct/100 lies in bin ceil(pct/10) - 1 (bin 0 for 0%), computed in integers
    pcts = list(range(101))
    got = m._bin_indices(m._as_confidence_array([p / 100 for p in pcts], pcts), 10)
    assert got.tolist() == [max((p + 9) // 10 - 1, 0) for p in pcts]


def test_ece_n_bins_changes_binning():
    # n_bins=2: bins (0, 0.5] and (0.5, 1]; conf [0.4, 0.6] correct [F, T]
    #   bin 0: |0 - 0.4| * 1/2 = 0.2; bin 1: |1 - 0.6| * 1/2 = 0.2 -> 0.4
    # n_bins=1: one bin, acc 0.5 conf 0.5 -> 0
    assert expected_calibration_error([0.4, 0.6], [False, True], n_bins=2) == pytest.approx(0.4)
    assert expected_calibration_error([0.4, 0.6], [False, True], n_bins=1) == pytest.approx(0.0)


def test_ece_empty_is_none():
    assert expected_calibration_error([], []) is None


def test_ece_rejects_length_mismatch():
    with pytest.raises(MetricInputError, match="confidence has 3 values but correct has 2"):
        expected_calibration_error([0.1, 0.2, 0.3], [True, False])


@pytest.mark.parametrize("bad", [1.5, -0.01, 80.0, math.nan])
def test_ece_rejects_confidence_outside_unit_interval(bad):
    with pytest.raises(
        MetricInputError, match=r"confidence\[1\] = .* is outside \[0, 1\].*divide a percentage by 100"
    ):
        expected_calibration_error([0.5, bad], [True, False])


def test_ece_rejects_none_confidence():
    with pytest.raises(MetricInputError, match=r"confidence\[0\] = None is not a number"):
        expected_calibration_error([None], [True])  # type: ignore[list-item]


def test_ece_rejects_bad_n_bins():
    with pytest.raises(MetricInputError, match="n_bins = 0; use a positive integer"):
        expected_calibration_error([0.5], [True], n_bins=0)


# ---------------------------------------------------------------------------------------------- AUROC / PR


def test_auroc_hand_computed():
    # positives (correct) 0.9, 0.8, 0.6; negatives 0.7, 0.5; 6 pairs
    # pos > neg: 0.9>0.7, 0.9>0.5, 0.8>0.7, 0.8>0.5, 0.6>0.5; 0.6<0.7 -> 5/6
    assert auroc(CONF5, CORR5) == pytest.approx(5 / 6)


def test_auroc_ties_count_half():
    # one pair, equal scores -> 0.5
    assert auroc([0.5, 0.5], [True, False]) == pytest.approx(0.5)


def test_pr_p_hand_computed():
    # sorted by confidence: T T F T F, 3 positives; AP = sum (R_k - R_k-1) * P_k
    #   k=1 P=1 R=1/3; k=2 P=1 R=2/3; k=3 P=2/3 R=2/3 (no recall step); k=4 P=3/4 R=1
    #   AP = 1/3*1 + 1/3*1 + 1/3*3/4 = 11/12
    assert pr_p(CONF5, CORR5) == pytest.approx(11 / 12)


def test_pr_n_hand_computed():
    # positives = incorrect, score = 1 - conf: 0.5(F) 0.4(T) 0.3(F) 0.2(T) 0.1(T) in descending order
    #   -> pos, neg, pos, neg, neg; 2 positives
    #   k=1 P=1 R=1/2; k=2 no recall step; k=3 P=2/3 R=1 -> AP = 1/2*1 + 1/2*2/3 = 5/6
    assert pr_n(CONF5, CORR5) == pytest.approx(5 / 6)


@pytest.mark.parametrize("fn", [auroc, pr_p, pr_n])
@pytest.mark.parametrize(
    ("conf", "corr"),
    [([], []), ([0.9, 0.2, 0.6], [True, True, True]), ([0.9, 0.2, 0.6], [False, False, False])],
    ids=["empty", "all-correct", "all-wrong"],
)
def test_ranking_metrics_undefined_is_none(fn, conf, corr):
    assert fn(conf, corr) is None


@pytest.mark.parametrize("fn", [auroc, pr_p, pr_n])
def test_ranking_metrics_reject_bad_input(fn):
    with pytest.raises(MetricInputError, match="confidence has 1 values but correct has 2"):
        fn([0.5], [True, False])
    with pytest.raises(MetricInputError, match=r"confidence\[0\] = 2.0 is outside \[0, 1\]"):
        fn([2.0, 0.5], [True, False])


def test_calibration_wrappers_skip_records_without_confidence():
    # Records with confidence None are ignored; what is left is CONF5/CORR5 -> same values.
    # A confidence-less record at 0.0 with correct=True would otherwise change every metric.
    records = [rec(i, correct=c, confidence=p) for i, (p, c) in enumerate(zip(CONF5, CORR5, strict=True))]
    records += [rec(5, correct=True, confidence=None), rec(6, correct=False, confidence=None)]
    assert m.auroc_from_records(records) == pytest.approx(5 / 6)
    assert m.pr_p_from_records(records) == pytest.approx(11 / 12)
    assert m.pr_n_from_records(records) == pytest.approx(5 / 6)
    assert m.ece_from_records(records) == pytest.approx(expected_calibration_error(CONF5, CORR5))
    # ...while ACC still counts all 7 records: 3 + 1 correct of 7
    assert m.accuracy_from_records(records) == pytest.approx(4 / 7)


def test_calibration_wrappers_none_when_no_record_has_confidence():
    records = [rec(0, correct=True, confidence=None), rec(1, correct=False, confidence=None)]
    assert m.ece_from_records(records) is None
    assert m.auroc_from_records(records) is None
    assert m.pr_p_from_records(records) is None
    assert m.pr_n_from_records(records) is None


# ---------------------------------------------------------------------------------------------- composite


def test_composite_all_terms_ece_enters_as_one_minus():
    values = {"acc": 0.5, "ifr": 1.0, "ece": 0.2, "auroc": 0.6, "pr_p": 0.4, "pr_n": 0.8}
    # .35*.5 + .25*1 + .2*(1-.2) + .1*.6 + .05*.4 + .05*.8
    # = .175 + .25 + .16 + .06 + .02 + .04 = 0.705 (weights already sum to 1)
    assert composite_score(values, DEFAULT_WEIGHTS, higher_is_better=HIB) == pytest.approx(0.705)


def test_composite_ifr_none_spreads_its_weight():
    values = {"acc": 0.5, "ifr": None, "ece": 0.2, "auroc": 0.6, "pr_p": 0.4, "pr_n": 0.8}
    # without IFR: (.175 + .16 + .06 + .02 + .04) / (1 - .25) = 0.455 / 0.75 = 0.606666...
    assert composite_score(values, DEFAULT_WEIGHTS, higher_is_better=HIB) == pytest.approx(0.455 / 0.75)


def test_composite_drops_undefined_ranking_terms_and_unweighted_values():
    values = {"acc": 0.5, "ifr": None, "ece": 0.2, "auroc": None, "pr_p": None, "pr_n": None, "extra": 0.0}
    # acc and ece only: (.35*.5 + .2*.8) / (.35 + .2) = .335 / .55 = 0.609090...; "extra" has no weight
    assert composite_score(values, DEFAULT_WEIGHTS, higher_is_better=HIB) == pytest.approx(0.335 / 0.55)


def test_composite_weights_need_not_sum_to_one():
    # {acc: 2, ece: 2} behaves like {acc: .5, ece: .5}: .5*.9 + .5*(1-.3) = .45 + .35 = 0.8
    got = composite_score({"acc": 0.9, "ece": 0.3}, {"acc": 2.0, "ece": 2.0}, higher_is_better=HIB)
    assert got == pytest.approx(0.8)


def test_composite_none_when_no_term_present():
    assert composite_score({"acc": None, "ece": None}, DEFAULT_WEIGHTS, higher_is_better=HIB) is None
    assert composite_score({"acc": 0.7}, {"acc": 0.0}, higher_is_better=HIB) is None


def test_composite_rejects_negative_weight():
    with pytest.raises(
        MetricInputError, match=r"weight for metric 'ece' is -0.2; weights must be finite and >= 0"
    ):
        composite_score({"acc": 0.5}, {"acc": 0.5, "ece": -0.2}, higher_is_better=HIB)


def test_composite_rejects_weight_for_unknown_metric():
    with pytest.raises(
        MetricInputError, match=r"weight given for unknown metric 'bleu'; known metrics: \['acc'"
    ):
        composite_score({"acc": 0.5}, {"acc": 0.5, "bleu": 0.5}, higher_is_better=HIB)


def test_composite_rejects_value_outside_unit_interval():
    with pytest.raises(
        MetricInputError, match=r"metric 'acc' has value 75.0; composite terms must be in \[0, 1\]"
    ):
        composite_score({"acc": 75.0}, {"acc": 1.0}, higher_is_better=HIB)


# ---------------------------------------------------------------------------------------------- compute_metrics / hook


def _builtin_registry() -> Registry[MetricDef]:
    registry: Registry[MetricDef] = Registry("metric", MetricDef)
    registry.plugin = "tp_harness.evaluation.metrics"
    m.tp_register_metrics(registry)
    return registry


def test_hook_registers_seven_metrics():
    registry = _builtin_registry()
    assert registry.names() == ["acc", "acc_norm", "ifr", "ece", "auroc", "pr_p", "pr_n"]
    assert {e.plugin for e in registry.entries()} == {"tp_harness.evaluation.metrics"}
    displays = [registry.get(n).display for n in registry.names()]
    assert displays == ["ACC", "ACC-norm", "IFR", "ECE", "AUROC", "PR-P", "PR-N"]
    assert {n: registry.get(n).higher_is_better for n in registry.names()} == HIB
    assert registry.get("ifr").output_types == frozenset({"generate_until"})
    assert registry.get("acc_norm").output_types == frozenset({"multiple_choice"})
    assert [n for n in registry.names() if registry.get(n).needs_confidence] == [
        "ece",
        "auroc",
        "pr_p",
        "pr_n",
    ]
    assert set(registry.names()) == set(DEFAULT_WEIGHTS) | {"acc_norm"}  # acc_norm is reported, not weighted


def test_hook_matches_spec_through_pluggy():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(m, name="tp_harness.evaluation.metrics")
    pm.check_pending()
    registry: Registry[MetricDef] = Registry("metric", MetricDef)
    pm.hook.tp_register_metrics(registry=registry)
    assert len(registry) == 7


def test_compute_metrics_generate_until():
    registry = _builtin_registry()
    defs = {n: registry.get(n) for n in registry.names()}
    # CONF5/CORR5 as records; followed T T F T T -> IFR 4/5
    followed = [True, True, False, True, True]
    records = [
        rec(i, correct=c, confidence=p, followed=f)
        for i, (p, c, f) in enumerate(zip(CONF5, CORR5, followed, strict=True))
    ]
    out = compute_metrics(records, defs, weights=DEFAULT_WEIGHTS)
    # ECE: each sample alone in its bin: (|1-.9| + |1-.8| + |0-.7| + |1-.6| + |0-.5|) / 5
    #    = (.1 + .2 + .7 + .4 + .5) / 5 = 0.38
    expected = {"acc": 0.6, "ifr": 0.8, "ece": 0.38, "auroc": 5 / 6, "pr_p": 11 / 12, "pr_n": 5 / 6}
    assert list(out) == ["acc", "acc_norm", "ifr", "ece", "auroc", "pr_p", "pr_n", "composite"]
    assert out["acc_norm"] is None  # the records carry no length-normalized prediction (generate_until)
    for name, value in expected.items():
        assert out[name] == pytest.approx(value), name
    # .35*.6 + .25*.8 + .2*(1-.38) + .1*5/6 + .05*11/12 + .05*5/6 = .21+.2+.124+.083333+.045833+.041667 = 0.704833
    assert out["composite"] == pytest.approx(0.21 + 0.2 + 0.124 + 0.1 * 5 / 6 + 0.05 * 11 / 12 + 0.05 * 5 / 6)


def test_compute_metrics_multiple_choice_all_correct():
    registry = _builtin_registry()
    defs = {n: registry.get(n) for n in registry.names()}
    # all correct at confidence 0.75 -> ACC 1, ECE |1 - .75| = .25, IFR and ranking metrics None
    records = [rec(i, correct=True, confidence=0.75, followed=None) for i in range(4)]
    out = compute_metrics(records, defs, weights=DEFAULT_WEIGHTS)
    assert out["ifr"] is None and out["auroc"] is None and out["pr_p"] is None and out["pr_n"] is None
    assert out["acc"] == pytest.approx(1.0)
    assert out["ece"] == pytest.approx(0.25)
    # (.35*1 + .2*(1-.25)) / (.35 + .2) = .5 / .55
    assert out["composite"] == pytest.approx(0.5 / 0.55)


def test_compute_metrics_rejects_metric_named_composite():
    defs = {"composite": MetricDef(compute=m.accuracy_from_records, display="C")}
    with pytest.raises(MetricInputError, match="may not be named 'composite'"):
        compute_metrics([rec(0, correct=True)], defs, weights={})


def test_the_registry_and_the_constants_agree_on_every_builtin_metric(registries) -> None:
    from tp_harness.constants import BUILTIN_METRICS

    assert {e.name: e.item.higher_is_better for e in registries.metrics.entries() if e.builtin} == dict(BUILTIN_METRICS)


def test_rounding_past_one_is_clamped_so_the_composite_accepts_it() -> None:
    """A real run's PR-N came out as 1.0000000000000002 (sklearn's summation) and the composite refused it."""
    import numpy as np

    from tp_harness.evaluation import metrics

    assert metrics._unit(1.0000000000000002) == 1.0 and metrics._unit(-1e-17) == 0.0 and metrics._unit(0.25) == 0.25
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 60))
        conf = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0, rng.random()], size=n)
        correct = rng.random(n) < rng.random()
        for fn in (metrics.auroc, metrics.pr_p, metrics.pr_n):
            value = fn(list(conf), list(correct))
            assert value is None or 0.0 <= value <= 1.0


def test_auroc_and_average_precision_equal_scikit_learn_on_random_samples_with_ties() -> None:
    """The numpy AUROC (Mann-Whitney over average ranks) and step-wise AP are sklearn's, to rounding."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from tp_harness.evaluation import metrics

    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(500):
        n = int(rng.integers(2, 80))
        conf = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0, rng.random(), rng.random()], size=n)
        correct = rng.random(n) < rng.random()
        if correct.all() or not correct.any():
            continue
        checked += 1
        assert metrics.auroc(list(conf), list(correct)) == pytest.approx(roc_auc_score(correct, conf), abs=1e-12)
        assert metrics.pr_p(list(conf), list(correct)) == pytest.approx(
            min(1.0, average_precision_score(correct, conf)), abs=1e-12)
        assert metrics.pr_n(list(conf), list(correct)) == pytest.approx(
            min(1.0, average_precision_score(~correct, 1.0 - conf)), abs=1e-12)
    assert checked > 300
