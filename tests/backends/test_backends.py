"""Backends on the real embedded model: the embedded checkpoint, ``hf`` on a local path, both scoring
modes, a separate reference LLM, and clear errors for what cannot be built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tp_harness.backends import hf
from tp_harness.errors import BackendError
from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
from tp_harness.runs.runner import build_backend, load_specs

pytestmark = pytest.mark.slow


def test_embedded_checkpoint_is_cached_safetensors_with_chat_template(embedded_backend):
    ckpt = Path(embedded_backend.checkpoint)
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert embedded_backend.has_chat_template
    assert embedded_backend.identity["gguf_sha256"].startswith("b179c952")
    assert embedded_backend.identity["dtype"] == "float32"


def test_hf_backend_on_a_local_checkpoint_scores_like_the_embedded_one(embedded_backend, registries):
    local = build_backend("hf", f"pretrained={embedded_backend.checkpoint},batch_size=4", registries,
                          dtype="float32", batch_size="16")
    assert local is not embedded_backend and local.name == "hf"
    spec = load_specs(["financial_phrasebank"], [], registries)[0]
    prep = prepare_task(spec, data_formats=registries.data_formats, caps={"test": 6})
    (a,) = evaluate_jobs(embedded_backend, [EvalJob(prep, "test", spec.tp.instruction)], metrics=registries.metrics)
    (b,) = evaluate_jobs(local, [EvalJob(prep, "test", spec.tp.instruction)], metrics=registries.metrics)
    assert [r.parsed_answer for r in a.records] == [r.parsed_answer for r in b.records]
    for ra, rb in zip(a.records, b.records):
        assert ra.confidence == pytest.approx(rb.confidence, abs=1e-4)  # batch size 16 vs 4


def test_hf_backend_without_a_checkpoint_is_a_clear_error(registries, tmp_path):
    with pytest.raises(BackendError, match=r"backend 'hf': no model at .*config.json not found"):
        build_backend("hf", f"pretrained={tmp_path}", registries, dtype="float32", batch_size="16")
    with pytest.raises(BackendError, match="pass --model-args pretrained="):
        build_backend("hf", "", registries, dtype="float32", batch_size="16")


def test_unknown_embedded_model_lists_the_zoo(registries):
    with pytest.raises(BackendError, match="use one of: embedded:smollm2-135m"):
        build_backend("embedded:tiny-gpt", "", registries, dtype="float32", batch_size="16")


def test_generate_until_mode_parses_verbalized_answers(embedded_backend, registries):
    spec = load_specs(["mmlu_general"], [], registries)[0]
    prep = prepare_task(spec, data_formats=registries.data_formats, mode="generate_until", caps={"test": 2})
    (ev,) = evaluate_jobs(embedded_backend, [EvalJob(prep, "test", spec.tp.instruction)], metrics=registries.metrics)
    assert ev.mode == "generate_until" and ev.n == 2
    assert all(isinstance(r.response, str) and r.followed in (True, False) for r in ev.records)
    assert ev.metrics["ifr"] is not None and 0.0 <= ev.metrics["ifr"] <= 1.0  # IFR applies in this mode
    assert all(r.gold in "ABCD" for r in ev.records)


def test_reference_llm_sampling_is_seeded(embedded_backend):
    prompt = "Write one short instruction for answering trivia questions, between <INS> and </INS>."
    a = embedded_backend.sample(prompt, num_samples=2, temperature=1.0, max_tokens=16, seed=11)
    b = embedded_backend.sample(prompt, num_samples=2, temperature=1.0, max_tokens=16, seed=11)
    assert a == b and len(a) == 2 and all(isinstance(t, str) for t in a)


def test_the_model_is_built_once_per_process(embedded_backend, registries):
    before = hf.LOAD_COUNT["hflm"]
    again = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16")
    assert again.lm is embedded_backend.lm and hf.LOAD_COUNT["hflm"] == before


def test_two_builds_return_independent_wrappers_over_one_model(embedded_backend, registries, tmp_path):
    """Issue 14: build_backend memoizes only the loaded model; each wrapper's cache, counters and identity are its own."""
    import dataclasses

    before = hf.LOAD_COUNT["hflm"]
    cached = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16", cache=True)
    uncached = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16", cache=False)
    assert hf.LOAD_COUNT["hflm"] == before  # the model loads once
    assert cached is not uncached and cached.lm is uncached.lm
    assert cached.cache is not None and uncached.cache is None  # one's cache setting does not leak into the other
    assert cached.identity == uncached.identity and cached.identity is not uncached.identity
    with pytest.raises(dataclasses.FrozenInstanceError):
        cached.cache = None  # fixed when built
    from lm_eval.api.instance import Instance

    req = Instance(request_type="loglikelihood", doc={}, arguments=("The sky is", " blue"), idx=0)
    uncached.loglikelihood([req])
    assert uncached.issued["loglikelihood"] == 1 and cached.issued["loglikelihood"] == 0  # counters are per wrapper
    hf_backend = build_backend("hf", f"pretrained={embedded_backend.checkpoint}", registries, dtype="float32",
                               batch_size="16")
    assert hf.LOAD_COUNT["hflm"] == before and hf_backend.lm is cached.lm
    assert hf_backend.name == "hf" and hf_backend.identity["backend"] == "hf"  # the same model, its own label
