"""Checks of a task's docs at load, before any model loads: every row of every split can be scored.

Owns rendering each doc's templates once (in the sandbox) and checking what scoring will need: the prompt
renders, the row has the fields the templates read, the choices are a non-empty list, the gold answer is
one of the choices or labels, and no row sits in two splits. Errors name the data file and line of the
row, the spec field and what to do. It runs no model and computes no metric.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from tp_harness.errors import DataError, SpecError
from tp_harness.files import atomic_write_text, content_key, memo_path
from tp_harness.spec.schema import AnswerFormat, TaskSpec
from tp_harness.spec.templates import SecurityError

#: one row's origin: (data file, line or record number)
Origin = tuple[Path, int]


def _render(spec: TaskSpec, mode: str, field: str, origin: Origin, call: Any, doc: Mapping[str, Any], *,
            split: str) -> Any:
    """Call ``task.doc_to_<x>(doc)``; turn a failure into an error naming the row, its split and the spec field."""
    where = _field_where(spec, mode, field)
    try:
        return call(doc)
    except SecurityError as err:
        raise SpecError(spec.path, where, f"refused by the template sandbox ({err}); templates may read the doc's "
                        "fields only", line=spec.line_of(where)) from None
    except jinja2.UndefinedError as err:
        fields = ", ".join(sorted(map(str, doc))) or "none"
        raise DataError(origin[0], f"{where} (spec {spec.path.name}:{spec.line_of(where)}) reads a field this "
                        f"{split}-split row lacks ({err.message}); the row's fields: {fields}; add the column or fix the template",
                        line=origin[1]) from None
    except jinja2.TemplateError as err:
        raise SpecError(spec.path, where, f"the template fails: {err}", line=spec.line_of(where)) from None
    except (ValueError, KeyError, IndexError, TypeError, SyntaxError) as err:
        raise DataError(origin[0], f"{where} (spec {spec.path.name}:{spec.line_of(where)}) fails on this {split} split row: "
                        f"{type(err).__name__}: {str(err)[:200]}; fix the row or the template",
                        line=origin[1]) from None


def _field_where(spec: TaskSpec, mode: str, field: str) -> str:
    if mode != spec.output_type and field in (spec.tp.modes[mode].overrides if mode in spec.tp.modes else {}):
        return f"tp.modes.{mode}.{field}"
    return field


def _gold_problem(target: Any, choices: Sequence[str] | None, fmt: AnswerFormat | None, mode: str) -> str | None:
    """Why ``target`` cannot be scored against ``choices`` / the parser's labels, or None when it can."""
    if mode == "multiple_choice":
        assert choices is not None
        if isinstance(target, str):
            if target in choices:
                return None
            try:
                target = int(target)
            except ValueError:
                return f"the answer {target[:60]!r} is not among the choices {list(choices)[:10]}"
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
            return None
        return f"the answer index {target!r} is outside the {len(choices)} choices"
    if fmt is None:
        return None
    labels = list(fmt.labels or [])
    if fmt.parser == "letter_confidence" and not labels and choices is not None:
        labels = [chr(ord("A") + i) for i in range(len(choices))]
    if isinstance(target, int) and not isinstance(target, bool):
        if labels and not 0 <= target < len(labels):
            return f"the answer index {target} is outside the {len(labels)} labels {labels}"
        return None
    gold = str(target).strip()
    if fmt.parser in ("label_confidence", "letter_confidence") and labels:
        if gold.lower() not in {label.lower() for label in labels}:
            return f"the answer {gold[:60]!r} is not one of the labels {labels}"
    if fmt.parser == "number_confidence":
        try:
            float(gold.replace(",", ""))
        except ValueError:
            return f"the answer {gold[:60]!r} is not a number (parser number_confidence)"
    return None


class _Templates:
    """The ``doc_to_*`` fields of an lm-eval config rendered as lm-eval renders them, in the sandbox (no task)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def _field(self, name: str, doc: Mapping[str, Any]) -> Any:
        from tp_harness.spec.templates import sandbox

        value = self.config.get(name)
        if not isinstance(value, str):
            return value
        if value in doc:
            return doc[value]
        return sandbox().from_string(value).render(**doc)

    def doc_to_text(self, doc: Mapping[str, Any]) -> Any:
        return self._field("doc_to_text", doc)

    def doc_to_target(self, doc: Mapping[str, Any]) -> Any:
        return self._field("doc_to_target", doc)

    def doc_to_choice(self, doc: Mapping[str, Any]) -> Any:
        import ast

        value = self.config.get("doc_to_choice")
        if isinstance(value, dict):
            return list(value.values())
        if not isinstance(value, str) or value in doc:
            return self._field("doc_to_choice", doc)
        return ast.literal_eval(self._field("doc_to_choice", doc))  # as lm-eval reads a rendered choice list


def check_first_doc(spec: TaskSpec, config: Mapping[str, Any], *, mode: str, doc: Mapping[str, Any],
                    origin: Origin) -> None:
    """Render the first test doc's templates in the sandbox before lm-eval builds the task (which renders it).

    :raises SpecError: the sandbox refuses a template. :raises DataError: the row lacks a field, or a template
        fails on it (as :func:`check_docs`).
    """
    templates = _Templates(config)
    for name in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        _render(spec, mode, name, origin, getattr(templates, name), doc, split="test")


def check_docs(spec: TaskSpec, task: Any, *, mode: str, answer_format: AnswerFormat | None,
               splits: Mapping[str, Sequence[int]], docs: Sequence[Mapping[str, Any]],
               origins: Sequence[Origin]) -> None:
    """Check every doc of every split (uncapped) before scoring: templates, fields, choices, gold answers.

    :param task: the lm-eval ``ConfigurableTask`` built from the spec (its templates render in the sandbox).
    :param splits: ``{split: [doc index, ...]}`` over ``docs``, the full split sizes (not a ``--limit``).
    :param origins: ``(file, line)`` of each doc in ``docs``.
    :raises DataError: a row lacks a field a template reads, its answer is not among the choices or labels,
        its answer index is out of range, or the same row is in two splits (names both places).
    :raises SpecError: the sandbox refuses a template at render time, or a template fails for every row.

    Checks that passed are remembered in the cache (:func:`tp_harness.files.memo_path`) under a key of
    everything they read: the spec's lm-eval config of ``mode``, the answer format, the split indices, every
    doc, and the versions of these checks, the template sandbox and lm-eval. The same inputs again (a warm
    re-run) skip the rendering; any change, or a failure, renders every doc again.
    """
    key = content_key("doc_checks", _checks_version(), spec.lm_eval_config(mode), mode, repr(answer_format),
                      {k: list(v) for k, v in splits.items()}, [dict(d) for d in docs])
    stamp = memo_path("doc_checks", key)
    if stamp.is_file():
        return
    _check_docs(spec, task, mode=mode, answer_format=answer_format, splits=splits, docs=docs, origins=origins)
    try:
        atomic_write_text(stamp, "passed\n")
    except OSError:
        pass  # a read-only cache: the next run checks again


@functools.cache
def _checks_version() -> tuple[str, ...]:
    """What a passed check depends on besides its inputs: this module, the template sandbox, lm-eval."""
    import hashlib
    from importlib.metadata import version

    from tp_harness.spec import templates

    return (hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
            hashlib.sha256(Path(templates.__file__).read_bytes()).hexdigest(), version("lm_eval"))


def _check_docs(spec: TaskSpec, task: Any, *, mode: str, answer_format: AnswerFormat | None,
                splits: Mapping[str, Sequence[int]], docs: Sequence[Mapping[str, Any]],
                origins: Sequence[Origin]) -> None:
    seen: dict[str, tuple[str, Origin]] = {}
    needs_choices = mode == "multiple_choice" or (answer_format is not None
                                                   and answer_format.parser == "letter_confidence"
                                                   and not answer_format.labels)
    for split, indices in splits.items():
        for i in indices:
            doc, origin = docs[i], origins[i]
            text = _render(spec, mode, "doc_to_text", origin, task.doc_to_text, doc, split=split)
            choices = None
            if needs_choices:
                raw = _render(spec, mode, "doc_to_choice", origin, task.doc_to_choice, doc, split=split)
                if not isinstance(raw, (list, tuple)) or not raw:
                    raise DataError(origin[0], f"doc_to_choice gives {str(raw)[:80]!r} for this row, not a non-empty "
                                    "list of choices", line=origin[1])
                choices = [str(c) for c in raw]
            target = _render(spec, mode, "doc_to_target", origin, task.doc_to_target, doc, split=split)
            # lm-eval's multiple-input tasks (doc_to_text gives an index into the choices, which are contexts,
            # and the target is the shared continuation) have no gold among the choices to check
            multiple_input = isinstance(text, int) and not isinstance(text, bool)
            problem = None if multiple_input else _gold_problem(target, choices, answer_format, mode)
            if problem:
                where = _field_where(spec, mode, "doc_to_target")
                raise DataError(origin[0], f"{problem} ({split} split, {where} in {spec.path.name}:"
                                f"{spec.line_of(where)}); fix the row or the labels", line=origin[1])
            key = json.dumps(doc, sort_keys=True, default=str)
            if key in seen and seen[key][0] != split:
                other_split, (other_file, other_line) = seen[key]
                raise DataError(origin[0], f"this row ({split} split) duplicates {other_file}:{other_line} "
                                f"({other_split} split): a doc in two splits leaks the held-out data; remove "
                                "one copy", line=origin[1])
            seen.setdefault(key, (split, origin))
