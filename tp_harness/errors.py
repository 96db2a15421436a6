"""The exception hierarchy: every deliberate, user-facing error of tp-harness.

Each message says what was wrong, where (file:line, field, plugin, task, split) and what to do.
The CLI prints ``str(err)`` without a traceback and exits with ``err.exit_code``; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class TpHarnessError(Exception):
    """Base class of every deliberate tp-harness error; ``str(err)`` is shown to the user."""

    exit_code: int = 1


class SpecError(TpHarnessError):
    """A task spec is broken: names the file, the line where known, the dotted field and the problem."""

    exit_code = 2

    def __init__(self, path: str | Path, field: str, problem: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {field}: {problem}")
        self.path = Path(path)
        self.field = field
        self.line = line
        self.problem = problem


class DataError(TpHarnessError):
    """A data file or one of its rows is malformed: names the file, the line and what was expected."""

    exit_code = 2

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line


class BackendError(TpHarnessError):
    """A backend cannot be built or cannot answer. Says which backend, what failed and what to do."""

    def __init__(self, backend: str, problem: str, fix: str) -> None:
        super().__init__(f"backend {backend!r}: {problem}\n  to fix: {fix}")
        self.backend = backend


class MetricInputError(TpHarnessError, ValueError):
    """A metric got inputs of the wrong shape, length or range."""


class RegistryError(TpHarnessError):
    """Base class of plugin registry errors."""


class DuplicateNameError(RegistryError):
    """Two plugins registered the same name in one registry; names both plugins and their distributions.

    ``first_dist`` / ``second_dist`` are ``"name version"`` of the installed distribution each plugin
    came from (``None``: a module that no installed distribution provides).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        first: str,
        second: str,
        *,
        first_dist: str | None = None,
        second_dist: str | None = None,
    ) -> None:
        def who(plugin: str, dist: str | None) -> str:
            return f"plugin {plugin!r} (distribution {dist})" if dist else f"plugin {plugin!r}"

        super().__init__(
            f"{kind} {name!r} is registered twice: by {who(first, first_dist)} and by {who(second, second_dist)}; "
            "uninstall or disable one of them (TP_HARNESS_PLUGINS=name,... selects which external plugins load)"
        )
        self.kind, self.name, self.first, self.second = kind, name, first, second
        self.first_dist, self.second_dist = first_dist, second_dist


class PluginError(RegistryError):
    """An external plugin cannot be selected or loaded: names the plugin and what is available."""

    exit_code = 2


class UnknownNameError(RegistryError, KeyError):
    """A name was looked up that no plugin registered; lists the close matches and the valid names."""

    exit_code = 2

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known)) or 'none'}")
        self.kind, self.name = kind, name

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class RunError(TpHarnessError):
    """A run directory cannot be created, read or resumed; names the directory and the problem."""

    exit_code = 2


class UsageError(TpHarnessError):
    """The command line asks for something inconsistent; says which flags and what to use instead."""

    exit_code = 2


class CacheError(TpHarnessError):
    """The response cache cannot be opened, read or written; names the file and how to get past it."""

    exit_code = 2

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"response cache {path}: {problem}; run 'tp-harness cache clear' (it deletes an unreadable "
                         "cache file) or add --no-cache")
        self.path = Path(path)


class RunLockedError(RunError):
    """Another live process holds a run directory's lock; names the holder (pid, host, start time)."""
