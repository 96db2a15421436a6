"""YAML reading for task specs: parse once, refuse duplicate keys, and map dotted fields to lines.

Owns turning a spec file into (data, ``{"tp.splits.test": 14, ...}``) so every SpecError can name the
line of the offending field. It knows nothing about the spec's schema (that is :mod:`tp_harness.spec.schema`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tp_harness.errors import SpecError

_LAST_PART = re.compile(r"(\.[^.\[\]]+|\[\d+\]|^[^.\[\]]+)$")


@dataclasses.dataclass(frozen=True)
class FunctionRef:
    """A ``!function module.attr`` value, as lm-eval's task YAML writes it (e.g. ``custom_dataset``).

    Kept as a reference: tp-harness never imports it (lm-eval resolves it, relative to the YAML first).
    """

    name: str

    def __str__(self) -> str:
        return f"!function {self.name}"


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus lm-eval's ``!function`` tag."""


def _construct_function(loader: yaml.SafeLoader, node: yaml.Node) -> FunctionRef:
    return FunctionRef(str(loader.construct_scalar(node)).strip())  # type: ignore[arg-type]


_SpecLoader.add_constructor("!function", _construct_function)


def line_for(lines: Mapping[str, int], field: str) -> int | None:
    """The line of dotted ``field``, or of its nearest enclosing key that has one; None if none has."""
    while field:
        if field in lines:
            return lines[field]
        field = _LAST_PART.sub("", field)
    return None


def dotted_path(parent: str, part: str | int) -> str:
    """``parent.part`` for a key, ``parent[i]`` for a list index."""
    if isinstance(part, int):
        return f"{parent}[{part}]"
    return f"{parent}.{part}" if parent else str(part)


def _line_map(
    path: Path, node: yaml.Node, prefix: str = "", lines: dict[str, int] | None = None
) -> dict[str, int]:
    """Map each dotted key path to its 1-based line; refuse duplicate keys, which YAML would silently drop."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = dotted_path(prefix, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(path, dotted, f"duplicate key (first at line {seen[key]})", line=line)
            seen[key] = line
            lines[dotted] = line
            _line_map(path, value_node, dotted, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            dotted = dotted_path(prefix, i)
            lines[dotted] = item.start_mark.line + 1
            _line_map(path, item, dotted, lines)
    return lines


def parse_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """Parse ``path`` once, returning the data and its dotted-path -> line map.

    Safe YAML, plus lm-eval's ``!function module.attr`` tag, read as a :class:`FunctionRef`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, "(file)", "spec file not found") from None
    except UnicodeDecodeError as err:
        raise SpecError(
            path, "(file)", f"expected UTF-8 text, got undecodable bytes ({err.reason})"
        ) from None
    except OSError as err:
        raise SpecError(path, "(file)", f"cannot read the spec ({err.strerror or err}); pass a readable YAML file") from None
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise SpecError(
            path,
            "(yaml)",
            f"invalid YAML: {problem}; check indentation and quoting",
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.YAMLError as err:
        raise SpecError(path, "(yaml)", f"invalid YAML: {err}") from None
    finally:
        loader.dispose()
    return data, (_line_map(path, node) if node is not None else {})
