"""Repository-level pytest configuration.

The tp-harness pytest plugin (``tp_harness.entrypoints.pytest_plugin``, entry point ``pytest11``) is active here as it
is in any project that installs tp-harness: ``pytest -m tp --tp-model=embedded:smollm2-135m --tp-limit 8``
at this root gates every spec in ``task_specs/`` (``tp_specs`` in pyproject.toml) against the best prompts
stored under ``results/`` (``tp_results_dir``). Without ``--tp-model`` it collects nothing, so the plain
test command below runs only ``tests/``.

The shared embedded-model cache: tests use ``$TP_CACHE_DIR`` when it is set (CI sets it), else the
user's default cache, so the GGUF -> safetensors conversion happens once per machine, not per test.

``pytester`` (for the plugin's own tests) is enabled in pyproject.toml (``addopts = "-p pytester"``), not here:
a ``pytest_plugins`` line in this file would break ``pytest --tp-model=...`` run from another directory, which
collects the shipped specs beside this file and so loads it as a non-root conftest.
"""
