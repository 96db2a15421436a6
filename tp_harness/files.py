"""Files that tp-harness writes: atomically (temp file, then ``os.replace``) and with the umask's mode.

Owns the one way every run file, report, plot, export and cache entry is written, so that a crash never
leaves a half-written file and a results folder shared by a team or uploaded as a CI artifact is readable by
others (``tempfile`` creates 0600 files; these get ``0o666 & ~umask``, 0644 under umask 022).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "content_key", "default_cache_dir", "default_dir_mode",
           "default_file_mode", "memo_path"]


def default_cache_dir() -> Path:
    """``$TP_CACHE_DIR``, else ``~/.cache/tp_harness``, ``~`` expanded: the one cache root (response cache,
    converted embedded models, GGUF files, fetched wheels, and the memos of :func:`memo_path`)."""
    return Path(os.environ.get("TP_CACHE_DIR") or Path.home() / ".cache" / "tp_harness").expanduser()


def content_key(*parts: object) -> str:
    """sha256 hex of ``repr(parts)``: a key that changes with any of the parts (plain data: str, numbers, None,
    and tuples, lists and dicts of them, whose ``repr`` is exact and stable)."""
    import hashlib

    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()


def memo_path(kind: str, key: str, suffix: str = "") -> Path:
    """Where the cache keeps a memo of ``kind`` (``doc_checks``, ``plots``) under ``key``: a file whose
    presence or content a later run with the same inputs reuses instead of recomputing it (a warm re-run).
    ``tp-harness cache clear`` removes them with the responses."""
    return default_cache_dir() / "memos" / kind / f"{key}{suffix}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a newly created file gets under the process umask: ``0o666 & ~umask`` (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode a newly created directory gets under the process umask: ``0o777 & ~umask`` (0o755 under 022)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s directory; on success it replaces ``path`` atomically (``os.replace``).

    The file gets :func:`default_file_mode`, as ``open(path, "w")`` would give it. On any error the temp file
    is removed and ``path`` is left as it was. A missing parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in the same directory; see :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
