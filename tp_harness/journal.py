"""The run directory and its append-only journal; resume.

Owns ``results/runs/<run_id>/``: creating it with ``config.json``, appending one JSON row per evaluated
candidate to ``journal.jsonl`` (flushed and fsynced as each finishes, so a crash loses no finished
row), writing the other files atomically (temp file, then rename), and reading a run back for
``--resume``. It knows nothing about models or metrics.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import RunError
from .files import atomic_write_text

JOURNAL = "journal.jsonl"
CONFIG = "config.json"


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON (NaN is written as null)."""
    atomic_write_text(path, json.dumps(_clean_floats(obj), indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(_clean_floats(r), ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """Read JSON lines; a torn last line (a crash mid-write) is dropped, any other bad line is an error.

    :raises RunError: a line other than the last is not valid JSON (names the file and line).
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines):
                break
            raise RunError(f"{path}:{i}: not valid JSON ({err.msg}); the journal is damaged") from err
    return rows


def _clean_floats(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def make_run_id(model: str, targets: list[str], mode: str, *, now: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS-<model>-<targets>-<mode>``, filesystem-safe."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{'+'.join(targets) or 'none'}-{mode}").strip("-")
    return f"{stamp}-{slug}"[:120]


class RunDir:
    """One run directory: config, journal, samples, best prompts, results, exports and report.

    :param path: the directory; created by :meth:`create`, opened by :meth:`open`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._journal_rows: list[dict] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_root: Path, run_id: str, config: dict) -> RunDir:
        """Make ``runs_root/run_id`` with ``config.json``.

        :raises RunError: the directory exists already (pick another id or ``--resume`` it).
        """
        path = Path(runs_root) / run_id
        if path.exists():
            raise RunError(f"run directory {path} exists already; resume it with --resume {path}")
        (path / "samples").mkdir(parents=True)
        run = cls(path)
        atomic_write_json(path / CONFIG, {"run_id": run_id, **config})
        (path / JOURNAL).touch()
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """Open an existing run directory for ``--resume``.

        :raises RunError: it is not a run directory (no ``config.json``).
        """
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path} is not a tp-harness run directory (no {CONFIG}); pass results/runs/<run_id>")
        return cls(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def config(self) -> dict:
        """The run's ``config.json``."""
        try:
            return json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{self.path / CONFIG}: cannot read the run config: {err}") from err

    # -- journal --------------------------------------------------------------------------------
    def journal(self) -> list[dict]:
        """All journal rows, in order (cached after the first read; appends update the cache)."""
        if self._journal_rows is None:
            self._journal_rows = read_jsonl(self.path / JOURNAL)
            self._repair_torn_tail()
        return self._journal_rows

    def _repair_torn_tail(self) -> None:
        """Make the file end on a line boundary after a crash: a complete last row that lacks its newline
        gets one; a partial last line (not valid JSON) is cut, as :func:`read_jsonl` ignored it."""
        path = self.path / JOURNAL
        data = path.read_bytes() if path.exists() else b""
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            fixed = data + b"\n"
        except ValueError:
            fixed = data[:cut]
        with path.open("wb") as f:
            f.write(fixed)
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: dict) -> None:
        """Append one row to ``journal.jsonl``, flushed and fsynced before returning."""
        rows = self.journal()
        row = _clean_floats({**row, "ts": round(time.time(), 3)})
        with (self.path / JOURNAL).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        rows.append(row)

    def find(self, **match: Any) -> list[dict]:
        """Journal rows whose fields equal every ``match`` item."""
        return [r for r in self.journal() if all(r.get(k) == v for k, v in match.items())]

    # -- other files ----------------------------------------------------------------------------
    def samples_path(self, task: str, split: str, kind: str) -> Path:
        return self.path / "samples" / f"{task}.{split}.{kind}.jsonl"

    def write_samples(self, task: str, split: str, kind: str, rows: Iterable[dict]) -> None:
        """Write the per-sample records of one final evaluation to ``samples/<task>.<split>.<kind>.jsonl``."""
        write_jsonl(self.samples_path(task, split, kind), rows)

    def read_samples(self, task: str, split: str, kind: str) -> list[dict]:
        """The records written by :meth:`write_samples` (empty if there are none)."""
        return read_jsonl(self.samples_path(task, split, kind))

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``name`` (relative to the run dir) atomically as JSON."""
        path = self.path / name
        atomic_write_json(path, obj)
        return path
