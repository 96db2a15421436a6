"""The rendering switch (``--apply-chat-template auto|on|off``): where the instruction goes, what ``auto`` picks,
and that ``on`` still gives the numbers the harness reported before the switch existed (real embedded model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tp_harness.backends.base import LMBackend
from tp_harness.errors import BackendError
from tp_harness.evaluation.evaluator import prepare_task, render_context, uses_chat_template
from tp_harness.runs.runner import evaluate_prompt, load_specs

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "Classify the sentiment of the financial news sentence as negative, neutral or positive."


def _prep(registries, task: str = "financial_phrasebank", *, mode: str | None = None, chat: str | None = None):
    spec = load_specs([task], [], registries)[0]
    return prepare_task(spec, data_formats=registries.data_formats, mode=mode, caps={"test": 2}, apply_chat_template=chat)


def test_auto_is_off_for_multiple_choice_and_on_for_generate_until_with_a_chat_model(registries):
    from types import SimpleNamespace

    chat_model = SimpleNamespace(has_chat_template=True, name="a chat model")  # only the flag is read
    assert not uses_chat_template(_prep(registries), chat_model)
    assert uses_chat_template(_prep(registries, mode="generate_until"), chat_model)
    assert uses_chat_template(_prep(registries, chat="on"), chat_model)
    assert not uses_chat_template(_prep(registries, mode="generate_until", chat="off"), chat_model)
    base_model = SimpleNamespace(has_chat_template=False, name="a base model")
    assert not uses_chat_template(_prep(registries, mode="generate_until"), base_model)


@pytest.mark.slow
def test_off_puts_the_instruction_where_lm_evals_description_goes_and_on_in_the_system_message(
        registries, embedded_backend):
    off, on = _prep(registries, chat="off"), _prep(registries, chat="on")
    doc_text = off.task.doc_to_text(off.splits["test"][0])
    assert render_context(off, embedded_backend, instruction=INSTRUCTION, split="test", doc_id=0) == (
        INSTRUCTION + "\n\n" + doc_text)  # lm-eval: description + doc_to_text, no chat markers
    chat = render_context(on, embedded_backend, instruction=INSTRUCTION, split="test", doc_id=0)
    assert chat.startswith("<|im_start|>system\n" + INSTRUCTION) and doc_text in chat
    assert chat.endswith("<|im_start|>assistant\n")


def test_on_for_a_model_without_a_chat_template_is_an_error(registries):
    class NoTokenizer:
        pass

    base = LMBackend(name="base-double", lm=NoTokenizer(), identity={"backend": "base-double"})
    assert not uses_chat_template(_prep(registries, mode="generate_until"), base)  # auto: no template, none used
    with pytest.raises(BackendError, match=r"'base-double': has no chat template, but task 'financial_phrasebank' is "
                                           r"rendered with --apply-chat-template on\n  to fix: use --apply-chat-template off"):
        uses_chat_template(_prep(registries, chat="on"), base)


def test_a_spec_sets_its_default_and_the_flag_overrides_it(registries, tmp_path):
    spec = load_specs(["financial_phrasebank"], [], registries)[0]
    text = spec.path.read_text(encoding="utf-8").replace("    domain: financial", "    apply_chat_template: on\n    domain: financial")
    path = tmp_path / "fpb_chat.yaml"
    path.write_text(text.replace("task: financial_phrasebank", "task: fpb_chat"), encoding="utf-8")
    import shutil  # tp.data.files are relative to the spec and must stay inside its directory (no symlink out)

    shutil.copytree(spec.data_dir / "data" / "financial_phrasebank", tmp_path / "data" / "financial_phrasebank")
    (chatty,) = load_specs(["fpb_chat"], [str(tmp_path)], registries)
    assert chatty.tp.apply_chat_template == "on"
    assert prepare_task(chatty, data_formats=registries.data_formats, caps={"test": 1}).chat_template == "on"
    assert prepare_task(chatty, data_formats=registries.data_formats, caps={"test": 1}, apply_chat_template="off").chat_template == "off"


#: what tp-harness reported before the switch (chat template always on): the committed sweep's original-prompt
#: test evaluations of SmolLM2-135M-Instruct (results/runs/sweep-embedded-smollm2-135m-<task>-two_stage-sweep-s0 as
#: committed on 2026-11-22 and replaced on 2026-12-02 by the re-run under the new default; in git history up to
#: 9c3b03e), 32 test docs, whose spec formats the switch left as they were
TODAY = {
    "financial_phrasebank": {"acc": 0.09375, "ece": 0.5656533728938742, "auroc": 0.6436781609195402,
                             "composite": 0.32902977733444544},
    "legalbench_hearsay": {"acc": 0.625, "ece": 0.30096727210566376, "auroc": 0.3, "composite": 0.5734510126450558},
}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TODAY))
def test_chat_template_on_reproduces_the_numbers_reported_before_the_switch(task, registries, embedded_backend):
    _, ev = evaluate_prompt(task=task, registries=registries, limit=32, apply_chat_template="on")
    assert ev.chat_template and ev.n == 32
    for metric, value in TODAY[task].items():
        assert ev.metrics[metric] == pytest.approx(value, abs=1e-4), metric


@pytest.mark.slow
def test_cli_flag_reaches_the_evaluation(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    out = {}
    for setting in ("on", "off"):
        proc = subprocess.run([sys.executable, "-m", "tp_harness", "evaluate", "--task", "financial_phrasebank",
                               "--limit", "8", "--apply-chat-template", setting], capture_output=True, text=True,
                              timeout=600, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[setting] = proc.stdout
    assert "chat template on" in out["on"] and "chat template off" in out["off"]
    bad = subprocess.run([sys.executable, "-m", "tp_harness", "evaluate", "--task", "financial_phrasebank",
                          "--apply-chat-template", "maybe"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "invalid choice: 'maybe'" in bad.stderr
