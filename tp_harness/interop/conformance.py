"""Conformance with lm-eval's upstream tasks: the same docs scored by stock lm-eval and by tp-harness.

Owns building, for a spec with ``tp.upstream``, a stock lm-eval task that ``include:``s the upstream YAML of
the installed lm-eval package and overrides only the dataset (the spec's split docs, written to local JSON
Lines files: no hub), running it with stock ``lm_eval.simple_evaluate`` on a local checkpoint, and scoring
the same docs with tp-harness (no instruction, the same rendering, the upstream format where the spec
deviates on purpose). It writes only into the directory it is given and prints nothing. Used by
``tests/interop/test_conformance.py`` and ``benchmarks/conformance_table.py`` (docs/conformance.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tp_harness.backends import LMBackend
from tp_harness.errors import SpecError
from tp_harness.evaluation.evaluator import (
    EvalJob,
    PreparedTask,
    evaluate_jobs,
    prepare_task,
    uses_chat_template,
)
from tp_harness.plugin.hookspecs import Registries
from tp_harness.spec.schema import TaskSpec

log = logging.getLogger(__name__)

#: the metrics compared with stock lm-eval (lm-eval's names; ``acc_norm`` where the upstream task reports it)
COMPARED = ("acc", "acc_norm")


def lm_eval_tasks_dir() -> Path:
    """The ``tasks/`` directory of the installed lm-eval package (the upstream task YAMLs)."""
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def upstream_yaml(spec: TaskSpec) -> Path:
    """The upstream task YAML of ``spec`` (``tp.upstream.task_yaml`` under :func:`lm_eval_tasks_dir`).

    :raises SpecError: the spec has no ``tp.upstream``, or the installed lm-eval lacks that file.
    """
    if spec.tp.upstream is None:
        raise SpecError(spec.path, "tp.upstream", "this spec names no upstream lm-eval task")
    path = lm_eval_tasks_dir() / spec.tp.upstream.task_yaml
    if not path.is_file():
        raise SpecError(spec.path, "tp.upstream.task_yaml", f"the installed lm-eval has no {path}",
                        line=spec.line_of("tp.upstream.task_yaml"))
    return path


def upstream_config(spec: TaskSpec) -> dict[str, Any]:
    """The upstream task's config as lm-eval reads it (includes merged, ``!function`` tags left as text)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return dict(load_yaml(upstream_yaml(spec), resolve_func=False, recursive=True))


def upstream_format_spec(spec: TaskSpec) -> TaskSpec:
    """``spec`` with the upstream values of the fields where it deviates on purpose (``tp.upstream.fields``) put
    back: the spec in lm-eval's upstream format, which stock lm-eval's numbers are compared with."""
    fields = dict(spec.tp.upstream.fields) if spec.tp.upstream else {}
    return dataclasses.replace(spec, lm_eval={**spec.lm_eval, **fields}) if fields else spec


def write_stock_task(spec: TaskSpec, splits: Mapping[str, Sequence[dict]], out_dir: Path) -> str:
    """Write a stock lm-eval task ``tpconf_<spec>`` into ``out_dir``: ``include:`` of the upstream YAML plus the
    dataset override (``dataset_path: json`` over local files), nothing else.

    The upstream's evaluation split (``test_split``, else ``validation_split``) holds the spec's ``test`` docs;
    its other named splits hold the spec's ``optimize`` docs (``validation_split``: ``validation``), so a
    few-shot sampler finds the splits it names.
    :param splits: the spec's split docs (``{"optimize" | "validation" | "test": [doc, ...]}``), as the harness cut them.
    :return: the task name, for ``--tasks`` with ``--include_path out_dir``.
    """
    cfg = upstream_config(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_split = cfg.get("test_split") or cfg.get("validation_split") or "test"
    files: dict[str, str] = {}
    for key, ours in (("training_split", "optimize"), ("validation_split", "validation"), ("fewshot_split", "optimize"),
                      ("test_split", "test")):
        name = cfg.get(key)
        if name and name != eval_split and name not in files:
            files[name] = ours
    files[eval_split] = "test"
    data_files = {}
    for name, ours in files.items():
        path = out_dir / f"{spec.name}.{name}.jsonl"
        path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in splits[ours]), encoding="utf-8")
        data_files[name] = str(path)
    task = f"tpconf_{spec.name}"
    doc = {"include": str(upstream_yaml(spec)), "task": task, "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": data_files}}
    (out_dir / f"{task}.yaml").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")  # JSON is YAML
    return task


def stock_model(checkpoint: str, *, batch_size: int = 16) -> Any:
    """lm-eval's own ``hf`` model (``HFLM``) over a local checkpoint directory, fp32 on CPU: load it once, run many tasks."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=checkpoint, dtype="float32", device="cpu", batch_size=batch_size)


def run_stock(task_dir: Path, task: str, *, model: Any, limit: int, apply_chat_template: bool) -> dict[str, float]:
    """Run ``task`` (from :func:`write_stock_task`) with stock ``lm_eval.simple_evaluate``.

    :param model: lm-eval's ``HFLM`` (:func:`stock_model`).
    :param limit: the first ``limit`` docs of the evaluation split.
    :return: lm-eval's metrics of the task, keys without the filter (``{"acc": ..., "acc_norm": ...}``).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, tasks=[task], task_manager=TaskManager(include_path=str(task_dir)), limit=limit,
                          apply_chat_template=apply_chat_template, bootstrap_iters=0, log_samples=False)
    row = out["results"][task]
    return {k.split(",")[0]: float(v) for k, v in row.items() if "," in k and isinstance(v, (int, float))
            and not k.split(",")[0].endswith("_stderr")}


@dataclasses.dataclass(frozen=True)
class ConformanceResult:
    """Stock lm-eval's and tp-harness's numbers on the same docs of one spec.

    :ivar stock: lm-eval's metrics of the upstream task (``acc``, and ``acc_norm`` where it reports it).
    :ivar harness: tp-harness's metrics with no instruction, the same rendering (every registered metric).
    :ivar chat_template: the rendering both used.
    """

    task: str
    upstream: str
    n: int
    chat_template: bool
    stock: dict[str, float]
    harness: dict[str, float | None]


def prepare_upstream(spec: TaskSpec, registries: Registries, *, limit: int, apply_chat_template: str) -> PreparedTask:
    """The spec in its upstream format (:func:`upstream_format_spec`), test split cut to ``limit`` docs."""
    return prepare_task(upstream_format_spec(spec), data_formats=registries.data_formats, caps={"test": limit},
                        apply_chat_template=apply_chat_template)


def check_conformance(spec: TaskSpec, backend: LMBackend, registries: Registries, *, stock: Any, work_dir: Path,
                      limit: int = 32, apply_chat_template: str = "off") -> ConformanceResult:
    """Score ``limit`` test docs of ``spec`` with stock lm-eval's upstream task and with tp-harness (no instruction).

    :param backend: the tp-harness scorer.
    :param stock: lm-eval's ``HFLM`` over the same checkpoint (:func:`stock_model` of ``backend.checkpoint``).
    :param work_dir: where the stock task and its data files are written.
    """
    prep = prepare_upstream(spec, registries, limit=limit, apply_chat_template=apply_chat_template)
    chat = uses_chat_template(prep, backend)
    task = write_stock_task(spec, prep.splits, work_dir)
    theirs = run_stock(work_dir, task, model=stock, limit=limit, apply_chat_template=chat)
    (ev,) = evaluate_jobs(backend, [EvalJob(prep, "test", "")], metrics=registries.metrics)
    return ConformanceResult(task=spec.name, upstream=spec.tp.upstream.task_yaml if spec.tp.upstream else "",
                             n=ev.n, chat_template=chat, stock=theirs, harness=dict(ev.metrics))
