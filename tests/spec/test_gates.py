"""Gate expressions (tp.gates): parsing, bounds and checks; the plugin's worst-sample ordering."""

from __future__ import annotations

import math

import pytest

from tp_harness.entrypoints.pytest_plugin import GateResult, summary_rows, worst_samples
from tp_harness.evaluation.metrics import SampleRecord
from tp_harness.spec.gates import Gate, GateSyntaxError, parse_gate

METRICS = {"acc", "acc_norm", "ifr", "ece", "auroc", "pr_p", "pr_n"}


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold", "relative", "name"),
    [
        ("acc >= 0.25", "acc", ">=", 0.25, False, "acc>=0.25"),
        ("ece<=0.3", "ece", "<=", 0.3, False, "ece<=0.3"),
        ("  ifr > .8 ", "ifr", ">", 0.8, False, "ifr>0.8"),
        ("composite >= original - 0.02", "composite", ">=", -0.02, True, "composite>=original-0.02"),
        ("ece <= original + 0.05", "ece", "<=", 0.05, True, "ece<=original+0.05"),
        ("acc >= original", "acc", ">=", 0.0, True, "acc>=original"),
        ("auroc < 1e-1", "auroc", "<", 0.1, False, "auroc<0.1"),
    ],
)
def test_parse_gate_forms(text, metric, op, threshold, relative, name):
    gate = parse_gate(text, metric_names=METRICS)
    assert (gate.metric, gate.op, gate.relative, gate.name) == (metric, op, relative, name)
    assert math.isclose(gate.threshold, threshold)
    assert gate.text == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acc => 0.3", "cannot parse gate 'acc => 0.3'"),
        ("acc", "cannot parse gate 'acc'"),
        ("acc == 0.3", "op one of >=, <=, >, <"),
        ("acc >= original * 0.9", "cannot parse gate"),
        ("accuracy >= 0.3", "unknown metric 'accuracy'; known: acc, acc_norm, auroc, composite, ece, ifr, pr_n, pr_p"),
    ],
)
def test_parse_gate_errors_say_what_was_expected(text, message):
    with pytest.raises(GateSyntaxError) as err:
        parse_gate(text, metric_names=METRICS)
    assert message in str(err.value)


def test_check_absolute_and_regression_bounds():
    assert parse_gate("acc >= 0.25").check(0.25) and not parse_gate("acc > 0.25").check(0.25)
    assert parse_gate("ece <= 0.3").check(0.1) and not parse_gate("ece <= 0.3").check(0.31)
    reg = parse_gate("composite >= original - 0.02")
    assert math.isclose(reg.bound(0.5), 0.48)
    assert reg.check(0.481, original=0.5) and not reg.check(0.47, original=0.5)
    assert not parse_gate("acc >= 0.0").check(float("nan"))
    with pytest.raises(ValueError, match="original prompt"):
        reg.bound(None)


def test_gate_is_a_value_object():
    assert parse_gate("acc >= 0.3") == Gate("acc >= 0.3", "acc", ">=", 0.3)


def _rec(doc_id, correct, confidence, parsed="x"):
    return SampleRecord(doc_id=doc_id, prompt_sha="s", response=str(parsed), parsed_answer=parsed, gold="g",
                        confidence=confidence, followed=parsed is not None, correct=correct)


def test_worst_samples_are_confident_wrong_answers_first_then_unparsed():
    records = [_rec(0, True, 0.99), _rec(1, False, 0.4), _rec(2, False, 0.9), _rec(3, False, None, parsed=None),
               _rec(4, False, 0.7)]
    assert [r.doc_id for r in worst_samples(records, 3)] == [2, 4, 1]
    assert [r.doc_id for r in worst_samples(records, 10)] == [2, 4, 1, 3]
    assert worst_samples([_rec(0, True, 0.5)], 3) == []


def test_summary_rows_format_values_and_missing_ones():
    rows = summary_rows([GateResult("id", "t", "acc >= 0.2", "best", "passed", 0.25, 0.2, 8),
                         GateResult("id2", "t", "ifr >= 0.5", "best", "skipped", None, None, 8)])
    assert rows == [["t", "acc >= 0.2", "best", "0.2500", "0.2000", "8", "passed"],
                    ["t", "ifr >= 0.5", "best", "n/a", "n/a", "8", "skipped"]]


@pytest.mark.parametrize(("gate", "value", "original", "applies", "status", "bound", "reason"), [
    ("acc >= 0.25", 0.3, None, True, "passed", 0.25, ""),
    ("acc >= 0.25", 0.2, None, True, "failed", 0.25, ""),
    ("ece <= 0.3", float("nan"), None, True, "failed", 0.3, ""),  # NaN never passes
    ("composite >= original - 0.02", 0.49, 0.5, True, "passed", 0.48, ""),
    ("composite >= original - 0.02", 0.47, 0.5, True, "failed", 0.48, ""),
    ("ifr >= 0.5", None, None, False, "skipped", None, "ifr does not apply to multiple_choice scoring (t)"),
    ("auroc >= 0.5", None, None, True, "skipped", None, "auroc is undefined for t (multiple_choice, n=8)"),
    ("auroc >= original", 0.6, None, True, "skipped", None, "auroc of the original prompt is undefined for t"),
])
def test_check_gate_is_a_pure_verdict(gate, value, original, applies, status, bound, reason) -> None:
    from tp_harness.spec.gates import GateOutcome, check_gate

    verdict = check_gate(parse_gate(gate), value=value, original=original, applies=applies, task="t",
                         output_type="multiple_choice", n=8)
    assert isinstance(verdict, GateOutcome) and verdict.status == status
    assert verdict.bound == (pytest.approx(bound) if bound is not None else None)
    assert verdict.reason.startswith(reason)
