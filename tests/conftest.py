"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def registries():
    """The built-in plugin registries (no external plugins, whatever is installed)."""
    from tp_harness.plugin.manager import build_registries, get_plugin_manager

    return build_registries(get_plugin_manager(entry_points=False))


@pytest.fixture(scope="session")
def embedded_backend(registries):
    """The real embedded default model, loaded once per test session."""
    from tp_harness.runs.runner import build_backend

    return build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16")


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "")  # tests pick their plugins: installed entry points stay out
    if "TP_CACHE_DIR" in os.environ:
        monkeypatch.setenv("TP_CACHE_DIR", os.environ["TP_CACHE_DIR"])
