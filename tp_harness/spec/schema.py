"""Task specs: the schema (pydantic models) and the validated :class:`TaskSpec` with its lm-eval views.

A spec is a strict superset of lm-eval's ``TaskConfig``: its top-level keys are lm-eval fields, kept
unrenamed, plus one ``tp:`` block with what tp-harness adds (domain, role, meta-prompt description,
original instruction, data files and splits, scoring modes, metric weights, gates, license). This
module owns the schema and the lm-eval config view per scoring mode; :mod:`tp_harness.spec.loader` reads and
validates files, :mod:`tp_harness.spec.validation_errors` turns pydantic's errors into ones that name the file, line
and dotted field. It reads no data rows (``tp_harness.data.formats`` does) and builds no
lm-eval task.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tp_harness.constants import ANSWER_PARSER_NAMES, BUILTIN_METRICS, OUTPUT_TYPES, SPLITS
from tp_harness.errors import SpecError
from tp_harness.spec.gates import GateSyntaxError, parse_gate
from tp_harness.spec.templates import TemplateProblem, check_template, escape_literal
from tp_harness.spec.yaml_lines import line_for

__all__ = [
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
    "lm_eval_field_names",
]

#: Metric names a spec may weight when no metric registry is passed in.
DEFAULT_METRIC_NAMES: frozenset[str] = frozenset(BUILTIN_METRICS)


#: The scoring modes tp-harness evaluates (lm-eval ``output_type`` values).
#: The ``custom_dataset`` that lets stock lm-eval read a spec's data (``tp_harness.lm_eval_dataset``).
LM_EVAL_LOADER = "tp_harness.lm_eval_dataset.load"
#: The splits that loader returns (the same names as ``tp.splits``).
LM_EVAL_SPLITS: tuple[str, ...] = SPLITS

#: lm-eval fields that lm-eval renders as Jinja templates (a string naming a doc field is a template too).
#: lm-eval fewshot_config keys a spec may set: how a demonstration is rendered
FEWSHOT_RENDERING: tuple[str, ...] = ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix",
                                      "fewshot_delimiter", "target_delimiter")
#: lm-eval fewshot_config keys tp-harness sets itself (which docs are demonstrations)
FEWSHOT_CHOSEN_BY_TP: tuple[str, ...] = ("split", "samples", "sampler", "process_docs", "fewshot_indices")
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

    parser: Literal[ANSWER_PARSER_NAMES] = Field(  # type: ignore[valid-type]
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

    The conformance test (tests/interop/test_conformance.py) runs that task in stock lm-eval on the spec's test docs and
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
    num_fewshot: int | None = Field(default=None, ge=0, description="demonstrations before each question "
                                    "(lm-eval's num_fewshot; drawn from the optimize split, never validation or test)")
    fewshot_config: dict[str, Any] | None = Field(
        default=None, description="lm-eval's fewshot_config: how a demonstration is rendered (doc_to_target, ...)")

    @field_validator("fewshot_config")
    @classmethod
    def _fewshot_rendering_only(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is None:
            return config
        for key, value in config.items():
            if key in FEWSHOT_CHOSEN_BY_TP:
                raise _LocatedError(
                    "not allowed here: tp-harness draws the demonstrations itself (the last num_fewshot docs of the "
                    "optimize split, so they are never scored, validated or tested); keep only how they are "
                    f"rendered: {', '.join(FEWSHOT_RENDERING)}", key)
            if key not in FEWSHOT_RENDERING:
                raise _LocatedError(f"unknown key{_did_you_mean(key, FEWSHOT_RENDERING)}; expected one of "
                                    f"{', '.join(FEWSHOT_RENDERING)}", key)
            if not isinstance(value, str):
                raise _LocatedError(f"expected a string, got {type(value).__name__}", key)
        return config


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
            for name, value in (fields.get("fewshot_config") or {}).items():
                if name in TEMPLATE_FIELDS and isinstance(value, str):
                    try:
                        check_template(value)
                    except TemplateProblem as err:
                        raise _LocatedError(str(err), *where, "fewshot_config", name) from None
        return self

    @model_validator(mode="after")
    def _lm_eval_splits_exist(self) -> _SpecDocument:
        """With tp-harness's ``custom_dataset``, lm-eval's split fields must name splits it returns."""
        extra = self.model_extra or {}
        if extra.get("fewshot_split") not in (None, "optimize"):
            raise _LocatedError(f"demonstrations never come from the {extra['fewshot_split']!r} split; use "
                                "fewshot_split: optimize, or leave it out (tp-harness draws them from optimize)",
                                "fewshot_split")
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
            shots = fields.get("num_fewshot") or 0
            if shots >= self.tp.splits.optimize:
                where = ("tp", "modes", mode, "num_fewshot") if override and "num_fewshot" in override.overrides \
                    else ("num_fewshot",)
                raise _LocatedError(f"{shots} demonstrations leave no optimize doc to score: the optimize split holds "
                                    f"{self.tp.splits.optimize} (tp.splits.optimize); use fewer", *where)
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
