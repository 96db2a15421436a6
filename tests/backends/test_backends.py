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
    loads = hf.LOAD_COUNT["hflm"]
    assert loads - before <= 1 and cached.lm.loaded  # the first request loads the weights, if nothing did before
    hf_backend = build_backend("hf", f"pretrained={embedded_backend.checkpoint}", registries, dtype="float32",
                               batch_size="16")
    assert hf.LOAD_COUNT["hflm"] == loads and hf_backend.lm is cached.lm
    assert hf_backend.name == "hf" and hf_backend.identity["backend"] == "hf"  # the same model, its own label


@pytest.mark.parametrize("model", ["embedded:smollm2-135m", "embedded:gemma3-270m"])
def test_the_lazy_model_knows_its_tokenizer_window_and_chat_template_before_loading_and_they_equal_hflms(
        model, registries):
    """Issue 15, item 3: what a run asks before the model computes (tokens, chat template, context window, model
    type) comes from the checkpoint's files without loading the weights, and equals what the loaded HFLM says."""
    import transformers

    backend = build_backend(model, "", registries, dtype="float32", batch_size="16", cache=False)
    path = Path(backend.checkpoint)
    lazy = hf.LazyHFLM(path, backend_name=model, dtype="float32", batch_size=16, device="cpu")  # a fresh one
    texts = ["The sky is blue.", "Answer: B\nConfidence: 90%", "  naïve café — ünïcödé\n\n"]
    messages = [{"role": "system", "content": "Be brief.\n\n"}, {"role": "user", "content": "Is 7 prime?"}]
    window = lazy.max_length
    ours = [lazy.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    chat = lazy.apply_chat_template(messages) if lazy.tokenizer.chat_template else None
    assert not lazy.loaded and lazy.model_type == transformers.AutoConfig.from_pretrained(path).model_type
    auto = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    assert ours == [auto(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert lazy.tokenizer.chat_template == auto.chat_template
    if chat is not None:
        assert chat == auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    real = lazy.hflm()  # loads the weights now
    assert lazy.loaded and real.max_length == window
    if chat is not None:
        assert real.apply_chat_template(messages) == chat
    assert backend.identity["model_type"] == real.model.config.model_type
    assert (backend.identity["chat_template"] is None) == (not auto.chat_template)
