"""Example: your own prompt tests with the tp-harness pytest fixtures.

Copy this file into your test suite and run it with, for example:

    pytest docs/examples/test_prompt_quality.py --tp-model=embedded:smollm2-135m --tp-limit 16

``tp_evaluate(task, prompt=None)`` scores an instruction (default: the task's original instruction) on
the task's test split with the session's scorer LLM and returns an ``Evaluation``: ``.metrics`` holds
acc, ifr, ece, auroc, pr_p, pr_n and composite (None where a metric is undefined), ``.records`` the
per-sample answers and ``.n`` their number. The model loads once per session and each (task, prompt)
is evaluated once, however many tests ask for it.
"""

import pytest

pytestmark = pytest.mark.tp


def test_original_instruction_is_above_chance(tp_evaluate):
    ev = tp_evaluate("commonsenseqa")
    assert ev.n > 0
    assert ev.metrics["acc"] >= 0.1  # five options: chance is 0.2; a 135M scorer on 8 docs may sit below it


def test_rewritten_instruction_does_not_regress(tp_evaluate):
    original = tp_evaluate("commonsenseqa")
    rewritten = tp_evaluate("commonsenseqa", "Choose the most sensible answer to the everyday question.")
    assert rewritten.metrics["composite"] >= original.metrics["composite"] - 0.1


def test_scorer_is_calibrated_enough(tp_evaluate):
    ev = tp_evaluate("commonsenseqa")
    assert ev.metrics["ece"] <= 0.6  # expected calibration error, 10 equal-width bins


@pytest.mark.tp_slow
def test_optimized_prompt_keeps_accuracy(tp_optimize, tp_evaluate):
    outcome = tp_optimize("commonsenseqa")  # a one-stage smoke optimization on the task itself
    best = tp_evaluate("commonsenseqa", outcome.best_prompt)
    assert best.metrics["acc"] >= tp_evaluate("commonsenseqa").metrics["acc"] - 0.2
