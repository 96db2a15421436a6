"""Reading task specs: find them in directories, load and validate one file (errors name file, line and field)."""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tp_harness.errors import SpecError
from tp_harness.spec.schema import DEFAULT_METRIC_NAMES, TaskSpec, _SpecDocument
from tp_harness.spec.validation_errors import _got, _to_spec_error
from tp_harness.spec.yaml_lines import parse_yaml

__all__ = ["BUILTIN_SPEC_DIR", "discover_specs", "load_spec"]


def _builtin_spec_dir() -> Path:
    """Where the shipped task specs are: ``tp_harness/task_specs`` inside an installed wheel (the build maps the
    repository's top-level ``task_specs/`` there, see pyproject.toml), else ``task_specs/`` beside the package in
    a checkout (an editable install)."""
    package = Path(__file__).resolve().parents[1]  # tp_harness/ (this file is tp_harness/spec/loader.py)
    installed = package / "task_specs"
    return installed if installed.is_dir() else package.parent / "task_specs"


#: The task specs shipped with tp-harness: package data of a wheel, or the checkout's ``task_specs/``.
BUILTIN_SPEC_DIR: Path = _builtin_spec_dir()


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
