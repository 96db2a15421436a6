"""Task specs: load, validate and view the YAML files that define tasks.

A spec is a strict superset of lm-eval's ``TaskConfig``: its top-level keys are lm-eval fields, kept
unrenamed, plus one ``tp:`` block with what tp-harness adds (domain, role, meta-prompt description,
original instruction, data files and splits, scoring modes, metric weights, gates, license). This
module owns parsing and validation, with errors that name the file, line and dotted field, and the
lm-eval config view per scoring mode. It reads no data rows (``tp_harness.data.formats`` does) and builds no
lm-eval task.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tp_harness.constants import BUILTIN_METRICS, OUTPUT_TYPES, SPLITS
from tp_harness.errors import SpecError
from tp_harness.spec.gates import GateSyntaxError, parse_gate
from tp_harness.spec.templates import TemplateProblem, check_template, escape_literal
from tp_harness.spec.yaml_lines import line_for, parse_yaml

__all__ = [
    "BUILTIN_SPEC_DIR",
    "DEFAULT_METRIC_NAMES",
    "LM_EVAL_LOADER",
    "LM_EVAL_SPLITS",
    "OUTPUT_TYPES",
    "AnswerFormat",
    "DataBlock",
    "LicenseBlock",
    "ModeOverride",
    "SplitsBlock",
    "TaskSpec",
    "TpBlock",
    "UpstreamBlock",
    "discover_specs",
    "lm_eval_field_names",
    "load_spec",
]

#: Metric names a spec may weight when no metric registry is passed in.
DEFAULT_METRIC_NAMES: frozenset[str] = frozenset(BUILTIN_METRICS)


def _builtin_spec_dir() -> Path:
    """Where the shipped task specs are: ``tp_harness/task_specs`` inside an installed wheel (the build maps the
    repository's top-level ``task_specs/`` there, see pyproject.toml), else ``task_specs/`` beside the package in
    a checkout (an editable install)."""
    package = Path(__file__).resolve().parents[1]  # tp_harness/ (this file is tp_harness/spec/schema.py)
    installed = package / "task_specs"
    return installed if installed.is_dir() else package.parent / "task_specs"


#: The task specs shipped with tp-harness: package data of a wheel, or the checkout's ``task_specs/``.
BUILTIN_SPEC_DIR: Path = _builtin_spec_dir()
#: The scoring modes tp-harness evaluates (lm-eval ``output_type`` values).
#: The ``custom_dataset`` that lets stock lm-eval read a spec's data (``tp_harness.lm_eval_dataset``).
LM_EVAL_LOADER = "tp_harness.lm_eval_dataset.load"
#: The splits that loader returns (the same names as ``tp.splits``).
LM_EVAL_SPLITS: tuple[str, ...] = SPLITS

#: lm-eval fields that lm-eval renders as Jinja templates (a string naming a doc field is a template too).
TEMPLATE_FIELDS: tuple[str, ...] = ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix",
                                    "doc_to_decontamination_query", "description")

OutputType = Literal["multiple_choice", "generate_until"]
_RESERVED_TOP: dict[str, str] = {}  # description: allowed only as the copy of tp.instruction (below)
_RESERVED_MODE = {
    "task": "a mode cannot rename the task",
    "output_type": "the mode name is the output_type",
    "description": "set tp.instruction instead; it becomes lm-eval's description",
}


@functools.cache
def lm_eval_field_names() -> frozenset[str]:
    """The field names of lm-eval's ``TaskConfig`` (lm-eval is imported here, lazily, once)."""
    from lm_eval.config.task import TaskConfig

    return frozenset(f.name for f in dataclasses.fields(TaskConfig))


class _LocatedError(ValueError):
    """A validator error whose location extends the pydantic location by ``suffix`` (a key or index)."""

    def __init__(self, message: str, *suffix: str | int) -> None:
        super().__init__(message)
        self.suffix = suffix


def _did_you_mean(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(str(name), sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_keys(data: Any, allowed: Collection[str], reserved: Mapping[str, str], what: str) -> None:
    """Refuse keys that are neither lm-eval fields nor ours; the error names the key and a close match."""
    if not isinstance(data, dict):
        return
    for key in data:
        if key in reserved:
            raise _LocatedError(f"not allowed here: {reserved[key]}", str(key))
        if key not in allowed:
            raise _LocatedError(f"unknown key{_did_you_mean(key, allowed)}; expected {what}", str(key))


class _Strict(BaseModel):
    """Base of the ``tp:`` models: unknown keys refused, no type coercion (YAML gives real types), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AnswerFormat(_Strict):
    """How a ``generate_until`` response is parsed into (answer, confidence)."""

    parser: Literal["letter_confidence", "label_confidence", "number_confidence"] = Field(
        description="the response parser: 'Answer: <letter|label|number>' plus 'Confidence: <0-100>%'"
    )
    labels: list[str] | None = Field(
        default=None, validate_default=True, description="the allowed answers, e.g. [A, B, C, D]"
    )

    @field_validator("labels")
    @classmethod
    def _labels_usable(cls, labels: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if labels is None:
            if info.data.get("parser") == "label_confidence":
                raise ValueError("required for parser label_confidence: the allowed answers, e.g. [Yes, No]")
            return None
        if not labels or not all(label.strip() for label in labels):
            raise ValueError("expected a non-empty list of non-empty labels")
        if len(set(labels)) != len(labels):
            raise ValueError(f"expected distinct labels, got {labels}")
        return labels


class DataBlock(_Strict):
    """``tp.data``: which files hold the task's rows and which registered format reads them."""

    format: str = Field(
        min_length=1, description="a registered task source: jsonl, csv, tsv, logiqa, phrasebank, ..."
    )
    files: list[str] = Field(min_length=1, description="data files, relative to the spec file")
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the format's loader"
    )


class SplitsBlock(_Strict):
    """``tp.splits``: sizes of the disjoint optimize / validation / test splits and the shuffle seed."""

    seed: int = Field(default=1234, description="seed of the random permutation the splits are cut from")
    optimize: int = Field(ge=1, description="docs the optimizer scores candidates on")
    validation: int = Field(ge=1, description="docs the final prompt is selected on")
    test: int = Field(ge=1, description="held-out docs the final prompt is reported on")


class LicenseBlock(_Strict):
    """``tp.license``: the data's license, shown in reports; ``flags`` such as ``non-commercial``."""

    name: str = Field(min_length=1, description="license name, e.g. 'CC BY 4.0'")
    url: str | None = None
    flags: list[str] = Field(default_factory=list)


class UpstreamBlock(_Strict):
    """``tp.upstream``: lm-eval's own task for the same dataset, which the spec's format follows.

    The conformance test (tests/test_conformance.py) runs that task in stock lm-eval on the spec's test docs and
    checks that tp-harness measures the same ACC. ``fields`` lists where the spec deviates on purpose, with the
    upstream values: the test scores the spec with them put back, so it still compares like with like.
    """

    task_yaml: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$",
        description="the upstream task's YAML, relative to lm-eval's tasks/ directory, e.g. arc/arc_challenge.yaml",
    )
    fields: dict[str, Any] = Field(
        default_factory=dict,
        description="lm-eval fields where this spec deviates: the upstream's values (e.g. doc_to_choice: [A, B, C, D])",
    )


class _LmEvalFields(BaseModel):
    """The lm-eval fields whose types tp-harness checks; any other TaskConfig field passes through."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    doc_to_text: str | None = None
    doc_to_target: str | int | None = None
    doc_to_choice: str | list[str] | dict[str, Any] | None = None
    target_delimiter: str | None = None
    gen_prefix: str | None = None
    generation_kwargs: dict[str, Any] | None = None
    metric_list: list[dict[str, Any]] | None = None


class ModeOverride(_LmEvalFields):
    """``tp.modes.<mode>``: lm-eval fields that replace the top-level ones when scoring in that mode.

    Any lm-eval ``TaskConfig`` field is allowed (except ``task``, ``output_type`` and ``description``),
    plus ``answer_format``, which ``generate_until`` requires.
    """

    answer_format: AnswerFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_lm_eval_fields(cls, data: Any) -> Any:
        _check_keys(
            data,
            lm_eval_field_names() | {"answer_format"},
            _RESERVED_MODE,
            "an lm-eval TaskConfig field or answer_format",
        )
        return data

    @property
    def overrides(self) -> dict[str, Any]:
        """The lm-eval fields this mode sets, without ``answer_format``."""
        return self.model_dump(exclude_unset=True, exclude={"answer_format"})


class TpBlock(_Strict):
    """The ``tp:`` block of a task spec: what tp-harness adds to lm-eval's TaskConfig."""

    domain: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="general, medical, legal, financial, ...")
    role: Literal["source", "target", "both"] = "both"
    description: str = Field(min_length=1, description="the task description used in the meta-prompt")
    instruction: str = Field(min_length=1, description="the original prompt, scored as the baseline")
    answer_format: AnswerFormat | None = Field(
        default=None, description="the parser, when the top-level output_type is generate_until"
    )
    data: DataBlock = Field(description="the data files and their format, e.g. {format: jsonl, files: [...]}")
    splits: SplitsBlock = Field(
        description="split sizes, e.g. {seed: 1234, optimize: 64, validation: 64, test: 128}"
    )
    modes: dict[OutputType, ModeOverride] = Field(default_factory=dict)
    upstream: UpstreamBlock | None = Field(
        default=None, description="lm-eval's own task for this dataset (its format is the reference)"
    )
    apply_chat_template: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="render with the scorer's chat template (lm-eval's --apply_chat_template): auto (off for "
        "multiple_choice, on for generate_until with a chat model), on or off; the CLI flag overrides it",
    )
    metric_weights: dict[str, float] = Field(default_factory=dict, description="empty means the defaults")
    gates: list[str] = Field(default_factory=list, description="pytest gates, e.g. 'acc >= 0.3'")
    license: LicenseBlock | None = None

    @field_validator("modes")
    @classmethod
    def _generate_until_has_parser(cls, modes: dict[str, ModeOverride]) -> dict[str, ModeOverride]:
        for mode, override in modes.items():
            if mode == "generate_until" and override.answer_format is None:
                raise _LocatedError(
                    "missing required field: the response parser, e.g. {parser: letter_confidence}",
                    mode,
                    "answer_format",
                )
            if mode != "generate_until" and override.answer_format is not None:
                raise _LocatedError("applies to generate_until only", mode, "answer_format")
        return modes

    @field_validator("apply_chat_template", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``on`` / ``off`` as a boolean: take it as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("metric_weights")
    @classmethod
    def _weights_usable(cls, weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        known = frozenset((info.context or {}).get("metric_names", DEFAULT_METRIC_NAMES))
        for name, value in weights.items():
            if name not in known:
                raise _LocatedError(
                    f"unknown metric{_did_you_mean(name, known)}; registered: {', '.join(sorted(known))}",
                    name,
                )
            if not math.isfinite(value):
                raise _LocatedError(f"expected a finite weight >= 0, got {value}", name)
            if value < 0:
                raise _LocatedError(f"expected a weight >= 0, got {value}", name)
        if weights and not any(weights.values()):
            raise ValueError("weights must not all be 0, e.g. {acc: 0.5, ece: 0.5}")
        return weights

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: list[str], info: ValidationInfo) -> list[str]:
        known = frozenset((info.context or {}).get("metric_names", DEFAULT_METRIC_NAMES))
        for i, gate in enumerate(gates):
            try:
                parse_gate(gate, metric_names=known)
            except GateSyntaxError as err:
                raise _LocatedError(str(err), i) from None
        return gates


class _SpecDocument(_LmEvalFields):
    """A whole spec file: lm-eval fields plus ``tp``. Internal; users get a :class:`TaskSpec`."""

    task: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the task name")
    output_type: OutputType = "generate_until"
    tp: TpBlock

    @model_validator(mode="before")
    @classmethod
    def _only_lm_eval_fields(cls, data: Any) -> Any:
        _check_keys(data, lm_eval_field_names() | {"tp"}, _RESERVED_TOP, "an lm-eval TaskConfig field or tp")
        return data

    @model_validator(mode="after")
    def _description_copies_instruction(self) -> _SpecDocument:
        """A top-level ``description`` (what stock lm-eval prepends) must be the original instruction."""
        extra = self.model_extra or {}
        if "description" in extra and extra["description"] != lm_eval_description(self.tp.instruction):
            raise _LocatedError(
                "not allowed here: set tp.instruction instead; it becomes lm-eval's description "
                f"(a copy for stock lm-eval must be tp.instruction plus a blank line: "
                f"{lm_eval_description(self.tp.instruction)!r})",
                "description",
            )
        return self

    @model_validator(mode="after")
    def _templates_safe(self) -> _SpecDocument:
        """Every Jinja template parses and passes the sandbox's static check (:func:`check_template`)."""
        base = self.model_dump(exclude_unset=True, exclude={"tp"})
        for where, fields in [((), base), *((("tp", "modes", m), o.overrides) for m, o in self.tp.modes.items())]:
            for name in TEMPLATE_FIELDS:
                value = fields.get(name)
                if isinstance(value, str):
                    try:
                        check_template(value)
                    except TemplateProblem as err:
                        raise _LocatedError(str(err), *where, name) from None
        return self

    @model_validator(mode="after")
    def _lm_eval_splits_exist(self) -> _SpecDocument:
        """With tp-harness's ``custom_dataset``, lm-eval's split fields must name splits it returns."""
        extra = self.model_extra or {}
        if str(extra.get("custom_dataset")) != f"!function {LM_EVAL_LOADER}":
            return self
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            value = extra.get(key)
            if value is not None and value not in LM_EVAL_SPLITS:
                raise _LocatedError(
                    f"no split {value!r}: {LM_EVAL_LOADER} returns {', '.join(LM_EVAL_SPLITS)}{_did_you_mean(value, LM_EVAL_SPLITS)}",
                    key,
                )
        if extra.get("test_split") is None and extra.get("validation_split") is None:
            raise _LocatedError(
                "missing test_split: lm-eval scores no split; add test_split: test", "custom_dataset"
            )
        return self

    @model_validator(mode="after")
    def _modes_complete(self) -> _SpecDocument:
        if self.output_type in self.tp.modes:
            raise _LocatedError(
                f"duplicates output_type {self.output_type}; put its fields at the top level",
                "tp",
                "modes",
                self.output_type,
            )
        if self.output_type == "generate_until" and self.tp.answer_format is None:
            raise _LocatedError(
                "missing required field: the response parser of output_type generate_until",
                "tp",
                "answer_format",
            )
        if self.output_type != "generate_until" and self.tp.answer_format is not None:
            raise _LocatedError(
                "applies to output_type generate_until only; put it under tp.modes.generate_until",
                "tp",
                "answer_format",
            )
        base = self.model_dump(exclude_unset=True, exclude={"tp"})
        for mode, override in [(self.output_type, None), *self.tp.modes.items()]:
            fields = {**base, **(override.overrides if override else {})}
            needed = ["doc_to_text", "doc_to_target"] + (
                ["doc_to_choice"] if mode == "multiple_choice" else []
            )
            for name in needed:
                if fields.get(name) is None:
                    where = ("tp", "modes", mode, name) if override else (name,)
                    raise _LocatedError(f"missing required field for output_type {mode}", *where)
        return self


# ----------------------------------------------------------------------------------------------
# The spec object


def lm_eval_description(instruction: str) -> str:
    """The lm-eval ``description`` that carries ``instruction``: the text plus ``"\\n\\n"``, escaped with
    :func:`tp_harness.spec.templates.escape_literal` when it holds Jinja markers (lm-eval renders ``description`` as
    a Jinja template; the escaped form renders to exactly the text, and nothing in the text can end it)."""
    return escape_literal(instruction) + "\n\n"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A validated task spec.

    ``lm_eval`` holds the top-level lm-eval fields as written (without ``tp``, with ``output_type``);
    treat it as read-only and use :meth:`lm_eval_config` for a config to hand to lm-eval. ``lines`` maps
    dotted fields (``tp.splits.test``) to their line in the file, for error messages.
    """

    path: Path
    name: str
    lm_eval: dict[str, Any]
    tp: TpBlock
    lines: Mapping[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    #: read data files outside the spec's directory (``--allow-data-outside-spec-dir``); off by default
    allow_data_outside: bool = dataclasses.field(default=False, compare=False)

    def __hash__(self) -> int:  # lm_eval is a dict; path and name identify a spec
        return hash((self.path, self.name))

    @property
    def output_type(self) -> str:
        """The default scoring mode (the spec's top-level ``output_type``)."""
        return str(self.lm_eval["output_type"])

    @property
    def modes(self) -> list[str]:
        """The scoring modes this spec offers: ``output_type`` first, then ``tp.modes`` keys."""
        return [self.output_type, *(m for m in self.tp.modes if m != self.output_type)]

    @property
    def data_dir(self) -> Path:
        """The spec file's directory; ``tp.data.files`` are relative to it."""
        return self.path.parent

    def data_file(self, index: int) -> Path:
        """The path of ``tp.data.files[index]``, confined to the spec's directory unless ``allow_data_outside``.

        :raises SpecError: the file resolves (``..``, an absolute path, a symlink) outside the spec's directory,
            or does not exist. The message names the file as written and never shows its content.
        """
        name = self.tp.data.files[index]
        field = f"tp.data.files[{index}]"
        path = self.data_dir / name
        if not self.allow_data_outside:
            root = self.data_dir.resolve()
            resolved = path.resolve()
            if resolved != root and root not in resolved.parents:
                raise SpecError(
                    self.path, field,
                    f"{name!r} is outside the spec's directory {root}: data files must stay inside it (a spec is "
                    "data and may come from anyone); move the file there, or pass --allow-data-outside-spec-dir "
                    "if you trust this spec",
                    line=self.line_of(field))
        if not path.is_file():
            raise SpecError(self.path, field, f"file not found: {path}", line=self.line_of(field))
        return path

    def line_of(self, field: str) -> int | None:
        """The line of dotted ``field`` in the spec file, or of its nearest enclosing key; None if unknown."""
        return line_for(self.lines, field)

    def lm_eval_config(self, mode: str | None = None, *, instruction: str | None = None) -> dict[str, Any]:
        """The lm-eval ``TaskConfig`` fields for scoring in ``mode``.

        :param mode: ``multiple_choice`` or ``generate_until``; default: the spec's ``output_type``.
        :param instruction: the instruction to score; default: ``tp.instruction`` (the original).
            It becomes lm-eval's ``description``: the text plus ``"\\n\\n"`` (lm-eval prepends it
            verbatim), escaped when it holds Jinja markers (:func:`lm_eval_description`); an empty string sets none.
        :return: a fresh dict: the top-level fields, that mode's ``tp.modes`` overrides applied,
            ``output_type`` set to ``mode``, no ``answer_format``.
        :raises SpecError: the spec does not offer ``mode``.
        """
        mode = mode or self.output_type
        if mode not in self.modes:
            raise SpecError(
                self.path,
                "tp.modes",
                f"mode {mode!r} is not available; this spec offers {', '.join(self.modes)} "
                f"(add tp.modes.{mode} with its lm-eval overrides)",
                line=self.line_of("tp.modes") or self.line_of("tp"),
            )
        config = copy.deepcopy(self.lm_eval)
        if mode != self.output_type:
            config.update(copy.deepcopy(self.tp.modes[mode].overrides))  # type: ignore[index]
        config["output_type"] = mode
        config.pop("description", None)  # a spec's own copy is of the original instruction
        text = self.tp.instruction if instruction is None else instruction
        if text:
            config["description"] = lm_eval_description(text)
        return config

    def answer_format(self, mode: str | None = None) -> AnswerFormat | None:
        """The response parser for ``mode`` (default: ``output_type``); None for ``multiple_choice``.

        :raises SpecError: the spec does not offer ``mode``.
        """
        mode = mode or self.output_type
        if mode == self.output_type:
            return self.tp.answer_format
        if mode not in self.tp.modes:
            self.lm_eval_config(mode)  # raises the SpecError naming the modes offered
        return self.tp.modes[mode].answer_format  # type: ignore[index]


# ----------------------------------------------------------------------------------------------
# YAML with line numbers




# ----------------------------------------------------------------------------------------------
# Pydantic errors -> SpecError

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "string_too_short": "a non-empty string",
    "int_parsing": "an integer",
    "float_parsing": "a number",
}
_YAML_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "mapping"}


def _got(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{_YAML_TYPE.get(type(value), type(value).__name__)} {text}"


def _clean_loc(data: Any, loc: Sequence[str | int], err_type: str) -> list[str | int]:
    """Keep the loc parts that are real keys or indexes of ``data``; drop pydantic's union tags."""
    out: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif i == len(loc) - 1 and err_type == "missing":
            pass
        else:
            continue
        out.append(part)
    return out


def _model_for(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model reached by following ``loc`` from the spec document, or None."""
    node: Any = _SpecDocument
    for part in loc:
        if node is dict:  # tp.modes: dict[mode, ModeOverride]
            node = ModeOverride
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or not isinstance(part, str):
            return None
        info = node.model_fields.get(part)
        if info is None:
            return None
        node = _submodel(info.annotation)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _submodel(annotation: Any) -> Any:
    """The model class inside ``annotation`` (``X | None``, ``dict[str, X]``), ``dict`` for mode maps."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(args) == 2 and args[1] is ModeOverride:
        return dict
    for arg in args:
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _problem(err: Mapping[str, Any], loc: Sequence[str | int], same_loc: Sequence[Mapping[str, Any]]) -> str:
    """Say what was expected for one pydantic error (types of a union merged), with a did-you-mean hint."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        model = _model_for(loc[:-1])
        info = model.model_fields.get(str(loc[-1])) if model is not None and loc else None
        about = f": {info.description}" if info is not None and info.description else ""
        return f"missing required field{about}"
    if kind == "extra_forbidden":
        model = _model_for(loc[:-1])
        known = list(model.model_fields) if model is not None else []
        return f"unknown key{_did_you_mean(str(loc[-1]), known)}; expected one of: {', '.join(known)}"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = _did_you_mean(str(value), options) if isinstance(value, str) else ""
        return f"expected {ctx.get('expected')}, got {_got(value)}{hint}"
    if kind == "string_pattern_mismatch":
        return f"expected a lower-case name without spaces (pattern {ctx.get('pattern')}), got {_got(value)}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s), got {_got(value)}"
    if kind in ("greater_than_equal", "greater_than"):
        op = ">=" if kind == "greater_than_equal" else ">"
        return f"expected a number {op} {ctx.get('ge', ctx.get('gt'))}, got {_got(value)}"
    if kind in _EXPECTED:
        expected = []
        for other in same_loc:
            text = _EXPECTED.get(other["type"])
            if text and text not in expected:
                expected.append(text)
        hint = " (YAML reads unquoted yes/no/on/off as booleans: quote it)" if isinstance(value, bool) else ""
        return f"expected {' or '.join(expected)}, got {_got(value)}{hint}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']}, got {_got(value)}"


def _to_spec_error(path: Path, data: Any, lines: Mapping[str, int], exc: ValidationError) -> SpecError:
    """Turn the first pydantic error into a SpecError with line, dotted field and hint.

    "First" is in file order, except that missing fields come after every other error.
    """
    located = []
    for index, err in enumerate(exc.errors()):
        loc = _clean_loc(data, err["loc"], err["type"])
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, _LocatedError):
            loc = [*loc, *error.suffix]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        line = line_for(lines, field)
        located.append((line if line is not None else 0, index, field, loc, err))
    # file order, but a missing field last: it is often the echo of a misspelt key reported beside it
    _line, _index, field, loc, err = min(
        located, key=lambda item: (item[4]["type"] == "missing", item[0], item[1])
    )
    same = [e for (_l, _i, f, _loc, e) in located if f == field]
    return SpecError(path, field or "(top level)", _problem(err, loc, same), line=_line or None)


# ----------------------------------------------------------------------------------------------
# Public entry points


def _hoist_tp_block(
    path: Path, data: dict[str, Any], lines: Mapping[str, int]
) -> tuple[dict[str, Any], dict[str, int]]:
    """Move a ``metadata.tp`` block to the top level, where the schema expects ``tp``.

    A spec that stock lm-eval runs keeps its ``tp`` block under ``metadata`` (lm-eval's ``TaskConfig``
    refuses unknown top-level keys, and hands ``metadata`` to ``custom_dataset``). Line numbers of
    ``metadata.tp.*`` are also recorded as ``tp.*``, so errors and ``TaskSpec.line_of`` find them.
    """
    metadata = data.get("metadata")
    if not (isinstance(metadata, dict) and "tp" in metadata):
        return data, dict(lines)
    if "tp" in data:
        raise SpecError(
            path,
            "metadata.tp",
            f"the tp block is given twice (also at the top level, line {lines.get('tp')}); keep one",
            line=lines.get("metadata.tp"),
        )
    rest = {key: value for key, value in metadata.items() if key != "tp"}
    hoisted = {key: value for key, value in data.items() if key != "metadata"}
    if rest:
        hoisted["metadata"] = rest
    hoisted["tp"] = metadata["tp"]
    moved = dict(lines)
    for dotted, line in lines.items():
        if dotted == "metadata.tp" or dotted.startswith(("metadata.tp.", "metadata.tp[")):
            moved[dotted[len("metadata.") :]] = line
    return hoisted, moved


def load_spec(path: str | Path, *, metric_names: Collection[str] = DEFAULT_METRIC_NAMES,
              allow_data_outside: bool = False) -> TaskSpec:
    """Load and validate one task spec.

    The ``tp`` block may sit at the top level or under ``metadata`` (``metadata: {tp: ...}``, the form
    stock lm-eval also runs); errors name its fields ``tp.*`` either way. lm-eval-only keys such as
    ``custom_dataset: !function ...`` or the split names pass through untouched.

    :param path: the spec's YAML file.
    :param metric_names: metric names ``tp.metric_weights`` may use (from the metric registry).
    :param allow_data_outside: let ``tp.data.files`` name files outside the spec's directory (off: refused).
    :return: the validated :class:`TaskSpec`.
    :raises SpecError: the YAML is invalid, a field is missing, unknown or of the wrong type, a template is
        refused by the sandbox, a data file does not exist, is outside the spec's directory or is listed
        twice; the message names the file, the line, the dotted field and what was expected.
    """
    path = Path(path)
    data, lines = parse_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(
            path,
            "(top level)",
            f"expected a mapping of lm-eval fields plus a tp: block, got {_got(data)}",
            line=1,
        )
    data, lines = _hoist_tp_block(path, data, lines)
    try:
        doc = _SpecDocument.model_validate(data, context={"metric_names": frozenset(metric_names)})
    except ValidationError as exc:
        raise _to_spec_error(path, data, lines, exc) from None
    lm_eval = {key: copy.deepcopy(value) for key, value in data.items() if key != "tp"}
    lm_eval.setdefault("output_type", doc.output_type)
    spec = TaskSpec(path=path, name=doc.task, lm_eval=lm_eval, tp=doc.tp, lines=dict(lines),
                    allow_data_outside=allow_data_outside)
    seen: dict[Path, int] = {}
    for i in range(len(doc.tp.data.files)):
        file = spec.data_file(i).resolve()
        if file in seen:
            field = f"tp.data.files[{i}]"
            raise SpecError(path, field, f"the same file as tp.data.files[{seen[file]}] ({file.name}): its rows would "
                                         "be read twice and land in several splits; list each file once",
                            line=spec.line_of(field))
        seen[file] = i
    return spec


_TASK_LINE = re.compile(r"""^task:[ \t]*(['"]?)([^'"#\s]+)\1[ \t]*(?:#.*)?$""", re.MULTILINE)


def _task_name(path: Path) -> tuple[str, int | None]:
    """Read a spec's ``task`` cheaply (one regex; full YAML only when the regex finds nothing)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    match = _TASK_LINE.search(text)
    if match:
        return match.group(2), text.count("\n", 0, match.start()) + 1
    data, lines = parse_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("task"), str) and data["task"]:
        return data["task"], lines.get("task")
    raise SpecError(path, "task", "missing required field: the task name", line=1)


def discover_specs(dirs: Sequence[Path]) -> dict[str, Path]:
    """Find the task specs directly in each directory (``*.yaml``, ``*.yml``; ``data/`` is not searched).

    :param dirs: spec directories, e.g. ``[BUILTIN_SPEC_DIR]``; an earlier one is searched first.
    :return: ``{task name: spec path}``; specs are not validated (use :func:`load_spec`).
    :raises SpecError: a directory does not exist, a spec has no ``task``, or two files define the
        same task (names both files).
    """
    found: dict[str, Path] = {}
    for directory in map(Path, dirs):
        if not directory.is_dir():
            raise SpecError(directory, "(directory)", "task spec directory not found")
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        for file in files:
            name, line = _task_name(file)
            if name in found and found[name].resolve() != file.resolve():
                raise SpecError(
                    file,
                    "task",
                    f"task {name!r} is also defined in {found[name]}; rename one of them",
                    line=line,
                )
            found.setdefault(name, file)
    return found
