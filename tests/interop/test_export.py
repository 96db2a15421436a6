"""Tests of tp_harness.interop.export: lm-eval results schema and the exported stock lm-eval tasks (YAML, docs, loader)."""

from __future__ import annotations

import ast
import importlib.util
import json
import time
from pathlib import Path

import pytest
import yaml

from tp_harness.interop.export import export_task_yaml, lm_eval_results
from tp_harness.spec.schema import lm_eval_description

ORIGINAL = "Answer the following medical exam question by choosing the correct option."
BEST = 'Read the question twice.\nEliminate wrong options: then answer "A", "B", "C" or "D".'
DOCS = [
    {"question": "Which organ makes insulin?", "choices": ["liver", "pancreas"], "label": 1},
    {"question": "Fièvre: quelle température?", "choices": ["37", "39"], "label": 1},
    {"question": "Normal heart rate?", "choices": ["70", "170"], "label": 0},
]
CONFIG = {
    "task": "medqa",
    "dataset_path": "json",
    "test_split": "validation",
    "description": ORIGINAL + "\n\n",
    "output_type": "multiple_choice",
    "doc_to_text": "{{question}}",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "label",
}


MC_METRIC_LIST = [
    {"metric": "acc", "aggregation": "tp_acc", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "tp_acc_norm", "higher_is_better": True},
    {"metric": "ece", "aggregation": "tp_ece", "higher_is_better": False},
    {"metric": "auroc", "aggregation": "tp_auroc", "higher_is_better": True},
    {"metric": "pr_p", "aggregation": "tp_pr_p", "higher_is_better": True},
    {"metric": "pr_n", "aggregation": "tp_pr_n", "higher_is_better": True},
    {"metric": "tp_composite", "aggregation": "tp_composite", "higher_is_better": True},
]


class _FunctionTag:
    def __init__(self, target: str) -> None:
        self.target = target


def _load_yaml(path: Path) -> dict:
    """Load an exported YAML as lm-eval does, with a constructor for ``!function``."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: _FunctionTag(loader.construct_scalar(node)))
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)


def _evaluation(kind: str, *, task: str = "medqa", acc: float = 0.5, n: int = 3) -> dict:
    return {"task": task, "split": "test", "prompt_kind": kind, "n": n,
            "metrics": {"acc": acc, "ece": 0.1, "auroc": None, "composite": acc / 2}}


# ----------------------------------------------------------------------------------------------
# lm_eval_results


def test_lm_eval_results_has_the_lm_eval_schema() -> None:
    tp = {"run_id": "r1", "evaluations": []}
    before = time.time()
    out = lm_eval_results(evaluations=[_evaluation("original", acc=0.4), _evaluation("best_target", acc=0.8)],
                          model="hf", model_args="pretrained=tiny", tp=tp,
                          higher_is_better={"acc": True, "ece": False, "auroc": True})
    assert set(out) == {"results", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples",
                        "config", "date", "tp"}
    assert out["higher_is_better"]["medqa__tp_best"] == {"acc": True, "ece": False, "auroc": True,
                                                         "tp_composite": True}
    assert out["n-shot"] == {"medqa__tp_original": 0, "medqa__tp_best": 0}
    assert out["results"] == {
        "medqa__tp_original": {"alias": "medqa__tp_original", "acc,none": 0.4, "ece,none": 0.1, "auroc,none": None,
                               "tp_composite,none": 0.2},
        "medqa__tp_best": {"alias": "medqa__tp_best", "acc,none": 0.8, "ece,none": 0.1, "auroc,none": None,
                           "tp_composite,none": 0.4},
    }
    assert out["n-samples"] == {"medqa__tp_original": {"original": 3, "effective": 3},
                                "medqa__tp_best": {"original": 3, "effective": 3}}
    assert out["config"] == {"model": "hf", "model_args": "pretrained=tiny"}
    assert out["versions"] == {"medqa__tp_original": 1.0, "medqa__tp_best": 1.0}
    assert before <= out["date"] <= time.time()
    assert out["tp"] is tp
    assert json.loads(json.dumps(out))["results"] == out["results"]


def test_best_source_is_named_best_only_without_a_best_target() -> None:
    alone = lm_eval_results(evaluations=[_evaluation("original"), _evaluation("best_source")], model="m",
                            model_args="", tp={})
    assert sorted(alone["results"]) == ["medqa__tp_best", "medqa__tp_original"]
    both = lm_eval_results(evaluations=[_evaluation("best_source", acc=0.6), _evaluation("best_target", acc=0.7),
                                        _evaluation("original", task="logiqa")], model="m", model_args="", tp={})
    assert sorted(both["results"]) == ["logiqa__tp_original", "medqa__tp_best", "medqa__tp_best_source"]
    assert both["results"]["medqa__tp_best"]["acc,none"] == 0.7
    assert both["results"]["medqa__tp_best_source"]["acc,none"] == 0.6


# ----------------------------------------------------------------------------------------------
# export_task_yaml


def _configs(base: dict, prompts: dict[str, str]) -> dict[str, dict]:
    """What the runner passes: per prompt kind, the spec's lm-eval fields with that prompt as description."""
    return {kind: {**base, "description": lm_eval_description(text)} for kind, text in prompts.items()}


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, list[Path]]:
    out = tmp_path / "lm_eval_tasks"
    written = export_task_yaml(out, task="medqa", configs=_configs(CONFIG, {"original": ORIGINAL, "best": BEST}), test_docs=DOCS)
    return out, written


def test_export_writes_docs_loader_and_one_yaml_per_prompt(exported) -> None:
    out, written = exported
    assert written == [out / "data" / "medqa.test.jsonl", out / "medqa_data.py",
                       out / "medqa__tp_original.yaml", out / "medqa__tp_best.yaml"]
    assert all(p.is_file() for p in written)
    assert sorted(p.name for p in out.iterdir()) == [
        "data", "medqa__tp_best.yaml", "medqa__tp_original.yaml", "medqa_data.py"]


@pytest.mark.parametrize(("kind", "prompt"), [("original", ORIGINAL), ("best", BEST)])
def test_exported_yaml_is_a_stock_lm_eval_task_with_the_prompt_as_description(exported, kind, prompt) -> None:
    out, _ = exported
    path = out / f"medqa__tp_{kind}.yaml"
    text = path.read_text(encoding="utf-8")
    assert "custom_dataset: !function medqa_data.load\n" in text.splitlines(keepends=True)
    assert "process_results: !function medqa_data.process_results\n" in text.splitlines(keepends=True)
    doc = _load_yaml(path)
    assert isinstance(doc["custom_dataset"], _FunctionTag)
    assert doc["custom_dataset"].target == "medqa_data.load"
    assert doc["process_results"].target == "medqa_data.process_results"
    assert doc["task"] == f"medqa__tp_{kind}"
    assert doc["description"] == prompt + "\n\n"
    assert doc["test_split"] == "test"
    assert doc["metadata"] == {"version": 1.0, "tp_prompt_kind": kind, "tp_apply_chat_template": False}
    assert doc["metric_list"] == MC_METRIC_LIST  # ACC and every tp-harness metric of multiple_choice
    for key in ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target"):
        assert doc[key] == CONFIG[key], key
    assert "dataset_path" not in doc


def test_exported_yaml_keeps_a_spec_metric_list_after_the_tp_metrics(tmp_path: Path) -> None:
    metric_list = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                   {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]
    export_task_yaml(tmp_path, task="t", configs=_configs({**CONFIG, "metric_list": metric_list}, {"best": BEST}), test_docs=DOCS)
    # acc is a tp-harness metric (computed as the harness does); exact_match stays lm-eval's own
    assert _load_yaml(tmp_path / "t__tp_best.yaml")["metric_list"] == MC_METRIC_LIST + metric_list[1:]
    assert not (tmp_path / "t__tp_original.yaml").exists()


GEN_CONFIG = {**CONFIG, "output_type": "generate_until", "doc_to_target": "{{choices[label]}}",
              "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 24}}


def test_generate_until_export_adds_ifr_and_the_answer_parser(tmp_path: Path) -> None:
    fmt = {"parser": "label_confidence", "labels": ["liver", "pancreas"]}
    export_task_yaml(tmp_path, task="t", configs=_configs(GEN_CONFIG, {"best": BEST}), test_docs=DOCS,
                     weights={"acc": 0.5, "ifr": 0.5}, answer_format=fmt)
    names = [m["metric"] for m in _load_yaml(tmp_path / "t__tp_best.yaml")["metric_list"]]
    assert names == ["acc", "ifr", "ece", "auroc", "pr_p", "pr_n", "tp_composite"]
    tree = ast.parse((tmp_path / "t_data.py").read_text(encoding="utf-8"))
    (scoring,) = [ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SCORING"]
    assert scoring["output_type"] == "generate_until" and scoring["answer_format"] == fmt
    assert scoring["weights"] == {"acc": 0.5, "ifr": 0.5}
    assert scoring["metrics"] == ["acc", "ifr", "ece", "auroc", "pr_p", "pr_n"]
    assert "description" not in scoring["lm_eval"] and scoring["lm_eval"]["doc_to_target"] == "{{choices[label]}}"


def test_generate_until_export_without_a_parser_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"task 't': generate_until needs answer_format \(the spec's response parser\)"):
        export_task_yaml(tmp_path, task="t", configs=_configs(GEN_CONFIG, {"best": BEST}), test_docs=DOCS)
    assert not (tmp_path / "t__tp_best.yaml").exists()


def test_exported_docs_round_trip(exported) -> None:
    out, _ = exported
    lines = (out / "data" / "medqa.test.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == DOCS


def test_exported_loader_module_returns_the_docs_as_a_test_split(exported, tmp_path, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    out, _ = exported
    spec = importlib.util.spec_from_file_location("medqa_data_under_test", out / "medqa_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = module.load(unused="lm-eval passes metadata")
    assert isinstance(loaded, datasets.DatasetDict)
    assert list(loaded) == ["test"]
    assert [dict(row) for row in loaded["test"]] == DOCS


def test_exported_description_renders_to_the_prompt_in_lm_eval(tmp_path: Path) -> None:
    import jinja2
    from lm_eval.utils import apply_template

    prompt = "Reply as {{letter}} then a confidence {# 0-100 #}."
    export_task_yaml(tmp_path, task="t", configs=_configs(CONFIG, {"best": prompt}), test_docs=DOCS)
    description = _load_yaml(tmp_path / "t__tp_best.yaml")["description"]
    try:
        rendered = apply_template(description, DOCS[0])
    except jinja2.TemplateError as err:
        rendered = f"<{type(err).__name__}: {err}>"
    assert rendered == prompt + "\n\n"
