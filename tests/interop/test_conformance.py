"""Conformance: every shipped spec with an upstream lm-eval task measures what stock lm-eval measures.

For each spec with ``tp.upstream``, a stock lm-eval task ``include:``s the upstream YAML of the installed lm-eval
package and overrides only the dataset (the spec's test docs, from local files); stock ``lm_eval.simple_evaluate``
runs it on the embedded model, and tp-harness scores the same docs with no instruction and the same rendering.
ACC (and acc_norm where lm-eval reports it) must agree to 1e-4. Real model, real lm-eval: slow (a few minutes).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from tp_harness.interop.conformance import check_conformance, stock_model, upstream_config
from tp_harness.runs.runner import spec_index
from tp_harness.spec.loader import load_spec

DOCS = 32  # test docs per task: the first 32 of the spec's seeded test split
#: shipped specs whose dataset lm-eval 0.4.13 ships a multiple_choice task for (DESIGN.md section 6)
EXPECTED = {"arc_challenge", "commonsenseqa", "mmlu_general", "mmlu_law", "mmlu_medicine", "mmlu_finance", "logiqa",
            "medmcqa", "medqa_usmle", "pubmedqa"}


def _upstream_specs() -> list[str]:
    index = spec_index()
    return sorted(name for name, path in index.items() if load_spec(path).tp.upstream is not None)


UPSTREAM = _upstream_specs()


def test_every_spec_with_an_upstream_multiple_choice_task_names_it():
    assert set(UPSTREAM) == EXPECTED


@pytest.mark.parametrize("task", UPSTREAM)
def test_deviations_record_the_upstream_values(task):
    """A spec that deviates on purpose (``tp.upstream.fields``) must hold the upstream's values there, so the
    conformance run really scores lm-eval's format."""
    spec = load_spec(spec_index()[task])
    upstream = upstream_config(spec)
    for field, value in spec.tp.upstream.fields.items():
        assert upstream.get(field, " " if field == "target_delimiter" else None) == value, field
        assert spec.lm_eval.get(field) != value, f"{field}: listed as a deviation but the spec uses the upstream value"


@pytest.fixture(scope="module")
def stock(embedded_backend):
    """lm-eval's own HFLM over the embedded model's checkpoint (loaded once)."""
    return stock_model(str(embedded_backend.checkpoint))


def _assert_same(result) -> None:
    if os.environ.get("TP_CONFORMANCE_OUT"):  # benchmarks/conformance_table.py's rows, from the CI run
        with open(os.environ["TP_CONFORMANCE_OUT"], "a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(result)) + "\n")
    assert result.n == DOCS
    assert "acc" in result.stock
    for metric, theirs in result.stock.items():
        if metric in ("acc", "acc_norm"):
            ours = result.harness[metric]
            assert ours == pytest.approx(theirs, abs=1e-4), (
                f"{result.task}: {metric} stock lm-eval {theirs:.4f} vs tp-harness {ours:.4f} on the same {result.n} docs")


@pytest.mark.slow
@pytest.mark.parametrize("task", UPSTREAM)
def test_harness_acc_equals_stock_lm_eval_upstream_task(task, embedded_backend, registries, stock, tmp_path):
    spec = load_spec(spec_index()[task], metric_names=set(registries.metrics.names()))
    result = check_conformance(spec, embedded_backend, registries, stock=stock, work_dir=tmp_path, limit=DOCS,
                               apply_chat_template="auto")
    assert result.chat_template is False  # auto: multiple_choice renders without the chat template, as lm-eval
    _assert_same(result)


@pytest.mark.slow
def test_chat_template_on_also_equals_stock_lm_eval_with_apply_chat_template(embedded_backend, registries, stock,
                                                                             tmp_path):
    spec = load_spec(spec_index()["arc_challenge"], metric_names=set(registries.metrics.names()))
    result = check_conformance(spec, embedded_backend, registries, stock=stock, work_dir=tmp_path, limit=DOCS,
                               apply_chat_template="on")
    assert result.chat_template is True
    _assert_same(result)
