"""The bridge to stock lm-eval: tp-harness metrics as lm-eval metrics, and the scoring of exported tasks.

Owns two things. (1) Registering every metric of the tp-harness metric registry, and the composite,
with lm-eval's global registries: ``register_aggregation("tp_<name>")`` runs the registered
``MetricDef.compute`` over the per-sample records, and ``register_metric(metric=<name>, ...)`` names
it where lm-eval has no metric of that name (``acc`` stays lm-eval's own; the exported YAML names the
aggregation ``tp_acc`` explicitly). (2) The ``process_results`` of an exported task: the
``<task>_data.py`` that :mod:`tp_harness.interop.export` writes calls :func:`make_process_results`, which
registers the metrics and turns lm-eval's per-doc answers (loglikelihoods per choice, or the generated
text) into the :class:`~tp_harness.evaluation.metrics.SampleRecord` the evaluator builds, with the evaluator's own
functions. Every per-sample value is that record as a dict, so stock ``lm-eval run`` reports the numbers
tp-harness reports for the same answers. It runs no model and writes nothing.

This is a wiring point, like the CLI: lm-eval's registries are process-global, so the metric registry
this process registered (built once from the plugin manager) is kept for the process's lifetime.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tp_harness.errors import MetricInputError, PluginError
from tp_harness.evaluation.evaluator import record_from_loglikelihoods, record_from_response
from tp_harness.evaluation.metrics import SampleRecord, compute_metrics
from tp_harness.interop.export import LM_EVAL_COMPOSITE, lm_eval_aggregation_name
from tp_harness.plugin.hookspecs import MetricDef, Registry
from tp_harness.spec.schema import AnswerFormat

log = logging.getLogger(__name__)

#: the attribute that marks an lm-eval registry entry as one this module made (and so may reuse)
_MARK = "tp_harness_metric"
#: the fields of a per-sample value (a SampleRecord without doc_id and prompt_sha, which lm-eval lacks)
_FIELDS = ("response", "parsed_answer", "gold", "confidence", "followed", "correct")
#: per-sample fields that a value may lack (values written before the field existed)
_OPTIONAL_FIELDS = ("correct_norm",)


# ----------------------------------------------------------------------------------------------
# per-sample values <-> records


def sample_value(record: SampleRecord) -> dict[str, Any]:
    """The per-sample value lm-eval stores for every tp-harness metric of one doc: the record's fields.

    :return: ``{"response", "parsed_answer", "gold", "confidence", "followed", "correct", "correct_norm"}``
        (JSON types), what any corpus-level metric needs; lm-eval logs it per sample with ``--log_samples``.
    """
    return {name: getattr(record, name) for name in (*_FIELDS, *_OPTIONAL_FIELDS)}


def records_from_values(items: Sequence[Any]) -> list[SampleRecord]:
    """Rebuild the records from lm-eval's per-sample values, in doc order (``doc_id`` = position).

    :param items: the values :func:`sample_value` made, one per doc, as lm-eval collected them.
    :raises MetricInputError: an item is not such a value (a task that names a tp-harness metric but
        lacks the ``process_results`` of an exported task).
    """
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or any(name not in item for name in _FIELDS):
            raise MetricInputError(
                f"per-sample value {i} is {item!r}, not a tp-harness sample record; a task that lists "
                "tp-harness metrics needs 'process_results: !function <task>_data.process_results' as "
                "tp-harness export writes it (lm_eval_tasks/ of a run)"
            )
        out.append(SampleRecord(doc_id=i, prompt_sha="", **{name: item[name] for name in _FIELDS},
                                **{name: item[name] for name in _OPTIONAL_FIELDS if name in item}))
    return out


# ----------------------------------------------------------------------------------------------
# registration with lm-eval


def _metric_aggregation(name: str, definition: MetricDef) -> Callable[[Sequence[Any]], float | None]:
    def aggregate(items: Sequence[Any]) -> float | None:
        return definition.compute(records_from_values(items))

    aggregate.__name__ = aggregate.__qualname__ = lm_eval_aggregation_name(name)
    setattr(aggregate, _MARK, name)
    return aggregate


def _composite_aggregation(metrics: Registry[MetricDef]) -> Callable[[Sequence[Any]], float | None]:
    def aggregate(items: Sequence[Any]) -> float | None:
        if not items:
            return None
        head = items[0]
        if not isinstance(head, Mapping) or "record" not in head:
            raise MetricInputError(f"per-sample value of {LM_EVAL_COMPOSITE} is {head!r}, not "
                                   "{'record', 'metrics', 'weights'}; use an exported task's process_results")
        defs = {name: metrics.get(name) for name in head["metrics"]}
        weights = {k: float(w) for k, w in head["weights"].items() if k in defs}
        records = records_from_values([item["record"] for item in items])
        return compute_metrics(records, defs, weights=weights)["composite"]

    aggregate.__name__ = aggregate.__qualname__ = LM_EVAL_COMPOSITE
    setattr(aggregate, _MARK, "composite")
    return aggregate


def _passthrough(items: Any) -> Any:
    """lm-eval's per-sample metric function convention (as its ``acc``): the value is made by process_results."""
    return items


def register_with_lm_eval(metrics: Registry[MetricDef]) -> dict[str, str]:
    """Register every metric of ``metrics`` and the composite with lm-eval; idempotent within a process.

    For metric ``m``: aggregation ``tp_<m>`` (``definition.compute`` over :func:`records_from_values`),
    and, where lm-eval has no metric named ``m``, ``register_metric(metric=m, aggregation="tp_<m>",
    higher_is_better=...)``. The composite is metric and aggregation ``tp_composite``. A name this
    module registered before is kept (first registration wins, as lm-eval refuses a second object).

    :param metrics: the tp-harness metric registry (``Registries.metrics``).
    :return: ``{lm-eval metric name: aggregation name}`` for every tp-harness metric and the composite.
    :raises PluginError: an lm-eval aggregation named ``tp_<m>`` exists that tp-harness did not register.
    Source: lm-eval 0.4.13 ``lm_eval/api/registry.py`` (``register_metric``, ``register_aggregation``).
    """
    import lm_eval.api.metrics  # noqa: F401  (lm-eval's own metrics first: its registries load lazily when empty)
    from lm_eval.api.registry import (
        aggregation_registry,
        metric_registry,
        register_aggregation,
        register_metric,
    )

    made = {name: _metric_aggregation(name, metrics.get(name)) for name in metrics.names()}
    made["composite"] = _composite_aggregation(metrics)
    out: dict[str, str] = {}
    for name, aggregate in made.items():
        agg_name = lm_eval_aggregation_name(name)
        metric_name = LM_EVAL_COMPOSITE if name == "composite" else name
        out[metric_name] = agg_name
        if agg_name in aggregation_registry:
            current = aggregation_registry.get(agg_name)
            if getattr(current, _MARK, None) is None:
                raise PluginError(f"lm-eval already has an aggregation {agg_name!r} ({current!r}) that tp-harness "
                                  f"did not register; tp-harness metric {name!r} needs that name")
            continue
        register_aggregation(agg_name)(aggregate)
        hib = True if name == "composite" else bool(metrics.get(name).higher_is_better)
        if metric_name in metric_registry:
            log.debug("lm-eval metric %r exists; tp-harness's is its aggregation %r", metric_name, agg_name)
            continue
        register_metric(metric=metric_name, higher_is_better=hib, aggregation=agg_name)(_passthrough)
    return out


@functools.cache
def registered_metrics() -> Registry[MetricDef]:
    """The tp-harness metric registry of this process (plugins as ``TP_HARNESS_PLUGINS`` selects), built once
    and registered with lm-eval by :func:`register_with_lm_eval`.

    :raises PluginError, DuplicateNameError: the plugins cannot be loaded (see ``tp_harness.plugin.manager``).
    """
    from tp_harness.plugin.manager import build_registries

    metrics = build_registries().metrics
    register_with_lm_eval(metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# process_results of an exported task


class ExportedTaskScorer:
    """``process_results(doc, results)`` of one exported task: lm-eval's answers -> tp-harness records.

    :param scoring: the ``SCORING`` dict of ``<task>_data.py`` (written by ``tp_harness.interop.export``): keys
        ``task``, ``output_type``, ``lm_eval`` (the task's lm-eval fields), ``answer_format`` (or None),
        ``metrics`` (tp-harness metric names), ``weights`` (composite weights), ``extra_metrics`` (the
        spec's other lm-eval ``metric_list`` entries, computed by lm-eval's own ``process_results``).
    :param metrics: the tp-harness metric registry, registered with lm-eval.
    :raises PluginError: ``scoring`` names a metric no loaded tp-harness plugin registers.
    :raises pydantic.ValidationError: ``answer_format`` is not a valid parser (a hand-edited file).
    """

    def __init__(self, scoring: Mapping[str, Any], metrics: Registry[MetricDef]) -> None:
        self.task_name = str(scoring["task"])
        self.mode = str(scoring["output_type"])
        self.fields = dict(scoring["lm_eval"])
        self.metric_names = list(scoring["metrics"])
        self.weights = dict(scoring["weights"])
        self.extra = [dict(m) for m in scoring.get("extra_metrics") or []]
        missing = [name for name in self.metric_names if name not in metrics]
        if missing:
            raise PluginError(
                f"exported task {self.task_name!r} is scored with tp-harness metric(s) {missing}, which no loaded "
                f"plugin registers (loaded: {', '.join(metrics.names())})\n"
                "  to fix: install the plugin that provides them in lm-eval's environment, or check TP_HARNESS_PLUGINS"
            )
        fmt = scoring.get("answer_format")
        self.answer_format = AnswerFormat.model_validate(fmt) if fmt is not None else None
        if self.mode == "generate_until" and self.answer_format is None:
            raise PluginError(f"exported task {self.task_name!r} is generate_until but its SCORING has no "
                              "answer_format; re-export it with tp-harness")
        self._task: Any = None

    def _lm_eval_task(self, doc: Mapping[str, Any]) -> Any:
        """An lm-eval ``ConfigurableTask`` of the task's fields over ``[doc]``, built once: it reads
        ``doc_to_choice`` / ``doc_to_target`` exactly as the evaluator's task object does."""
        if self._task is None:
            import datasets
            from lm_eval.api.task import ConfigurableTask

            dataset = datasets.DatasetDict({"test": datasets.Dataset.from_list([dict(doc)])})
            config = {**self.fields, "task": f"{self.task_name}__tp_scoring", "test_split": "test",
                      "custom_dataset": lambda **_: dataset, "metadata": {"version": 1.0},
                      "metric_list": self.extra or None}
            quiet = logging.getLogger("lm_eval.api.task")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # its custom_dataset notice is about this private copy
            try:
                self._task = ConfigurableTask(config=config)
            finally:
                quiet.setLevel(level)
        return self._task

    def record(self, doc: Mapping[str, Any], results: Sequence[Any]) -> SampleRecord:
        """The evaluator's record of one doc from lm-eval's answers.

        :param results: ``multiple_choice``: one ``(loglikelihood, is_greedy)`` per choice; ``generate_until``:
            ``[response]`` (after the task's filters).
        """
        task = self._lm_eval_task(doc)
        if self.mode == "multiple_choice":
            lls = [float(r[0]) for r in results]
            return record_from_loglikelihoods(task, dict(doc), doc_id=0, sha="", lls=lls)
        assert self.answer_format is not None
        response = results[0]
        if isinstance(response, (list, tuple)):  # a filter kept several answers: score the first, as take_first
            response = response[0]
        return record_from_response(task, self.answer_format, dict(doc), doc_id=0, sha="", response=str(response))

    def __call__(self, doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
        """lm-eval's ``process_results``: ``{metric name: per-sample value}`` for every metric of the YAML.

        :return: the record (:func:`sample_value`) under each tp-harness metric name; under
            ``tp_composite`` ``{"record", "metrics", "weights"}``; the spec's other metrics as lm-eval computes them.
        """
        value = sample_value(self.record(doc, results))
        out: dict[str, Any] = {name: value for name in self.metric_names}
        out[LM_EVAL_COMPOSITE] = {"record": value, "metrics": self.metric_names, "weights": self.weights}
        if self.extra:
            theirs = self._lm_eval_task(doc).process_results(doc, results)
            out.update({m["metric"]: theirs[m["metric"]] for m in self.extra if m["metric"] in theirs})
        return out


def make_process_results(scoring: Mapping[str, Any]) -> Callable[[Mapping[str, Any], Sequence[Any]], dict]:
    """The ``process_results`` of an exported task; registers tp-harness's metrics with lm-eval first.

    Called at import of ``<task>_data.py``, which lm-eval imports while it reads the task's YAML
    (``!function`` tags), before it resolves the YAML's ``metric_list`` aggregations.
    :param scoring: the ``SCORING`` dict that ``tp_harness.interop.export`` writes into ``<task>_data.py``.
    :raises PluginError: see :class:`ExportedTaskScorer` and :func:`register_with_lm_eval`.
    """
    return ExportedTaskScorer(scoring, registered_metrics())


def exported_task_functions(scoring: Mapping[str, Any], module_file: str | Path) -> tuple[
        Callable[..., Any], Callable[[Mapping[str, Any], Sequence[Any]], dict]]:
    """``(load, process_results)`` of an exported ``<task>_data.py``: the only code such a module holds.

    ``load(**kwargs)`` is the YAML's ``custom_dataset``: a ``datasets.DatasetDict`` whose ``test`` split is
    ``data/<task>.test.jsonl`` next to the module (the exact docs tp-harness scored; lm-eval's keyword
    arguments are ignored). Installs the template sandbox in lm-eval (:func:`tp_harness.spec.templates.install_lm_eval_sandbox`),
    so the exported task's templates render sandboxed in stock lm-eval too. ``process_results`` is :func:`make_process_results` of ``scoring``, built now, so
    tp-harness's metrics are registered with lm-eval when lm-eval imports the module.

    :param scoring: the module's ``SCORING`` dict (see :class:`ExportedTaskScorer`).
    :param module_file: the module's ``__file__``.
    :raises PluginError: see :func:`make_process_results`.
    """
    from tp_harness.spec.templates import install_lm_eval_sandbox

    install_lm_eval_sandbox()  # stock lm-eval imports this module before it renders the task's templates
    docs = Path(module_file).resolve().parent / "data" / f"{scoring['task']}.test.jsonl"

    def load(**_kwargs: Any) -> Any:
        import datasets

        return datasets.DatasetDict({"test": datasets.load_dataset("json", data_files=str(docs), split="train")})

    return load, make_process_results(scoring)


__all__ = [
    "ExportedTaskScorer",
    "exported_task_functions",
    "make_process_results",
    "records_from_values",
    "register_with_lm_eval",
    "registered_metrics",
    "sample_value",
]
