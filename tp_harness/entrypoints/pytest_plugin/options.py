"""Command-line options and ini keys of the pytest plugin (``--tp-model`` ...), read flag over ini."""


from __future__ import annotations

from typing import Any

import pytest

PROMPT_KINDS = ("original", "best")
WORST_SAMPLES = 3

# option name -> (ini type, default, help)
_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "tp_model": ("string", None, "scorer LLM to gate, e.g. embedded:smollm2-135m, hf, vllm; enables spec collection"),
    "tp_model_args": ("string", "", "model arguments, e.g. pretrained=./my-model,dtype=bfloat16"),
    "tp_reference_model": ("string", None, "reference LLM for --tp-optimize (default: the scorer LLM)"),
    "tp_tasks": ("string", None, "comma-separated task names or globs to gate (default: all specs)"),
    "tp_specs": ("paths", [], "spec directories to collect (default: <rootdir>/task_specs, else the shipped specs)"),
    "tp_limit": ("string", None, "evaluate at most N test docs per task"),
    "tp_budget": ("string", "smoke", "budget of --tp-optimize runs (smoke, light, medium, heavy)"),
    "tp_cache_dir": ("string", None, "model and response cache directory (sets TP_CACHE_DIR)"),
    "tp_results_dir": ("string", "results", "results directory holding runs/<run_id>/ with stored best prompts"),
    "tp_optimize": ("bool", False, "run a smoke optimization when no stored best prompt exists"),
    "tp_apply_chat_template": ("string", None, "render with the scorer's chat template: auto, on or off "
                               "(default: each spec's tp.apply_chat_template, else auto: off for multiple_choice)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tp-harness", "tp-harness prompt gates")
    for name, (kind, default, help_text) in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=name, help=help_text)
        elif kind == "paths":
            group.addoption(flag, action="append", default=None, dest=name, metavar="DIR", help=help_text)
        else:
            group.addoption(flag, default=None, dest=name, help=help_text)
        parser.addini(name, help_text, type=kind, default=default)


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


