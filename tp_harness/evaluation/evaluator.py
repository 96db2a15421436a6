"""The objective prompt evaluator: (instruction x docs) -> sample records -> metrics and composite.

Owns building the lm-eval task object of a spec once per run (:func:`prepare_task`), rendering each
(instruction, doc) prompt with lm-eval's own ``fewshot_context`` (the instruction goes exactly where an
exported task's ``description`` goes: a plain-text prefix without the chat template, the system message
with it; :func:`uses_chat_template` decides which), sending the requests of many instructions to the
backend in one call, and turning the answers into :class:`SampleRecord` rows and
metric values. It calls models only through a backend and writes nothing to disk.
Source: Transfer-Prompting (Chang, Chang & Wu, 2025, arXiv 2502.14211), section "objective prompt
evaluator"; metric definitions in DESIGN.md section 3.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tp_harness.backends.base import LMBackend
from tp_harness.constants import SPLITS
from tp_harness.errors import BackendError, SpecError
from tp_harness.evaluation.metrics import DEFAULT_WEIGHTS, SampleRecord, compute_metrics
from tp_harness.evaluation.parsers import ANSWER_PARSERS, ParsedAnswer, parse_verbalized  # noqa: F401
from tp_harness.plugin.hookspecs import DataFormatDef, MetricDef, Registry
from tp_harness.spec.schema import AnswerFormat, TaskSpec

log = logging.getLogger(__name__)


#: The settings of ``--apply-chat-template`` (CLI), ``tp.apply_chat_template`` (spec) and
#: ``--tp-apply-chat-template`` (pytest): lm-eval's ``--apply_chat_template`` switch, plus ``auto``.
CHAT_TEMPLATE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")

#: What ``auto`` means per scoring mode, chosen by measurement (docs/conformance.md): loglikelihood scoring
#: without the chat template, as lm-eval does by default (SmolLM2-135M-Instruct on 128 ARC-Easy test docs,
#: stock lm-eval: ACC 0.523 without, 0.203 with it); verbalized answers (generate_until) with it, for models
#: that have one (a base model has no template and gets none): on 16 Financial PhraseBank test docs the same
#: model gave 16 non-empty answers with the template (12 naming a label, 10 the gold one) and 16 empty ones
#: without (it stops at once).
AUTO_CHAT_TEMPLATE: dict[str, bool] = {"multiple_choice": False, "generate_until": True}


def prompt_sha(instruction: str) -> str:
    """The id of an instruction: the first 16 hex chars of the sha256 of its exact text."""
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:16]


@dataclass
class PreparedTask:
    """A spec made runnable once per run: its lm-eval task object, its split docs and its scoring mode.

    :ivar splits: ``{"optimize" | "validation" | "test": [doc, ...]}`` (seeded, disjoint; see data.split_docs).
    :ivar mode: ``multiple_choice`` (loglikelihood) or ``generate_until`` (verbalized answer + confidence).
    :ivar chat_template: the rendering setting, ``auto``, ``on`` or ``off`` (see :func:`uses_chat_template`).
    :ivar demonstrations: the few-shot demonstrations shown before every question (lm-eval's ``num_fewshot`` of the
        mode, its ``first_n`` sampler over these docs): the last ``num_fewshot`` docs of the spec's whole optimize
        split, never scored (they are taken out of ``splits["optimize"]``), never from validation or test.
        With the chat template they are earlier user/assistant turns (lm-eval's ``fewshot_as_multiturn``).
    """

    spec: TaskSpec
    mode: str
    task: Any
    splits: dict[str, list[dict]]
    answer_format: AnswerFormat | None
    weights: dict[str, float]
    chat_template: str = "auto"
    demonstrations: tuple[dict, ...] = ()
    _contexts: dict[tuple[str, str, int, bool], str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_fewshot(self) -> int:
        """How many demonstrations precede each question (0: zero-shot)."""
        return len(self.demonstrations)

    def fewshot_fields(self) -> dict[str, Any]:
        """The lm-eval fields that reproduce the demonstrations in stock lm-eval (``num_fewshot`` and a
        ``fewshot_config`` with the ``first_n`` sampler over the demonstration docs); empty when zero-shot."""
        if not self.demonstrations:
            return {}
        config = dict(self.spec.lm_eval_config(self.mode).get("fewshot_config") or {})
        config.update(sampler="first_n", samples=[dict(d) for d in self.demonstrations])
        return {"num_fewshot": self.num_fewshot, "fewshot_config": config}

    def docs(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise SpecError(self.spec.path, "tp.splits", f"no split {split!r}; have {sorted(self.splits)}")
        return self.splits[split]


def prepare_task(
    spec: TaskSpec,
    *,
    data_formats: Registry[DataFormatDef],
    mode: str | None = None,
    caps: Mapping[str, int] | None = None,
    weights: Mapping[str, float] | None = None,
    apply_chat_template: str | None = None,
) -> PreparedTask:
    """Load a spec's docs, split them and build its lm-eval ``ConfigurableTask`` (once per run).

    :param data_formats: the registered data formats (``Registries.data_formats``) that read the spec's files.
    :param mode: the ``output_type`` to score in; default the spec's.
    :param apply_chat_template: ``auto``, ``on`` or ``off``; default the spec's ``tp.apply_chat_template``
        (itself ``auto`` unless the spec says otherwise).
    :param caps: per-split maximum sizes (the budget's samples per split); splits are prefixes.
    :param weights: composite weights; default the spec's ``tp.metric_weights`` or DESIGN.md's defaults.
    :raises SpecError: the mode is not available for this spec, or its data do not fill the splits.
    :raises ValueError: ``apply_chat_template`` is not one of :data:`CHAT_TEMPLATE_SETTINGS`.
    """
    import datasets
    from lm_eval.api.task import ConfigurableTask

    from tp_harness.data.splits import load_rows, split_indices
    from tp_harness.spec.doc_checks import check_docs, check_first_doc
    from tp_harness.spec.templates import install_lm_eval_sandbox

    install_lm_eval_sandbox()  # every template of the task renders in jinja2's sandbox
    mode = mode or spec.modes[0]
    chat = apply_chat_template or spec.tp.apply_chat_template
    if chat not in CHAT_TEMPLATE_SETTINGS:
        raise ValueError(f"apply_chat_template: expected one of {', '.join(CHAT_TEMPLATE_SETTINGS)}, got {chat!r}")
    config = dict(spec.lm_eval_config(mode))
    rows = load_rows(spec, data_formats)
    all_docs = [row for _path, _line, row in rows]
    _check_sizes(spec, len(all_docs))
    full = split_indices(spec, len(all_docs))
    capped = split_indices(spec, len(all_docs), caps=caps)
    shots = int(config.pop("num_fewshot", None) or 0)
    demo_ids = list(full["optimize"][len(full["optimize"]) - shots:]) if shots else []
    if demo_ids:  # the demonstrations are never scored
        capped = {**capped, "optimize": [i for i in capped["optimize"] if i not in set(demo_ids)]}
    demonstrations = tuple(dict(all_docs[i]) for i in demo_ids)
    splits = {name: [all_docs[i] for i in indices] for name, indices in capped.items()}
    dataset = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items() if v})
    for key in ("dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split",
                "fewshot_split", "description"):
        config.pop(key, None)
    config.update(custom_dataset=lambda **_: dataset, test_split="test", metadata={"version": 1.0})
    if demonstrations:
        config["num_fewshot"] = shots
        config["fewshot_config"] = {**(config.get("fewshot_config") or {}), "sampler": "first_n",
                                    "samples": [dict(d) for d in demonstrations]}
    else:
        config.pop("fewshot_config", None)
    if capped["test"]:  # lm-eval renders the first test doc while it builds the task: check it first
        first = capped["test"][0]
        check_first_doc(spec, config, mode=mode, doc=all_docs[first], origin=rows[first][:2])
    task = ConfigurableTask(config=config)
    check_docs(spec, task, mode=mode, answer_format=spec.answer_format(mode), splits=full, docs=all_docs,
               origins=[(path, line) for path, line, _row in rows])
    docs = {k: [dict(d) for d in dataset[k]] if k in dataset else [] for k in SPLITS}
    w = dict(weights or spec.tp.metric_weights or DEFAULT_WEIGHTS)
    return PreparedTask(spec=spec, mode=mode, task=task, splits=docs, answer_format=spec.answer_format(mode),
                        weights=w, chat_template=chat, demonstrations=demonstrations)


def _check_sizes(spec: TaskSpec, num_docs: int) -> None:
    """:raises SpecError: the splits ask for more docs than the data holds (as :func:`tp_harness.data.splits.split_docs`)."""
    from tp_harness.data.splits import split_docs

    split_docs(spec, [{}] * num_docs)


# ---------------------------------------------------------------------------------------------
# prompts and requests


def uses_chat_template(prepared: PreparedTask, backend: LMBackend) -> bool:
    """Whether ``prepared`` is rendered with ``backend``'s chat template (lm-eval's ``--apply_chat_template``).

    ``on``: yes; ``off``: no; ``auto``: :data:`AUTO_CHAT_TEMPLATE` of the scoring mode, and never for a
    model without a chat template (a base model).
    :raises BackendError: ``on`` for a model that has no chat template.
    """
    setting = prepared.chat_template
    if setting == "off":
        return False
    if setting == "on":
        if not backend.has_chat_template:
            raise BackendError(backend.name, f"has no chat template, but task {prepared.name!r} is rendered with "
                               "--apply-chat-template on", "use --apply-chat-template off (or auto)")
        return True
    return AUTO_CHAT_TEMPLATE.get(prepared.mode, False) and backend.has_chat_template


def render_context(prepared: PreparedTask, backend: LMBackend, *, instruction: str, split: str, doc_id: int) -> str:
    """The exact prompt string lm-eval builds for ``doc`` with ``instruction`` as the task description.

    The instruction plus ``"\n\n"`` is placed exactly where an exported task's ``description``
    (``TaskSpec.lm_eval_config(instruction=...)``) puts it: the system message with the chat template,
    a plain-text prefix without it (:func:`uses_chat_template` decides). The task's demonstrations
    (:attr:`PreparedTask.demonstrations`) follow it: with the chat template as earlier user/assistant turns
    (lm-eval's ``fewshot_as_multiturn``, its default with ``--apply_chat_template``), without it as text.
    """
    use_chat = uses_chat_template(prepared, backend)
    key = (instruction, split, doc_id, use_chat)
    if key not in prepared._contexts:
        doc = prepared.splits[split][doc_id]
        prepared._contexts[key] = prepared.task.fewshot_context(
            doc, prepared.num_fewshot, system_instruction=instruction + "\n\n" if instruction else None,
            apply_chat_template=use_chat, fewshot_as_multiturn=use_chat,
            chat_template=backend.apply_chat_template if use_chat else None,
        )
    return prepared._contexts[key]


@dataclass(frozen=True, slots=True)
class EvalJob:
    """One (task, split, instruction) evaluation to run; ``doc_ids`` default to the whole split."""

    prepared: PreparedTask
    split: str
    instruction: str
    doc_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Evaluation:
    """The result of one :class:`EvalJob`: records, metric values (plus ``composite``) and costs.

    :ivar metrics: every registered metric (``acc``, ``ifr``, ``ece``, ``auroc``, ``pr_p``, ``pr_n``, ...) plus
        ``composite``: floats in [0, 1], or None where undefined or not applicable (IFR in multiple_choice).
    :ivar seconds: wall time of the backend call, shared pro rata between the jobs of one call.
    :ivar tokens: prompt + continuation tokens pushed through the scorer LLM for this job.
    :ivar chat_template: whether the prompts were rendered with the scorer's chat template.
    """

    task: str
    split: str
    instruction: str
    prompt_sha: str
    mode: str
    records: tuple[SampleRecord, ...]
    metrics: dict[str, float | None]
    seconds: float
    tokens: int
    chat_template: bool = False

    @property
    def n(self) -> int:
        """Number of scored docs (records)."""
        return len(self.records)

    @property
    def output_type(self) -> str:
        """lm-eval's ``output_type`` the job was scored in (``multiple_choice`` or ``generate_until``)."""
        return self.mode

    @property
    def composite(self) -> float:
        value = self.metrics.get("composite")
        return float("-inf") if value is None else float(value)


def count_scorer_requests(prepared: PreparedTask, split: str, num_docs: int | None = None) -> int:
    """How many backend requests one instruction costs on ``split`` (choices per doc in multiple_choice)."""
    docs = prepared.splits[split][:num_docs] if num_docs else prepared.splits[split]
    if prepared.mode != "multiple_choice":
        return len(docs)
    return sum(len(prepared.task.doc_to_choice(d)) for d in docs)


def evaluate_jobs(
    backend: LMBackend,
    jobs: Sequence[EvalJob],
    *,
    metrics: Registry[MetricDef],
) -> list[Evaluation]:
    """Evaluate many (task, split, instruction) jobs with one backend call per request type.

    All loglikelihood requests of all jobs go to the backend together (lm-eval sorts and batches
    them), and likewise all generate_until requests, so a whole optimization step is one call.
    :return: one :class:`Evaluation` per job, in order.
    """
    from lm_eval.api.instance import Instance

    ll_reqs: list[Any] = []
    gen_reqs: list[Any] = []
    chat = {id(job.prepared): uses_chat_template(job.prepared, backend) for job in jobs}
    plan: list[tuple[EvalJob, list[int], list[tuple[int, int, int]]]] = []  # job, doc_ids, (doc_id, start, count)
    for job in jobs:
        prep = job.prepared
        ids = list(job.doc_ids) if job.doc_ids is not None else list(range(len(prep.docs(job.split))))
        spans = []
        for doc_id in ids:
            doc = prep.splits[job.split][doc_id]
            ctx = render_context(prep, backend, instruction=job.instruction, split=job.split, doc_id=doc_id)
            if prep.mode == "multiple_choice":
                reqs = prep.task.construct_requests(doc=doc, ctx=ctx, metadata=(prep.name, doc_id, 1),
                                                    apply_chat_template=chat[id(prep)])
                spans.append((doc_id, len(ll_reqs), len(reqs)))
                ll_reqs.extend(reqs)
            else:
                gen_kwargs = dict(prep.task.config.generation_kwargs or {})
                spans.append((doc_id, len(gen_reqs), 1))
                gen_reqs.append(Instance(request_type="generate_until", doc=doc, arguments=(ctx, gen_kwargs),
                                         idx=0, metadata=(prep.name, doc_id, 1)))
        plan.append((job, ids, spans))

    t0 = time.perf_counter()
    ll_results = backend.loglikelihood(ll_reqs)
    gen_results = backend.generate_until(gen_reqs)
    elapsed = time.perf_counter() - t0
    total_reqs = max(1, len(ll_reqs) + len(gen_reqs))

    out: list[Evaluation] = []
    for job, _ids, spans in plan:
        prep = job.prepared
        sha = prompt_sha(job.instruction)
        records: list[SampleRecord] = []
        texts: list[str] = []
        for doc_id, start, count in spans:
            doc = prep.splits[job.split][doc_id]
            if prep.mode == "multiple_choice":
                reqs = ll_reqs[start:start + count]
                lls = [r[0] for r in ll_results[start:start + count]]
                records.append(_mc_record(prep, doc, doc_id, sha, lls))
                texts.extend(a for r in reqs for a in r.arguments)
            else:
                response = gen_results[start]
                records.append(_gen_record(prep, doc, doc_id, sha, response))
                texts.extend([gen_reqs[start].arguments[0], response])
        n_reqs = sum(c for _, _, c in spans)
        out.append(Evaluation(task=prep.name, split=job.split, instruction=job.instruction, prompt_sha=sha,
                              mode=prep.mode, records=tuple(records), metrics=metrics_of(prep, records, metrics),
                              seconds=elapsed * n_reqs / total_reqs, tokens=backend.count_tokens(texts),
                              chat_template=chat[id(prep)]))
    return out


def metrics_of(prepared: PreparedTask, records: Sequence[SampleRecord], metrics: Registry[MetricDef]
               ) -> dict[str, float | None]:
    """Every registered metric of ``records`` (one task's scored samples) plus ``composite`` with the task's weights;
    None where a metric does not apply to the task's mode. What :func:`evaluate_jobs` reports per job."""
    defs = _applicable(metrics, prepared.mode)
    computed = compute_metrics(records, defs, weights={k: w for k, w in prepared.weights.items() if k in defs})
    values = {name: computed.get(name) for name in metrics.names()}  # n/a (None) where a metric does not apply
    values["composite"] = computed["composite"]
    return values


def _applicable(metrics: Registry[MetricDef], mode: str) -> dict[str, MetricDef]:
    return {name: metrics.get(name) for name in metrics.names() if mode in metrics.get(name).output_types}


def _mc_record(prep: PreparedTask, doc: dict, doc_id: int, sha: str, lls: list[float]) -> SampleRecord:
    return record_from_loglikelihoods(prep.task, doc, doc_id=doc_id, sha=sha, lls=lls)


def record_from_loglikelihoods(task: Any, doc: dict, *, doc_id: int, sha: str, lls: Sequence[float]) -> SampleRecord:
    """The multiple_choice record of one doc: prediction = argmax loglikelihood (lm-eval's ``acc``), confidence =
    its softmax share over the choices; ``correct_norm`` = argmax of loglikelihood / choice length in characters
    (lm-eval's ``acc_norm``, ``ConfigurableTask.process_results`` in lm-eval 0.4.13; ties go to the first choice).

    :param task: the lm-eval ``ConfigurableTask`` whose ``doc_to_choice`` / ``doc_to_target`` read ``doc``.
    :param lls: one loglikelihood (natural log, summed over the continuation) per choice, in choice order.
    Also used by :mod:`tp_harness.lm_eval_bridge`, so stock lm-eval scores an exported task the same way.
    """
    choices = [str(c) for c in task.doc_to_choice(doc)]
    gold_idx = task.doc_to_target(doc)
    if isinstance(gold_idx, str):
        gold_idx = choices.index(gold_idx) if gold_idx in choices else int(gold_idx)
    top = max(lls)
    probs = [math.exp(v - top) for v in lls]
    total = sum(probs)
    pred = max(range(len(lls)), key=lambda i: lls[i])
    pred_norm = max(range(len(lls)), key=lambda i: lls[i] / max(1, len(choices[i])))
    return SampleRecord(doc_id=doc_id, prompt_sha=sha, response=choices[pred], parsed_answer=choices[pred],
                        gold=choices[gold_idx], confidence=min(1.0, max(0.0, probs[pred] / total)), followed=None,
                        correct=pred == gold_idx, correct_norm=pred_norm == gold_idx)


# ---------------------------------------------------------------------------------------------
# verbalized answers (generate_until): parsers

def _gen_record(prep: PreparedTask, doc: dict, doc_id: int, sha: str, response: str) -> SampleRecord:
    fmt = prep.answer_format
    if fmt is None:
        raise SpecError(prep.spec.path, f"tp.modes.{prep.mode}.answer_format", "required for generate_until")
    return record_from_response(prep.task, fmt, doc, doc_id=doc_id, sha=sha, response=response)


def record_from_response(task: Any, fmt: AnswerFormat, doc: dict, *, doc_id: int, sha: str,
                         response: str) -> SampleRecord:
    """The generate_until record of one doc: ``response`` parsed by ``fmt.parser`` (:mod:`tp_harness.evaluation.parsers`) and
    compared with the gold answer (``doc_to_target``; an index is mapped through ``fmt.labels``).

    :param task: the lm-eval ``ConfigurableTask`` whose ``doc_to_target`` / ``doc_to_choice`` read ``doc``.
    Also used by :mod:`tp_harness.lm_eval_bridge`, so stock lm-eval scores an exported task the same way.
    """
    parser = ANSWER_PARSERS[fmt.parser]
    target = task.doc_to_target(doc)
    labels = list(fmt.labels or [])
    if parser.letters_by_default and not labels:
        labels = [chr(ord("A") + i) for i in range(len(task.doc_to_choice(doc)))]
    gold = labels[target] if isinstance(target, int) and labels else str(target).strip()
    gold = parser.gold(gold)
    parsed = parse_verbalized(response, fmt.parser, labels)
    return SampleRecord(doc_id=doc_id, prompt_sha=sha, response=response, parsed_answer=parsed.answer, gold=gold,
                        confidence=parsed.confidence, followed=parsed.followed,
                        correct=parsed.answer is not None and parsed.answer.lower() == gold.lower())
