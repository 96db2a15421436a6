"""Pydantic's validation errors, as :class:`~tp_harness.errors.SpecError`: the file, line and dotted field, what was
expected and what was found, and a close match for a misspelled key."""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tp_harness.errors import SpecError
from tp_harness.spec.schema import ModeOverride, _did_you_mean, _LocatedError, _SpecDocument
from tp_harness.spec.yaml_lines import line_for

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
