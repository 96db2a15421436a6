"""The prefix-sharing loglikelihood scorer agrees with lm-eval's HFLM on the real embedded model."""

from __future__ import annotations

import pytest

from tp_harness.backends.prefix_scorer import SCORER_ID, PrefixSharingScorer, with_prefix_scorer


class Req:
    """lm-eval ``Instance`` double: ``args`` is ``(context, continuation)``."""

    def __init__(self, context: str, continuation: str):
        self.args = (context, continuation)
        self.arguments = self.args


@pytest.fixture(scope="module")
def requests_and_reference(registries, embedded_backend):
    """Real multiple_choice requests of three tasks (chat template, instruction as system message) and
    lm-eval's own loglikelihoods for them."""
    from tp_harness.evaluation.evaluator import prepare_task, render_context
    from tp_harness.runs.runner import load_specs

    reqs = []
    for task in ("commonsenseqa", "financial_phrasebank", "legalbench_hearsay"):
        (spec,) = load_specs([task], [], registries)
        prep = prepare_task(spec, data_formats=registries.data_formats, caps={"test": 4}, apply_chat_template="on")
        for i, doc in enumerate(prep.splits["test"]):
            ctx = render_context(prep, embedded_backend, instruction=spec.tp.instruction, split="test", doc_id=i)
            reqs += prep.task.construct_requests(doc=doc, ctx=ctx, metadata=(task, i, 1), apply_chat_template=True)
    reqs += [Req("", "hello world"), Req("The capital of France is", " Paris")]  # empty context: lm-eval path
    return reqs, embedded_backend.lm.loglikelihood(reqs, disable_tqdm=True)


@pytest.mark.slow
def test_agrees_with_lm_eval_to_1e_4(embedded_backend, requests_and_reference):
    reqs, reference = requests_and_reference
    got = PrefixSharingScorer(embedded_backend.lm).loglikelihood(reqs)
    assert len(got) == len(reference)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(got, reference):
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy


@pytest.mark.slow
def test_small_batches_give_the_same_values(embedded_backend, requests_and_reference):
    reqs, _ = requests_and_reference
    big = PrefixSharingScorer(embedded_backend.lm).loglikelihood(reqs)
    small = PrefixSharingScorer(embedded_backend.lm, max_batch_tokens=256).loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(big, small):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb  # fp32 batch composition: ~1e-5


@pytest.mark.slow
def test_attached_to_the_embedded_model_and_keyed_in_its_identity(embedded_backend, monkeypatch):
    assert isinstance(embedded_backend.fast_loglikelihood, PrefixSharingScorer)
    assert embedded_backend.identity["loglikelihood_scorer"] == SCORER_ID


def test_lm_eval_scorer_can_be_forced(monkeypatch):
    class Backend:
        lm = object()
        fast_loglikelihood = None
        identity: dict = {}

    monkeypatch.setenv("TP_HARNESS_SCORER", "lm-eval")
    backend = Backend()
    assert with_prefix_scorer(backend) is backend and backend.fast_loglikelihood is None
    monkeypatch.delenv("TP_HARNESS_SCORER")
    assert with_prefix_scorer(backend) is backend  # not an HFLM of a supported architecture
