"""Stored runs: reading ``results/runs/*/results.json`` and samples files back, never fatal on a bad file.

Owns :class:`StoredRun` (a run's parsed ``results.json`` and the fields reports group by), checking that
a results file is usable (a corrupt or partial one is reported and skipped), reading JSONL rows
(corrupt lines skipped with a warning) and the cell formatting every report shares. It runs no model
and computes no metric; the file layout is ``docs/run-directory.md``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StoredRun:
    """One run's parsed ``results.json`` plus the fields reports sort and group by.

    ``data`` is the whole parsed file (lm-eval results schema plus the ``tp`` section);
    ``run_id``, ``model`` and ``mode`` come from ``data["tp"]`` (``run_id`` falls back to the
    directory name, the others to ``"?"``); ``targets`` is ``tp.targets`` as a tuple.
    """

    run_dir: Path
    data: dict[str, Any] = field(compare=False, hash=False, repr=False)
    run_id: str
    model: str
    mode: str
    targets: tuple[str, ...]

    @property
    def tp(self) -> dict[str, Any]:
        """The ``tp`` section of ``results.json``."""
        return self.data["tp"]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """``tp.evaluations``: one dict per (task, split, prompt_kind) final evaluation."""
        return self.tp["evaluations"]

    @property
    def budget(self) -> str:
        """``tp.budget`` as text (``"?"`` when missing)."""
        return str(self.tp.get("budget") or "?")

    @property
    def seed(self) -> str:
        """``tp.seed`` as text (``"?"`` when missing)."""
        seed = self.tp.get("seed")
        return "?" if seed is None else str(seed)


def _check_results(data: Any) -> str | None:
    """Return why parsed ``results.json`` content is unusable, or ``None`` when it is usable."""
    if not isinstance(data, dict):
        return f"top level is {type(data).__name__}, expected an object"
    tp = data.get("tp")
    if not isinstance(tp, dict):
        return 'missing "tp" section (partial or non-tp-harness results file)'
    evaluations = tp.get("evaluations")
    if not isinstance(evaluations, list):
        return 'missing "tp.evaluations" list (partial results file)'
    if not all(isinstance(e, dict) for e in evaluations):
        return '"tp.evaluations" holds a non-object entry'
    return None


def make_run(run_dir: Path, data: dict[str, Any]) -> StoredRun:
    """A :class:`StoredRun` of checked ``results.json`` content (see :func:`read_results_file`)."""
    tp = data["tp"]
    targets = tp.get("targets") or []
    return StoredRun(
        run_dir=run_dir,
        data=data,
        run_id=str(tp.get("run_id") or run_dir.name),
        model=str(tp.get("model") or "?"),
        mode=str(tp.get("mode") or "?"),
        targets=tuple(str(t) for t in targets) if isinstance(targets, list) else (),
    )


def read_results_file(path: Path) -> dict[str, Any]:
    """Parse and check one ``results.json``; :raises ValueError: with the reason it is unusable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    problem = _check_results(data)
    if problem:
        raise ValueError(problem)
    return data


def load_results(results_root: Path) -> tuple[list[StoredRun], list[str]]:
    """Load every ``runs/*/results.json`` under ``results_root``, skipping unusable ones.

    :param results_root: the results folder (holding ``runs/<run_id>/``); a missing folder gives no runs.
    :return: ``(runs, problems)``: runs in path order; one human-readable line per skipped file
        (``"runs/<id>/results.json: <why>; skipped"``, path relative to ``results_root``) for bad JSON
        or a missing ``tp`` / ``tp.evaluations``. Each problem is also logged as a warning; never
        raises for a bad file.
    """
    results_root = Path(results_root)
    runs: list[StoredRun] = []
    problems: list[str] = []
    for path in sorted(results_root.glob("runs/*/results.json")):
        rel = path.relative_to(results_root).as_posix()
        try:
            data = read_results_file(path)
        except ValueError as err:
            problem = f"{rel}: {err}; skipped"
            log.warning("%s", problem)
            problems.append(problem)
            continue
        runs.append(make_run(path.parent, data))
    return runs, problems


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Object rows of a JSONL file; a blank, corrupt, non-UTF-8 or non-object line is skipped with a warning.

    An unreadable file gives ``[]`` with a warning.
    """
    rows: list[dict[str, Any]] = []
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        log.warning("%s: cannot read (%s); skipped", path, err.strerror or err)
        return rows
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            log.warning("%s:%d: non-UTF-8 JSONL row skipped (%s)", path, number, err.reason)
            continue
        except json.JSONDecodeError as err:
            log.warning("%s:%d: corrupt JSONL row skipped: %s", path, number, err.msg)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Cells


def fmt_value(value: Any) -> str:
    """A metric cell: 3 decimals; ``None``, NaN, booleans and non-numbers are ``"n/a"``."""
    if not is_number(value):
        return "n/a"
    return f"{value:.3f}"


def md_cell(text: Any) -> str:
    """A text cell safe inside a markdown table row."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool, None, NaN or infinity): a value a table can show."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
