"""Tests of tp_harness.lm_eval_bridge: tp-harness metrics inside stock lm-eval report the harness's numbers.

Fast tests drive lm-eval's own ``simple_evaluate`` (YAML loading, ``!function`` imports, ``process_results``,
aggregation) on an exported task with a scorer double, in both scoring modes, and compare every metric with
the harness's evaluator on the same answers to 1e-9. The slow acceptance test runs the real embedded model
through a smoke optimize, exports, and runs the stock ``lm-eval run`` CLI in a subprocess.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tp_harness.errors import MetricInputError, PluginError
from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
from tp_harness.runs.runner import export_prepared_task, load_specs

TASK = "financial_phrasebank"
INSTRUCTION = "Classify the sentiment of the sentence. Reply 'Answer: <label>' then 'Confidence: <0-100>%'."
KEYS = ("acc", "acc_norm", "ifr", "ece", "auroc", "pr_p", "pr_n")


def _digest(*parts: object) -> int:
    return int(hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest(), 16)


def _double_lm(*, chat: bool = False):
    """A scorer double that is an lm-eval ``LM``: answers depend only on the request's arguments, so the
    harness and stock lm-eval get the same answer for the same prompt. ``chat``: it has a chat template (each
    message rendered as ``<role>content</role>``), as an instruct model's tokenizer does."""
    from lm_eval.api.model import LM

    class _Tokenizer:
        chat_template = "<role>content</role>" if chat else None

        def __call__(self, texts, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [t.split() for t in texts]}

    class HashLM(LM):
        tokenizer = _Tokenizer()
        tokenizer_name = "hash-double"

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in chat_history)
            return text + ("<assistant>" if add_generation_prompt else "")

        def chat_template(self, chat_template=False):
            return self.tokenizer.chat_template

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [(-(_digest(*r.args) % 4000) / 1000.0, False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [-1.0 for _ in requests]

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            for r in requests:
                h = _digest(r.args[0])
                label = ("negative", "neutral", "positive")[h % 3]
                if h % 5 == 0:
                    out.append(f"I think it is {label}.")  # no format: not followed, wrong
                elif h % 7 == 0:
                    out.append(f"Answer: {label}")  # an answer without confidence: not followed
                else:
                    out.append(f"Answer: {label}\nConfidence: {(h // 3) % 11 * 10}%")
            return out

    return HashLM()


def _stock_results(export_dir: Path, task: str, lm, *, chat: bool = False) -> dict:
    """Run the exported task through stock lm-eval's Python API (``simple_evaluate``) with ``lm``; ``chat``:
    with ``--apply_chat_template --fewshot_as_multiturn``, as the exported YAML's header asks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(export_dir)),
                                  bootstrap_iters=0, log_samples=False, random_seed=None, numpy_random_seed=None,
                                  torch_random_seed=None, fewshot_random_seed=None,
                                  apply_chat_template=chat, fewshot_as_multiturn=chat)
    return out["results"][task]


@pytest.mark.parametrize("mode", ["multiple_choice", "generate_until"])
def test_stock_lm_eval_reports_the_harness_metrics_for_the_same_answers(mode, registries, tmp_path):
    from tp_harness.backends.base import LMBackend

    spec = load_specs([TASK], [], registries)[0]
    prep = prepare_task(spec, data_formats=registries.data_formats, mode=mode, caps={"optimize": 2, "validation": 2, "test": 24})
    lm = _double_lm()
    backend = LMBackend(name="double", lm=lm, identity={"backend": "double"})
    (ev,) = evaluate_jobs(backend, [EvalJob(prep, "test", INSTRUCTION)], metrics=registries.metrics)
    export_prepared_task(tmp_path / "lm_eval_tasks", prep, {"best": INSTRUCTION}, registries)

    stock = _stock_results(tmp_path / "lm_eval_tasks", f"{TASK}__tp_best", lm)

    applies = {"ifr": "generate_until", "acc_norm": "multiple_choice"}
    listed = [k for k in KEYS if applies.get(k, mode) == mode]
    assert {k.split(",")[0] for k in stock if k.endswith(",none") and "_stderr" not in k} == {*listed, "tp_composite"}
    for key in listed:
        assert stock[f"{key},none"] == pytest.approx(ev.metrics[key], abs=1e-9, nan_ok=False), key
    assert stock["tp_composite,none"] == pytest.approx(ev.metrics["composite"], abs=1e-9)
    # the answers were not trivial: every metric is defined and the records mix right and wrong answers
    assert ev.n == 24 and 0 < ev.metrics["acc"] < 1
    assert all(ev.metrics[k] is not None for k in listed)
    if mode == "generate_until":
        assert 0 < ev.metrics["ifr"] < 1


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-multiturn"])
def test_stock_lm_eval_renders_the_demonstrations_as_the_harness_does(chat, registries, tmp_path):
    """A spec's generate_until demonstration (num_fewshot 1, from the optimize split) reaches stock lm-eval through
    the exported task: same prompts (the double answers by a hash of the whole prompt), so the same metrics."""
    from tp_harness.backends.base import LMBackend
    from tp_harness.evaluation.evaluator import render_context

    spec = load_specs([TASK], [], registries)[0]
    prep = prepare_task(spec, data_formats=registries.data_formats, mode="generate_until",
                        caps={"optimize": 4, "validation": 2, "test": 24})
    assert prep.num_fewshot == 1 and prep.demonstrations[0] not in prep.splits["optimize"]
    lm = _double_lm(chat=chat)
    backend = LMBackend(name="double", lm=lm, identity={"backend": "double"})
    context = render_context(prep, backend, instruction=INSTRUCTION, split="test", doc_id=0)
    demo = f"Answer: {prep.demonstrations[0]['label']}\nConfidence: 90%"
    assert context.count("Sentence: ") == 2 and demo in context
    if chat:  # the demonstration is an earlier user/assistant turn, the instruction the system message
        assert context.startswith(f"<system>{INSTRUCTION}") and f"<assistant>{demo}</assistant><user>" in context
    (ev,) = evaluate_jobs(backend, [EvalJob(prep, "test", INSTRUCTION)], metrics=registries.metrics)
    export_prepared_task(tmp_path / "lm_eval_tasks", prep, {"best": INSTRUCTION}, registries, chat_template=chat)
    exported = (tmp_path / "lm_eval_tasks" / f"{TASK}__tp_best.yaml").read_text()
    assert "num_fewshot: 1" in exported and "sampler: first_n" in exported
    assert ("--fewshot_as_multiturn" in exported.splitlines()[1]) is chat

    stock = _stock_results(tmp_path / "lm_eval_tasks", f"{TASK}__tp_best", lm, chat=chat)

    for key in ("acc", "ifr", "ece", "auroc", "pr_p", "pr_n"):
        assert stock[f"{key},none"] == pytest.approx(ev.metrics[key], abs=1e-9), key
    assert 0 < ev.metrics["ifr"] < 1 and 0 < ev.metrics["acc"] < 1


def test_every_tp_metric_and_the_composite_are_registered_with_lm_eval():
    from lm_eval.api.metrics import acc_fn
    from lm_eval.api.registry import get_aggregation, get_metric, get_metric_aggregation, is_higher_better

    from tp_harness.interop.lm_eval_bridge import register_with_lm_eval, registered_metrics

    metrics = registered_metrics()
    for name in ("ifr", "ece", "auroc", "pr_p", "pr_n", "tp_composite"):
        assert get_metric(name) is not None, name
        agg = "tp_composite" if name == "tp_composite" else f"tp_{name}"
        assert get_metric_aggregation(name) is get_aggregation(agg), name
    assert get_aggregation("tp_acc") is not None and get_aggregation("tp_acc_norm") is not None
    assert get_metric("acc") is acc_fn  # lm-eval's own acc stays; the export names the aggregation tp_acc
    assert get_metric("acc_norm") is not None  # lm-eval's own acc_norm stays too (aggregation tp_acc_norm)
    assert is_higher_better("ece") is False and is_higher_better("auroc") is True
    assert is_higher_better("tp_composite") is True
    again = register_with_lm_eval(metrics)  # idempotent: lm-eval refuses a second object under a name
    assert again == {"acc": "tp_acc", "acc_norm": "tp_acc_norm", "ifr": "tp_ifr", "ece": "tp_ece", "auroc": "tp_auroc", "pr_p": "tp_pr_p",
                     "pr_n": "tp_pr_n", "tp_composite": "tp_composite"}


def test_aggregations_compute_the_registered_metric_functions():
    from lm_eval.api.registry import get_aggregation

    from tp_harness.evaluation.metrics import SampleRecord, compute_metrics
    from tp_harness.interop.lm_eval_bridge import registered_metrics, sample_value

    records = [SampleRecord(doc_id=i, prompt_sha="", response="r", parsed_answer="a" if i % 4 else None, gold="a",
                            confidence=(0.1 * i) % 1.0, followed=bool(i % 3), correct=bool(i % 2))
               for i in range(10)]
    items = [sample_value(r) for r in records]
    metrics = registered_metrics()
    for name in metrics.names():
        assert get_aggregation(f"tp_{name}")(items) == metrics.get(name).compute(records)
    weights = {"acc": 0.5, "ece": 0.3, "ifr": 0.2}
    composite = get_aggregation("tp_composite")(
        [{"record": v, "metrics": ["acc", "ece", "ifr"], "weights": weights} for v in items])
    defs = {n: metrics.get(n) for n in ("acc", "ece", "ifr")}
    assert composite == compute_metrics(records, defs, weights=weights)["composite"]


def test_a_metric_without_tp_process_results_fails_with_a_clear_message():
    from lm_eval.api.registry import get_aggregation

    from tp_harness.interop.lm_eval_bridge import registered_metrics

    registered_metrics()
    with pytest.raises(MetricInputError, match=r"per-sample value 0 is 1\.0, not a tp-harness sample record.*"
                                               r"process_results: !function <task>_data\.process_results"):
        get_aggregation("tp_ece")([1.0, 0.0])


def test_an_exported_task_naming_an_unregistered_metric_says_which_plugin_is_missing():
    from tp_harness.interop.lm_eval_bridge import make_process_results

    scoring = {"task": "t", "output_type": "multiple_choice", "lm_eval": {}, "answer_format": None,
               "metrics": ["acc", "brier"], "weights": {"acc": 1.0}, "extra_metrics": []}
    with pytest.raises(PluginError, match=r"exported task 't' is scored with tp-harness metric\(s\) \['brier'\], "
                                          r"which no loaded plugin registers"):
        make_process_results(scoring)


# ----------------------------------------------------------------------------------------------
# acceptance: the real embedded model, a smoke optimize, and the stock lm-eval CLI


def _stock_cli(run_tasks: Path, tasks: list[str], checkpoint: str, out: Path, *, chat: bool) -> tuple[dict, dict[str, list[dict]]]:
    """``lm-eval run`` in a subprocess on exported tasks (``--apply_chat_template --fewshot_as_multiturn`` when
    ``chat``, as the export's header says); returns its results and its logged samples per task."""
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={checkpoint},dtype=float32", "--device", "cpu", "--include_path", str(run_tasks),
         "--tasks", *tasks, *(["--apply_chat_template", "--fewshot_as_multiturn"] if chat else []), "--batch_size", "16",
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(out / "*" / "results_*.json"))[0]).read_text())["results"]
    samples = {}
    for task in tasks:
        path = glob.glob(str(out / "*" / f"samples_{task}_*.jsonl"))[0]
        samples[task] = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return results, samples


def _harness_samples(run_dir: Path, ev: dict) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ev["samples_file"]).read_text().splitlines() if line.strip()]


def _check_against_harness(stock: dict, logged: list[dict], harness_ev: dict, harness_samples: list[dict]) -> None:
    """Stock lm-eval's ACC, IFR, ECE against the harness's, for the same test docs.

    ACC and IFR count discrete outcomes and must agree to 1e-9. ECE is a function of the confidences: it must
    equal tp-harness's ECE of the per-sample records lm-eval logged to 1e-9, and the harness's reported ECE
    to 1e-4, the tolerance of the scorer's loglikelihoods between batchings (the harness batches several
    prompts per call, and may use its shared-prefix scorer: DESIGN.md section 5).
    """
    from tp_harness.evaluation.metrics import expected_calibration_error, instruction_following_rate

    metrics = harness_ev["metrics"]
    assert stock["acc,none"] == pytest.approx(metrics["acc"], abs=1e-9)
    if metrics.get("acc_norm") is not None:
        assert stock["acc_norm,none"] == pytest.approx(metrics["acc_norm"], abs=1e-9)
    if "ifr,none" in stock:
        assert stock["ifr,none"] == pytest.approx(metrics["ifr"], abs=1e-9)
        assert stock["ifr,none"] == instruction_following_rate([s["ifr"]["followed"] for s in logged])
    records = [s["ece"] for s in sorted(logged, key=lambda s: s["doc_id"])]
    assert len(records) == harness_ev["n"] == len(harness_samples)
    kept = [r for r in records if r["confidence"] is not None]
    same_samples_ece = expected_calibration_error([r["confidence"] for r in kept],
                                                  [r["correct"] and r["parsed_answer"] is not None for r in kept])
    if metrics["ece"] is None:
        assert stock["ece,none"] is None and same_samples_ece is None
    else:
        assert stock["ece,none"] == pytest.approx(same_samples_ece, abs=1e-9)
        assert stock["ece,none"] == pytest.approx(metrics["ece"], abs=1e-4)
    for mine, theirs in zip(harness_samples, records, strict=True):  # the same answers, doc by doc
        assert (mine["parsed_answer"], mine["gold"], mine["correct"]) == (
            theirs["parsed_answer"], theirs["gold"], theirs["correct"]), mine["doc_id"]
        if mine["confidence"] is None or theirs["confidence"] is None:
            assert mine["confidence"] == theirs["confidence"]
        else:
            assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=1e-4)


@pytest.mark.slow
def test_exported_tasks_report_acc_ifr_ece_of_the_harness_in_stock_lm_eval_cli(tmp_path, registries):
    from tp_harness.entrypoints.cli import main
    from tp_harness.runs.runner import evaluate_prompt

    # multiple_choice: a real smoke optimize (stage 2 alone), its exported best and original prompts
    results_dir = tmp_path / "results"
    assert main(["optimize", "--budget", "smoke", "--seed", "7", "--no-transfer", "--targets", TASK,
                 "--results-dir", str(results_dir), "--run-id", "bridge"]) == 0
    run = results_dir / "runs" / "bridge"
    harness = json.loads((run / "results.json").read_text())
    config = json.loads((run / "config.json").read_text())
    checkpoint = config["scorer_checkpoint"]
    assert config["chat_template"] == {TASK: False}  # auto: multiple_choice without the chat template
    names = [f"{TASK}__tp_best", f"{TASK}__tp_original"]
    assert "WITHOUT --apply_chat_template" in (run / "lm_eval_tasks" / f"{names[0]}.yaml").read_text()
    stock, logged = _stock_cli(run / "lm_eval_tasks", names, checkpoint, tmp_path / "stock_mc", chat=False)
    by_kind = {e["prompt_kind"]: e for e in harness["tp"]["evaluations"]}
    for name, kind in zip(names, ("best_target", "original"), strict=True):
        assert set(stock[name]) >= {"acc,none", "acc_norm,none", "ece,none", "auroc,none", "pr_p,none", "pr_n,none",
                                    "tp_composite,none"}
        assert "ifr,none" not in stock[name]  # IFR does not apply to multiple_choice
        _check_against_harness(stock[name], logged[name], by_kind[kind], _harness_samples(run, by_kind[kind]))

    # generate_until: the optimized prompt scored verbally on 8 test docs, exported the same way
    best = by_kind["best_target"]["prompt"]
    prep, ev = evaluate_prompt(task=TASK, registries=registries, prompt=best, scoring_mode="generate_until",
                               limit=8, cache=False)
    gen_dir = tmp_path / "gen_tasks"
    assert ev.chat_template  # auto: generate_until with the chat template (an instruct model)
    export_prepared_task(gen_dir, prep, {"best": best}, registries, chat_template=ev.chat_template)
    exported = (gen_dir / f"{TASK}__tp_best.yaml").read_text()
    assert prep.num_fewshot == 1 and "num_fewshot: 1" in exported  # the spec's one demonstration, from optimize
    assert "WITH --apply_chat_template --fewshot_as_multiturn" in exported.splitlines()[1]
    stock_gen, logged_gen = _stock_cli(gen_dir, [f"{TASK}__tp_best"], checkpoint, tmp_path / "stock_gen", chat=True)
    ev_dict = {"metrics": ev.metrics, "n": ev.n}
    samples = [{"doc_id": r.doc_id, "parsed_answer": r.parsed_answer, "gold": r.gold, "correct": r.correct,
                "confidence": r.confidence} for r in ev.records]
    row = stock_gen[f"{TASK}__tp_best"]
    assert "ifr,none" in row and row["ifr,none"] is not None
    _check_against_harness(row, logged_gen[f"{TASK}__tp_best"], ev_dict, samples)
    responses = [s["ifr"]["response"] for s in sorted(logged_gen[f"{TASK}__tp_best"], key=lambda s: s["doc_id"])]
    assert responses == [r.response for r in ev.records]  # the same generations, character for character
    demo = f"Answer: {prep.demonstrations[0]['label']}\nConfidence: 90%"
    assert all(json.dumps(demo)[1:-1] in json.dumps(s["arguments"]) for s in logged_gen[f"{TASK}__tp_best"])
