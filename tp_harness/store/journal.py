"""The run directory and its append-only journal; resume.

Owns ``results/runs/<run_id>/``: creating it with ``config.json``, appending one JSON row per evaluated
candidate to ``journal.jsonl`` (flushed and fsynced as each finishes, so a crash loses no finished
row), writing the other files atomically (temp file, then rename), reading a run back for
``--resume``, and the run's lock: one writer per run directory (``run.lock``, an exclusive ``flock`` held
for the whole run, holding the writer's pid, host and start time; the kernel drops it when the writer
dies, so a dead writer's lock is taken over). Errors on these files name the path and what to do. It
knows nothing about models or metrics.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tp_harness.errors import RunError, RunLockedError
from tp_harness.files import atomic_write_text as _atomic_write_text

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
CONFIG = "config.json"
LOCK = "run.lock"


def _os_problem(path: Path, err: OSError, what: str) -> RunError:
    """A :class:`RunError` for an OS error on a run file: the path, the reason and what to do."""
    fix = {errno.ENOSPC: "free disk space, then continue with --resume on the run directory",
           errno.EDQUOT: "free disk quota, then continue with --resume on the run directory",
           errno.EACCES: "check the permissions of the results directory",
           errno.EROFS: "pass a writable --results-dir"}.get(err.errno or 0, "check the path and its permissions")
    return RunError(f"{err.filename or path}: cannot {what} ({err.strerror or err}); {fix}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, as :func:`tp_harness.files.atomic_write_text` does.

    :raises RunError: the file cannot be written (names the path and what to do, e.g. free disk space).
    """
    try:
        _atomic_write_text(path, text)
    except OSError as err:
        raise _os_problem(path, err, "write") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON (NaN is written as null)."""
    atomic_write_text(path, json.dumps(_clean_floats(obj), indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(_clean_floats(r), ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """Read JSON lines; a torn last line (a crash mid-write) is dropped, any other bad line is an error.

    :raises RunError: a line other than the last is not valid JSON, the file is not UTF-8 text (names the
        file and line), or it cannot be read.
    """
    if not path.is_file():
        return []
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _os_problem(path, err, "read") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise RunError(f"{path}:{line}: not UTF-8 text ({err.reason}); the file is damaged: restore it from a "
                       "backup or delete the run directory and run again") from None
    lines = text.splitlines()
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


def _read_holder(path: Path) -> dict[str, Any]:
    """The holder record of a lock file (``{}`` when empty or unreadable)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (its record is not written yet)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started_utc', '?')}"
            f"{', this host' if holder.get('host') == socket.gethostname() else ''})")


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
        self._lock_fd: int | None = None
        #: fields added to every appended row (the runner stamps the scorer's fingerprint here)
        self.row_defaults: dict[str, Any] = {}

    # -- the writer's lock ------------------------------------------------------------------------
    def lock(self) -> None:
        """Become the run's only writer: take ``run.lock`` exclusively (non-blocking) and record who holds it.

        The lock is a ``flock`` on the file: the kernel releases it when the holder exits or is killed, so a
        lock left by a dead process is free and is taken over (its record is replaced, the take-over logged).
        Held until :meth:`unlock` or the process ends. Re-locking an already locked ``RunDir`` does nothing.

        :raises RunLockedError: another live process holds it (names its pid, host and start time).
        :raises RunError: the lock file cannot be created.
        """
        if self._lock_fd is not None:
            return
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies, as for every run file
        except OSError as err:
            raise _os_problem(path, err, "create the run lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _os_problem(path, err, "lock") from None
            holder = _read_holder(path)
            raise RunLockedError(
                f"run directory {self.path} is in use by {_describe_holder(holder)}; only one process may write a "
                "run: wait for it to finish (or stop it), then --resume again") from None
        previous = _read_holder(path)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            log.warning("taking over the lock of %s: that process ended without releasing it (killed or crashed); "
                        "its finished rows are kept", _describe_holder(previous))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the run's lock and clear its record (a record left behind means a writer died holding it).
        Safe to call when not locked."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:  # a full disk cannot stop the release
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the run's lock."""
        return self._lock_fd is not None

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_root: Path, run_id: str, config: dict) -> RunDir:
        """Make ``runs_root/run_id`` with ``config.json``.

        :raises RunError: the directory exists already (pick another id or ``--resume`` it).
        """
        path = Path(runs_root) / run_id
        if path.exists():
            raise RunError(f"run directory {path} exists already; resume it with --resume {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            raise RunError(f"run directory {path} exists already; resume it with --resume {path}") from None
        except OSError as err:
            raise RunError(f"{err.filename or path}: cannot create the run directory ({err.strerror}); pass a "
                           "--results-dir that is a writable directory") from None
        run = cls(path)
        run.lock()
        try:
            (path / "samples").mkdir()
            atomic_write_json(path / CONFIG, {"run_id": run_id, **config})
            (path / JOURNAL).touch()
        except OSError as err:
            raise _os_problem(path, err, "write the run directory") from None
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
        """The run's ``config.json``.

        :raises RunError: it cannot be read, is not UTF-8 JSON or is not a JSON object.
        """
        try:
            config = json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RunError(f"{self.path / CONFIG}: cannot read the run config: {err}") from None
        if not isinstance(config, dict):
            raise RunError(f"{self.path / CONFIG}: cannot read the run config: expected a JSON object")
        return config

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
        row = _clean_floats({**self.row_defaults, **row, "ts": round(time.time(), 3)})
        path = self.path / JOURNAL
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise _os_problem(path, err, "append to the journal") from None
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
