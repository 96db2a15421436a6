"""The response cache: never run the same (model, request) twice, across runs and processes.

Owns one SQLite database in WAL mode (``$TP_CACHE_DIR/responses.sqlite``, default
``~/.cache/tp_harness``) and the cache key (DESIGN.md section 4): a sha256 over the backend name, the
model identity (checkpoint path or name, revision, dtype, GGUF sha256), the chat template hash, the
request type, the request arguments (context and continuation, or context and generation settings) and,
for sampled generations, the rollout (seed, index). Errors and empty generations are never stored.
Several processes may read and write one database at once: writes are single ``INSERT OR IGNORE``
transactions, readers never block writers (WAL), and a busy database is retried for up to 60 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonlines

from tp_harness.errors import CacheError
from tp_harness.files import default_cache_dir  # noqa: F401  (re-exported: the cache root)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request_type TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
@contextlib.contextmanager
def _cache_errors(path: Path) -> Iterator[None]:
    """Turn sqlite and OS errors on the cache file at ``path`` into one :class:`CacheError`."""
    try:
        yield
    except sqlite3.Error as err:
        raise CacheError(path, f"unreadable ({type(err).__name__}: {err})") from None
    except OSError as err:
        raise CacheError(path, f"cannot use {err.filename or path} ({err.strerror or err})") from None


_CHUNK = 500  # keys per SELECT (SQLite's variable limit is 32766; smaller chunks keep statements cheap)


def model_key(identity: Mapping[str, Any]) -> str:
    """A short, stable id of a model identity dict (16 hex chars); the ``model`` column of the cache."""
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True, default=str).encode()).hexdigest()[:16]


def request_key(identity: Mapping[str, Any], request_type: str, arguments: Sequence[Any],
                rollout: tuple[int, int] | None = None) -> str:
    """The cache key of one request: sha256 hex over model identity, request type, arguments and rollout.

    :param identity: the backend's identity (backend, checkpoint or name, revision, dtype, chat template).
    :param request_type: ``loglikelihood`` or ``generate_until``.
    :param arguments: lm-eval ``Instance.arguments``: ``(context, continuation)`` or ``(context, gen_kwargs)``.
    :param rollout: ``(seed, index)`` for sampled generations (``do_sample``), None for deterministic ones.
    """
    payload = {"v": SCHEMA_VERSION, "model": dict(identity), "type": request_type,
               "args": list(arguments), "rollout": list(rollout) if rollout else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CacheStats:
    """Counters of one process's use of the cache: ``hits`` served from disk, ``misses`` computed."""

    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, int]:
        """``{"hits", "misses"}`` counted by this process."""
        return {"hits": self.hits, "misses": self.misses}


class ResponseCache:
    """A SQLite (WAL) store of scorer and reference responses keyed by :func:`request_key`.

    Values are JSON: ``[loglikelihood, is_greedy]`` for loglikelihood, the string for generate_until.
    :param path: the database file; its folder is created. Safe to share between processes.
    :raises CacheError: the folder cannot be created, or the file cannot be opened or is not a SQLite database
        (the message suggests ``tp-harness cache clear`` or ``--no-cache``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stats = CacheStats()
        self._local = threading.local()
        with self._guard():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.executescript(_SCHEMA)

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return _cache_errors(self.path)

    @staticmethod
    def remove_files(path: str | Path) -> list[Path]:
        """Delete a cache database and its WAL and shared-memory files; :return: the paths deleted."""
        path = Path(path)
        gone = []
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if p.is_file():
                p.unlink()
                gone.append(p)
        return gone

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The stored values of ``keys`` that are present (decoded from JSON), by key."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, Any] = {}
        with self._guard():
            con = self._connect()
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, value in con.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk):
                    out[key] = json.loads(value)
        return out

    def put_many(self, rows: Iterable[tuple[str, str, str, Any]]) -> int:
        """Store ``(key, model, request_type, value)`` rows in one transaction; existing keys are kept.

        Empty generations (``""``) and None values are skipped: they are never cached.
        :return: the number of rows offered for storing (after skipping).
        """
        now = time.time()
        data = [(k, m, t, json.dumps(v), now) for k, m, t, v in rows if v is not None and v != ""]
        if not data:
            return 0
        with self._guard():
            con = self._connect()
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("INSERT OR IGNORE INTO responses (key, model, request_type, value, created) "
                                "VALUES (?, ?, ?, ?, ?)", data)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(data)

    def export_shard(self, path: str | Path, *, since: float = 0.0) -> int:
        """Write the entries stored at or after ``since`` (a ``time.time()``) to ``path`` as JSON lines.

        A shard carries a worker's new responses from its node-local cache to the central one (SQLite's WAL
        needs every process of a database on one host, so a cluster never shares one database over a network
        filesystem). Written atomically; :return: the number of entries written (0: no file is written).
        """
        rows = self._connect().execute(
            "SELECT key, model, request_type, value, created FROM responses WHERE created >= ? ORDER BY key",
            (since,)).fetchall()
        if not rows:
            return 0
        from tp_harness.files import atomic_path

        with atomic_path(Path(path)) as tmp, jsonlines.open(tmp, mode="w") as writer:
            writer.write_all({"key": k, "model": m, "request_type": t, "value": v, "created": c}
                             for k, m, t, v, c in rows)
        return len(rows)

    def merge_shard(self, path: str | Path) -> int:
        """Add a shard's entries (:meth:`export_shard`) with ``INSERT OR IGNORE``: keys are content hashes, so an
        entry already present is the same response and is kept; merging a shard twice changes nothing.

        :return: the number of entries added.
        :raises ValueError: a line of the shard is not a cache entry (names the file and line).
        """
        data = []
        with jsonlines.open(path) as reader:
            for line, row in enumerate(reader, 1):
                try:
                    data.append((str(row["key"]), str(row["model"]), str(row["request_type"]), str(row["value"]),
                                 float(row["created"])))
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{path}:{line}: not a cache entry ({err})") from err
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            before = con.total_changes
            con.executemany("INSERT OR IGNORE INTO responses (key, model, request_type, value, created) "
                            "VALUES (?, ?, ?, ?, ?)", data)
            added = con.total_changes - before
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return added

    def summary(self) -> dict[str, Any]:
        """What is stored: the file, its size in bytes, the entry count and counts per (model, request type)."""
        with self._guard():
            con = self._connect()
            rows = con.execute("SELECT model, request_type, COUNT(*) FROM responses GROUP BY model, request_type "
                               "ORDER BY model, request_type").fetchall()
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {"path": str(self.path), "bytes": size, "entries": sum(r[2] for r in rows),
                "by_model": [{"model": m, "request_type": t, "entries": n} for m, t, n in rows]}

    def clear(self, model: str | None = None) -> int:
        """Delete every entry (or those of one ``model`` key); :return: how many were deleted."""
        with self._guard():
            con = self._connect()
            if model:
                cur = con.execute("DELETE FROM responses WHERE model = ?", (model,))
            else:
                cur = con.execute("DELETE FROM responses")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cur.rowcount

    def close(self) -> None:
        """Close this thread's SQLite connection (others close with their threads)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


_OPEN: dict[str, ResponseCache] = {}


def open_cache(directory: str | Path | None = None) -> ResponseCache:
    """The process-wide :class:`ResponseCache` of ``directory`` (default :func:`default_cache_dir`).

    :raises CacheError: the directory is a file or cannot be created, or the database is unreadable.
    """
    path = (Path(directory) if directory else default_cache_dir()) / "responses.sqlite"
    key = str(path.resolve())
    if key not in _OPEN:
        _OPEN[key] = ResponseCache(path)
    return _OPEN[key]
