"""Equal-budget ablations (issue 18 item 2): ``no_transfer`` gets two-stage's search, computed without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tp_harness.evaluation.evaluator import prepare_task
from tp_harness.optimizer.budget import BUDGETS
from tp_harness.optimizer.transfer import equal_budget, search_cost
from tp_harness.runs.runner import load_specs


@pytest.mark.parametrize("budget", ["smoke", "sweep", "evidence"])  # light, medium, heavy race on evidence: refused
def test_no_transfer_gets_two_stage_candidates_exactly_and_requests_within_ten_percent(registries, budget):
    b = BUDGETS[budget]
    specs = load_specs(["mmlu_general", "commonsenseqa", "financial_phrasebank"], [], registries)
    prep = [prepare_task(s, data_formats=registries.data_formats, caps=b.caps()) for s in specs]
    *sources, target = prep
    full_caps = {k: v for k, v in b.caps().items() if k != "optimize"}
    target_full = prepare_task(specs[-1], data_formats=registries.data_formats, caps=full_caps)
    matched, record = equal_budget(b, sources=sources, target=target, target_full=target_full, reference_share=0.5)
    two = search_cost(SimpleNamespace(budget=b, mode="two_stage", sources=sources, targets=[target],
                                      reference_share=0.5))
    target_eq = prepare_task(specs[-1], data_formats=registries.data_formats, caps=matched.caps())
    nt = search_cost(SimpleNamespace(budget=matched, mode="no_transfer", sources=[], targets=[target_eq],
                                     reference_share=0.5))
    assert nt["candidates"] == two["candidates"] == record["two_stage"]["candidates"]
    assert abs(nt["scorer_requests"] / two["scorer_requests"] - 1) <= 0.10, (nt, two, record)
    assert nt["scorer_requests"] == record["no_transfer"]["scorer_requests"]
    assert matched.optimize_n == record["optimize_docs"] >= (b.optimize_n or 0)
