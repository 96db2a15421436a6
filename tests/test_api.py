"""The public API (issue 14): one surface in ``tp_harness.__all__``, typed signatures, and docs/api.md's example run."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import tp_harness
from tp_harness import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_in_all_resolves() -> None:
    for name in tp_harness.__all__:
        assert getattr(tp_harness, name) is not None, name


@pytest.mark.parametrize("func", [tp_harness.evaluate, tp_harness.optimize, tp_harness.build_backend])
def test_entry_points_are_typed_without_kwargs(func) -> None:
    sig = inspect.signature(func)
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), func.__name__
    assert sig.return_annotation is not inspect.Signature.empty
    assert func.__doc__ and ":raises" in func.__doc__


@pytest.mark.parametrize(("call", "message"), [
    (lambda: tp_harness.evaluate("commonsenseqa", limit=0), "limit=0: pass an int >= 1"),
    (lambda: tp_harness.evaluate("commonsenseqa", split="train"), "split='train' is not one of"),
    (lambda: tp_harness.evaluate("commonsenseqa", batch_size="16"), "batch_size='16': pass a positive int or 'auto'"),
    (lambda: tp_harness.evaluate("commonsenseqa", model_args={"pretrained": "a,b"}), "cannot be passed as a model"),
    (lambda: tp_harness.optimize(targets="financial_phrasebank"), "targets: pass a list of task names"),
    (lambda: tp_harness.optimize(mode="two-stage"), "mode='two-stage' is not one of"),
    (lambda: tp_harness.optimize(reference_share=2), "reference_share=2: pass a number in \\[0, 1\\]"),
    (lambda: tp_harness.optimize(budget="tiny"), "--budget 'tiny' is not a budget"),
])
def test_bad_arguments_are_refused_before_a_model_loads(call, message, tmp_path, monkeypatch) -> None:
    from tp_harness.backends import hf

    monkeypatch.chdir(tmp_path)
    loads = hf.LOAD_COUNT["hflm"]
    with pytest.raises(UsageError, match=message):
        call()
    assert hf.LOAD_COUNT["hflm"] == loads


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _public_names_used(source: str) -> set[str]:
    """Names taken from ``tp_harness`` by ``from tp_harness... import`` and ``tp_harness.X`` (any module path)."""
    used = set()
    for module, grouped, names in re.findall(r"^\s*from (tp_harness[\w.]*) import (?:\(([^)]*)\)|([\w, ]+))",
                                             source, flags=re.M):
        names = grouped or names
        assert module == "tp_harness", f"imports from {module}"
        used |= {n.strip() for n in names.replace("\n", ",").split(",") if n.strip()}
    used |= set(re.findall(r"\btp_harness\.(\w+)", source)) - {"__all__"}
    return used


def test_docs_and_the_example_plugin_import_only_the_public_surface() -> None:
    """docs/plugins.md's and docs/api.md's code and the example plugin use nothing but names in tp_harness.__all__."""
    public = set(tp_harness.__all__)
    sources = [*_python_blocks(ROOT / "docs" / "plugins.md"), *_python_blocks(ROOT / "docs" / "api.md"),
               (ROOT / "tests/plugins/tp_example_plugin/tp_example_plugin/__init__.py").read_text(encoding="utf-8")]
    for source in sources:
        assert _public_names_used(source) <= public, _public_names_used(source) - public


def test_the_docs_example_runs(tmp_path, monkeypatch, capsys) -> None:
    """docs/api.md's example, verbatim, on the embedded model in an empty directory."""
    (block,) = _python_blocks(ROOT / "docs" / "api.md")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/api.md", "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    assert "multiple_choice: ACC" in out and "best prompt:" in out and "test composite" in out
    (run_dir,) = (tmp_path / "api-example" / "runs").iterdir()
    assert (run_dir / "results.json").is_file() and (tmp_path / "api-example" / "LEADERBOARD.md").is_file()
