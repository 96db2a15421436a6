"""A spec's rows and its seeded splits: read every data file with the spec's data format, then cut the rows into
disjoint optimize / validation / test splits that depend only on the seed and the number of rows.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_harness.constants import SPLITS
from tp_harness.errors import DataError, SpecError, UnknownNameError
from tp_harness.plugin.hookspecs import DataFormatDef, Registry

if TYPE_CHECKING:
    from tp_harness.spec.schema import TaskSpec

log = logging.getLogger(__name__)



def _check_options(spec: TaskSpec, fmt: str, load: Any, options: Mapping[str, Any]) -> None:
    """Refuse options the format's loader does not take, with the accepted names."""
    try:
        params = inspect.signature(load).parameters
    except (TypeError, ValueError):  # builtins or C callables: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        name
        for i, (name, p) in enumerate(params.items())
        if i > 0 and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    for name in options:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            field = f"tp.data.options.{name}"
            raise SpecError(
                spec.path,
                field,
                f"unknown option for format {fmt!r}{hint}; accepted: {', '.join(accepted) or 'none'}",
                line=spec.line_of(field),
            )


def load_rows(spec: TaskSpec, sources: Registry[DataFormatDef]) -> list[tuple[Path, int, dict[str, Any]]]:
    """Read every file of ``tp.data.files`` and return ``(file, line, row)`` for each row, in file order.

    :param spec: the task spec; file paths are relative to its directory and must stay inside it.
    :param sources: the data-format registry (``Registries.data_formats``) that names the formats.
    :raises SpecError: the format is not registered, an option is unknown, a file is missing, outside the
        spec's directory, or listed twice.
    :raises DataError: a row is malformed, a file holds no rows, or a file cannot be read (names the file).
    """
    data = spec.tp.data
    try:
        source = sources.get(data.format)
    except UnknownNameError as err:
        raise SpecError(spec.path, "tp.data.format", str(err), line=spec.line_of("tp.data.format")) from None
    options = dict(data.options)
    _check_options(spec, data.format, source.load, options)
    rows: list[tuple[Path, int, dict[str, Any]]] = []
    for i in range(len(data.files)):
        path = spec.data_file(i)
        count = 0
        try:
            for line, row in source.load(path, **options):
                rows.append((path, line, row))
                count += 1
        except OSError as err:
            raise DataError(path, f"cannot read the file ({err.strerror or err}); check that it exists and is "
                                  "readable") from None
        except UnicodeDecodeError as err:
            raise DataError(path, f"expected UTF-8 text, got undecodable bytes ({err.reason}); set "
                                  "tp.data.options.encoding") from None
        if count == 0:
            raise DataError(path, f"the file is empty: it holds no rows of format {data.format!r}; add rows, or "
                                  f"remove it from tp.data.files (line {spec.line_of(f'tp.data.files[{i}]')} of "
                                  f"{spec.path.name})")
        log.debug("task %s: %d rows from %s", spec.name, count, path)
    return rows


def load_docs(spec: TaskSpec, sources: Registry[DataFormatDef]) -> list[dict[str, Any]]:
    """Read every file of ``tp.data.files`` with the spec's format and return all rows, in file order.

    :param spec: the task spec; file paths are relative to its directory.
    :param sources: the data-format registry (``Registries.data_formats``) that names the formats.
    :return: the rows as dicts, files concatenated in the order listed.
    :raises SpecError: the format is not registered, an option is unknown, or a file is missing or outside.
    :raises DataError: a row is malformed (names the file and line), or a file is empty.
    """
    return [row for _path, _line, row in load_rows(spec, sources)]


def split_docs(
    spec: TaskSpec,
    docs: Sequence[dict[str, Any]],
    *,
    caps: Mapping[str, int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Cut ``docs`` into disjoint optimize, validation and test splits, reproducibly.

    The docs are permuted with ``random.Random(tp.splits.seed)``; the splits are consecutive slices of
    that permutation of sizes ``tp.splits.optimize``, ``validation`` and ``test``, in that order. The
    permutation depends only on the seed and the number of docs, so the splits never depend on ``caps``.

    :param spec: the task spec (sizes and seed from ``tp.splits``).
    :param docs: all rows, as returned by :func:`load_docs`.
    :param caps: optional ``{split: n}`` keeping the first ``n`` docs of a split, so the split under a
        smaller cap is a prefix of the split under a larger one (budgets nest).
    :return: ``{"optimize": [...], "validation": [...], "test": [...]}``.
    :raises SpecError: the spec asks for more docs than there are.
    :raises ValueError: ``caps`` names an unknown split or holds a negative number.
    """
    splits = spec.tp.splits
    sizes = {"optimize": splits.optimize, "validation": splits.validation, "test": splits.test}
    wanted = sum(sizes.values())
    if wanted > len(docs):
        raise SpecError(
            spec.path,
            "tp.splits",
            f"asks for {splits.optimize} + {splits.validation} + {splits.test} = {wanted} docs "
            f"(optimize + validation + test) but the data has only {len(docs)}; lower the split sizes",
            line=spec.line_of("tp.splits"),
        )
    return {name: [docs[i] for i in indices] for name, indices in split_indices(spec, len(docs), caps=caps).items()}


def split_indices(spec: TaskSpec, num_docs: int, *, caps: Mapping[str, int] | None = None) -> dict[str, list[int]]:
    """The doc indices of each split, as :func:`split_docs` cuts them (it calls this).

    :raises ValueError: ``caps`` names an unknown split or holds a negative number.
    """
    splits = spec.tp.splits
    sizes = {"optimize": splits.optimize, "validation": splits.validation, "test": splits.test}
    caps = dict(caps or {})
    for name, cap in caps.items():
        if name not in sizes:
            raise ValueError(f"caps: unknown split {name!r}; splits are {', '.join(SPLITS)}")
        if not isinstance(cap, int) or cap < 0:
            raise ValueError(f"caps[{name!r}]: expected an integer >= 0, got {cap!r}")
    order = list(range(num_docs))
    random.Random(splits.seed).shuffle(order)
    result: dict[str, list[int]] = {}
    start = 0
    for name in SPLITS:
        indices = order[start : start + sizes[name]]
        start += sizes[name]
        if name in caps:
            indices = indices[: caps[name]]
        result[name] = indices
    return result
