"""Export optimized prompts as stock lm-eval tasks, and results in lm-eval's results schema.

Owns ``lm_eval_tasks/`` in a run directory: for each task, ``<task>__tp_original.yaml`` and
``<task>__tp_best.yaml`` (the spec's lm-eval fields with the instruction as ``description``), the
exact test docs the harness scored (``data/<task>.test.jsonl``) and a tiny ``<task>_data.py`` that
lm-eval's ``custom_dataset: !function`` loads relative to the YAML, so ``lm-eval run --include_path
<run_dir>/lm_eval_tasks`` reproduces the harness's ACC with no tp-harness code. Also builds the
``results.json`` document (lm-eval schema plus a ``tp`` section). It never runs a model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .journal import atomic_write_text, write_jsonl

_DATA_MODULE = '''"""Loads the docs tp-harness scored for this task; used by the YAML's custom_dataset."""
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(**_kwargs):
    return datasets.DatasetDict(
        {{"test": datasets.load_dataset("json", data_files=str(HERE / "data" / "{task}.test.jsonl"), split="train")}}
    )
'''

_DROP = ("dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
         "fewshot_split", "custom_dataset", "description", "task", "metadata")


def export_task_yaml(
    out_dir: Path,
    *,
    task: str,
    configs: Mapping[str, Mapping[str, Any]],
    test_docs: Sequence[dict],
) -> list[Path]:
    """Write one lm-eval task YAML per prompt kind (``original`` -> ``<task>__tp_original``, ``best`` ->
    ``<task>__tp_best``), the scored docs and their loader module.

    :param configs: ``{kind: lm-eval fields}``, each from ``TaskSpec.lm_eval_config(mode, instruction=prompt)``
        so its ``description`` carries that prompt exactly as the harness scored it.
    :param test_docs: the test-split docs the harness evaluated, in order.
    :return: the written paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    data = out_dir / "data" / f"{task}.test.jsonl"
    write_jsonl(data, test_docs)
    module = out_dir / f"{task}_data.py"
    atomic_write_text(module, _DATA_MODULE.format(task=task))
    written += [data, module]
    for kind, config in configs.items():
        name = f"{task}__tp_{kind}"
        base = {k: v for k, v in config.items() if k not in _DROP}
        base.setdefault("metric_list", [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
        doc = {"task": name, "test_split": "test", "description": config.get("description", ""), **base,
               "metadata": {"version": 1.0, "tp_prompt_kind": kind}}
        body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
        header = (f"# exported by tp-harness: task {task!r}, prompt {kind!r}\n"
                  f"custom_dataset: !function {task}_data.load\n")
        path = out_dir / f"{name}.yaml"
        atomic_write_text(path, header + body)
        written.append(path)
    return written


def lm_eval_results(
    *,
    evaluations: Sequence[dict],
    model: str,
    model_args: str,
    tp: dict[str, Any],
    higher_is_better: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Build ``results.json``: lm-eval's results schema (``results``, ``group_subtasks``, ``versions``,
    ``n-shot``, ``higher_is_better``, ``n-samples``, ``config``, ``date``) for the exported
    ``<task>__tp_original`` / ``<task>__tp_best`` tasks, plus ``tp``. Metric keys follow lm-eval's
    ``<metric>,<filter>`` form with filter ``none``; the composite is ``tp_composite``.

    :param evaluations: test-split evaluation dicts (keys task, prompt_kind, metrics, n, ...) as in ``tp.evaluations``.
    :param higher_is_better: per metric name, as registered (the composite is always higher-is-better).
    """
    results: dict[str, dict] = {}
    n_samples: dict[str, dict] = {}
    versions: dict[str, float] = {}
    hib: dict[str, dict[str, bool]] = {}
    for ev in evaluations:
        kind = {"original": "original", "best_target": "best", "best_source": "best_source"}[ev["prompt_kind"]]
        if kind == "best_source" and any(e["prompt_kind"] == "best_target" and e["task"] == ev["task"]
                                         for e in evaluations):
            name = f"{ev['task']}__tp_best_source"
        elif kind == "best_source":
            name = f"{ev['task']}__tp_best"
        else:
            name = f"{ev['task']}__tp_{kind}"
        row = {"alias": name}
        for key, value in ev["metrics"].items():
            row[f"{'tp_composite' if key == 'composite' else key},none"] = value
        results[name] = row
        n_samples[name] = {"original": ev["n"], "effective": ev["n"]}
        versions[name] = 1.0
        hib[name] = {("tp_composite" if k == "composite" else k): (True if k == "composite" else
                     bool((higher_is_better or {}).get(k, True))) for k in ev["metrics"]}
    return {
        "results": results,
        "group_subtasks": {name: [] for name in results},
        "versions": versions,
        "n-shot": {name: 0 for name in results},
        "higher_is_better": hib,
        "n-samples": n_samples,
        "config": {"model": model, "model_args": model_args},
        "date": time.time(),
        "tp": tp,
    }
