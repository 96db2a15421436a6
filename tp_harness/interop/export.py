"""Export optimized prompts as stock lm-eval tasks, and results in lm-eval's results schema.

Owns ``lm_eval_tasks/`` in a run directory: for each task, ``<task>__tp_original.yaml`` and
``<task>__tp_best.yaml`` (the spec's lm-eval fields with the instruction as ``description``), the
exact test docs the harness scored (``data/<task>.test.jsonl``) and a tiny ``<task>_data.py`` that
lm-eval's ``custom_dataset: !function`` and ``process_results: !function`` load relative to the YAML.
The YAML's ``metric_list`` names ACC and every tp-harness metric that applies to the scoring mode plus
``tp_composite``; ``<task>_data.py`` imports :mod:`tp_harness.lm_eval_bridge`, which registers them
with lm-eval and scores lm-eval's answers as the evaluator does, so ``lm-eval run --include_path
<run_dir>/lm_eval_tasks`` (tp-harness installed) reproduces the harness's numbers. Also builds the
``results.json`` document (lm-eval schema plus a ``tp`` section) and writes it as the built-in
``results-json`` reporter. It never runs a model.
"""

from __future__ import annotations

import pprint
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tp_harness.plugin.hookspecs import MetricDef, Registry, ReporterDef, hookimpl
from tp_harness.store.journal import atomic_write_json, atomic_write_text, write_jsonl

#: the lm-eval metric name of the composite (a bare ``composite`` could clash with other lm-eval metrics)
LM_EVAL_COMPOSITE = "tp_composite"

_DATA_MODULE = '''"""Docs and scoring of the task {task!r} exported by tp-harness, for stock lm-eval.

``load`` is the YAML's ``custom_dataset`` (the exact test docs tp-harness scored, ``data/{task}.test.jsonl``);
``process_results`` is the YAML's ``process_results`` (lm-eval's answers -> tp-harness sample records). Both
come from ``tp_harness.lm_eval_bridge``, which also registers tp-harness's metrics (``ece``, ``auroc``,
``tp_composite``, ...) with lm-eval. Needs tp-harness installed in lm-eval's environment.
"""
try:
    from tp_harness.lm_eval_bridge import exported_task_functions
except ImportError as err:  # the YAML's metric_list names tp-harness metrics
    raise ImportError(f"task {task!r} is scored with tp-harness metrics: install tp-harness ({{err}})") from err

#: how tp-harness scores this task: mode, lm-eval fields, answer parser, metrics, composite weights
SCORING = {scoring}

load, process_results = exported_task_functions(SCORING, __file__)
'''

_DROP = ("dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
         "fewshot_split", "custom_dataset", "description", "task", "metadata", "process_results")


def lm_eval_aggregation_name(metric: str) -> str:
    """The lm-eval aggregation that computes tp-harness metric ``metric``: ``tp_<metric>`` (``tp_composite``
    for ``composite``), namespaced so it never takes an lm-eval aggregation's name (``f1``, ``mean``, ...)."""
    return LM_EVAL_COMPOSITE if metric in ("composite", LM_EVAL_COMPOSITE) else f"tp_{metric}"


def builtin_metric_defs() -> dict[str, MetricDef]:
    """The built-in metrics (acc, ifr, ece, auroc, pr_p, pr_n) as their plugin registers them."""
    from tp_harness.evaluation import metrics

    registry: Registry[MetricDef] = Registry("metric", MetricDef)
    metrics.tp_register_metrics(registry)
    return {name: registry.get(name) for name in registry.names()}


def lm_eval_metric_list(mode: str, metric_defs: Mapping[str, MetricDef]) -> list[dict[str, Any]]:
    """The ``metric_list`` of an exported task: every metric that applies to ``mode``, then ``tp_composite``.

    :param mode: ``multiple_choice`` (acc, ece, auroc, pr_p, pr_n with the built-ins) or ``generate_until``
        (the same plus ifr).
    :param metric_defs: ``{name: MetricDef}`` of the metric registry, in registry order.
    :return: ``[{"metric": name, "aggregation": "tp_<name>", "higher_is_better": bool}, ...]``.
    """
    entries = [{"metric": name, "aggregation": lm_eval_aggregation_name(name),
                "higher_is_better": bool(d.higher_is_better)}
               for name, d in metric_defs.items() if mode in d.output_types]
    entries.append({"metric": LM_EVAL_COMPOSITE, "aggregation": LM_EVAL_COMPOSITE, "higher_is_better": True})
    return entries


def export_task_yaml(
    out_dir: Path,
    *,
    task: str,
    configs: Mapping[str, Mapping[str, Any]],
    test_docs: Sequence[dict],
    metric_defs: Mapping[str, MetricDef] | None = None,
    weights: Mapping[str, float] | None = None,
    answer_format: Mapping[str, Any] | None = None,
    apply_chat_template: bool = False,
) -> list[Path]:
    """Write one lm-eval task YAML per prompt kind (``original`` -> ``<task>__tp_original``, ``best`` ->
    ``<task>__tp_best``), the scored docs and their loader and scoring module ``<task>_data.py``.

    Each YAML's ``metric_list`` is :func:`lm_eval_metric_list` for its ``output_type``, followed by the
    spec's own ``metric_list`` entries that are not tp-harness metrics (lm-eval computes those itself);
    its ``process_results`` is ``<task>_data.process_results`` (see :mod:`tp_harness.lm_eval_bridge`).

    :param configs: ``{kind: lm-eval fields}``, each from ``TaskSpec.lm_eval_config(mode, instruction=prompt)``
        so its ``description`` carries that prompt exactly as the harness scored it. All kinds share one
        scoring mode and lm-eval fields; only ``description`` differs.
    :param test_docs: the test-split docs the harness evaluated, in order.
    :param metric_defs: the metric registry's ``{name: MetricDef}``; default :func:`builtin_metric_defs`.
    :param weights: the composite weights the harness used (``PreparedTask.weights``); default the
        built-in defaults (``tp_harness.evaluation.metrics.DEFAULT_WEIGHTS``).
    :param answer_format: the ``generate_until`` parser (``AnswerFormat.model_dump()``); required for that mode.
    :param apply_chat_template: whether the harness rendered the prompts with the chat template. lm-eval takes that
        as a run flag, not a task field: the YAML records it (``metadata.tp_apply_chat_template`` and its header
        says whether to pass ``--apply_chat_template``), so stock lm-eval renders the prompts exactly as scored. A
        config with ``num_fewshot`` and ``fewshot_config`` (``PreparedTask.fewshot_fields``) carries its demonstrations
        inline (``first_n`` over ``samples``); with the chat template the header also asks for
        ``--fewshot_as_multiturn`` (``metadata.tp_fewshot_as_multiturn``), as the harness renders them.
    :return: the written paths.
    :raises ValueError: ``configs`` is empty, its kinds differ in anything but ``description``, or a
        ``generate_until`` task has no ``answer_format``.
    """
    if not configs:
        raise ValueError(f"task {task!r}: no prompt to export; pass configs={{kind: lm-eval fields}}")
    scoring = _scoring(task, configs, metric_defs=metric_defs, weights=weights, answer_format=answer_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    data = out_dir / "data" / f"{task}.test.jsonl"
    write_jsonl(data, test_docs)
    module = out_dir / f"{task}_data.py"
    metric_list = scoring.pop("metric_list") + scoring["extra_metrics"]
    text = pprint.pformat(scoring, indent=1, width=110, sort_dicts=False)
    atomic_write_text(module, _DATA_MODULE.format(task=task, scoring=text))
    written += [data, module]
    for kind, config in configs.items():
        name = f"{task}__tp_{kind}"
        base = {k: v for k, v in config.items() if k not in _DROP}
        base["metric_list"] = metric_list
        doc = {"task": name, "test_split": "test", "description": config.get("description", ""), **base,
               "metadata": {"version": 1.0, "tp_prompt_kind": kind, "tp_apply_chat_template": apply_chat_template}}
        body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
        shots = int(config.get("num_fewshot") or 0)
        how = "WITH --apply_chat_template" if apply_chat_template else "WITHOUT --apply_chat_template"
        if apply_chat_template and shots:
            how += " --fewshot_as_multiturn"
        if shots:
            doc["metadata"]["tp_fewshot_as_multiturn"] = bool(apply_chat_template)
        header = (f"# exported by tp-harness: task {task!r}, prompt {kind!r}\n"
                  f"# scored {how} (the instruction is {'the system message' if apply_chat_template else 'a plain-text prefix'}); "
                  f"run stock lm-eval {how} to reproduce it\n"
                  f"custom_dataset: !function {task}_data.load\n"
                  f"process_results: !function {task}_data.process_results\n")
        path = out_dir / f"{name}.yaml"
        atomic_write_text(path, header + body)
        written.append(path)
    return written


def _scoring(
    task: str,
    configs: Mapping[str, Mapping[str, Any]],
    *,
    metric_defs: Mapping[str, MetricDef] | None,
    weights: Mapping[str, float] | None,
    answer_format: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``SCORING`` dict of ``<task>_data.py``: what :func:`tp_harness.lm_eval_bridge.make_process_results` reads."""
    from tp_harness.evaluation.metrics import DEFAULT_WEIGHTS

    fields = [{k: v for k, v in c.items() if k not in _DROP and k != "metric_list"} for c in configs.values()]
    if any(f != fields[0] for f in fields[1:]):
        raise ValueError(f"task {task!r}: the exported prompts differ in lm-eval fields other than description; "
                         "export each scoring mode to its own directory")
    first = next(iter(configs.values()))
    mode = str(first.get("output_type") or "generate_until")
    if mode == "generate_until" and answer_format is None:
        raise ValueError(f"task {task!r}: generate_until needs answer_format (the spec's response parser) to "
                         "score lm-eval's answers as the harness does")
    defs = builtin_metric_defs() if metric_defs is None else dict(metric_defs)
    metric_list = lm_eval_metric_list(mode, defs)
    ours = {e["metric"] for e in metric_list}
    extra = [dict(m) for m in (first.get("metric_list") or []) if m.get("metric") not in ours and m.get("metric") not in defs]
    return {
        "task": task,
        "output_type": mode,
        "lm_eval": fields[0],
        "answer_format": dict(answer_format) if answer_format is not None else None,
        "metrics": [e["metric"] for e in metric_list if e["metric"] != LM_EVAL_COMPOSITE],
        "weights": dict(DEFAULT_WEIGHTS if weights is None else weights),
        "metric_list": metric_list,
        "extra_metrics": extra,
    }


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


def write_results_json(run_dir: Path, results: dict[str, Any], *, results_root: Path | None = None) -> list[Path]:
    """Reporter ``results-json``: write ``results`` (from :func:`lm_eval_results`) to ``run_dir/results.json``.

    Written atomically (temp file, then rename); NaN is written as null.
    :param results_root: unused; part of the reporter signature.
    :return: ``[run_dir / "results.json"]``.
    """
    path = Path(run_dir) / "results.json"
    atomic_write_json(path, results)
    return [path]


@hookimpl
def tp_register_reporters(registry: Registry[ReporterDef]) -> None:
    """Register the built-in reporter ``results-json`` (runs before the report, which reads the file)."""
    registry.add("results-json", ReporterDef(
        write=write_results_json,
        description="results.json: lm-eval's results schema plus the tp section (read by report and leaderboard)"))
