"""Tests for the plugin ecosystem: discovery, selection, duplicates, tracing, ``tp-harness plugins``.

The slow test pip-installs the example plugin package (tests/plugins/tp_example_plugin) into the
current environment and drives it through the real CLI on the embedded model; the others use small
in-test plugins registered on a fresh plugin manager.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tp_harness import MetricDef, hookimpl
from tp_harness.entrypoints.cli import main
from tp_harness.errors import DuplicateNameError, PluginError
from tp_harness.plugin.manager import (
    BUILTIN_PLUGINS,
    EntryPointInfo,
    build_registries,
    get_plugin_manager,
    selected_plugins,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PKG = REPO / "tests" / "plugins" / "tp_example_plugin"
EXAMPLE_SPECS = REPO / "tests" / "plugins" / "example_task"
EXAMPLE_ITEMS = {
    ("data_format", "example-lines"), ("metric", "brier"), ("backend", "example-shortest"), ("backend", "example-logged"),
    ("optimizer", "example-greedy"), ("reporter", "example-report"),
}
KINDS = ("data_formats", "metrics", "backends", "optimizers", "reporters")


def _metric(value: float = 0.5) -> MetricDef:
    return MetricDef(compute=lambda records: value, display="X")


class BrierA:
    """An in-test plugin adding metric ``brier``."""

    @hookimpl
    def tp_register_metrics(self, registry):
        registry.add("brier", _metric(0.1))


class BrierB:
    """Another in-test plugin adding metric ``brier``."""

    @hookimpl
    def tp_register_metrics(self, registry):
        registry.add("brier", _metric(0.2))


class AccAgain:
    """An in-test plugin re-adding the built-in metric ``acc``."""

    @hookimpl
    def tp_register_metrics(self, registry):
        registry.add("acc", _metric())


def _items(regs) -> set[tuple[str, str]]:
    return {(kind[:-1], name) for kind in KINDS for name in getattr(regs, kind).names()}


# ----------------------------------------------------------------------------------------------
# Duplicates


@pytest.mark.parametrize("order", [("plugin_a", "plugin_b"), ("plugin_b", "plugin_a")])
def test_two_plugins_adding_one_metric_is_one_error_naming_both(order) -> None:
    pm = get_plugin_manager(entry_points=False)
    plugins = {"plugin_a": BrierA(), "plugin_b": BrierB()}
    for name in order:  # install order must not change the outcome or the message
        pm.register(plugins[name], name=name)
    with pytest.raises(DuplicateNameError) as info:
        build_registries(pm)
    assert str(info.value).startswith(
        "metric 'brier' is registered twice: by plugin 'plugin_a' and by plugin 'plugin_b'; "
        "uninstall or disable one of them (TP_HARNESS_PLUGINS=name,... selects which external plugins load)")
    assert (info.value.first, info.value.second) == ("plugin_a", "plugin_b")


def test_plugin_re_adding_a_builtin_metric_names_the_builtin_distribution() -> None:
    pm = get_plugin_manager(entry_points=False)
    pm.register(AccAgain(), name="acc_again")
    with pytest.raises(DuplicateNameError) as info:
        build_registries(pm)
    message = str(info.value)
    assert "metric 'acc' is registered twice: by plugin 'tp_harness.evaluation.metrics' (distribution tp-harness " in message
    assert "and by plugin 'acc_again';" in message
    assert info.value.first_dist.startswith("tp-harness ") and info.value.second_dist is None


def test_cli_shows_a_duplicate_as_one_message_without_traceback(tmp_path, monkeypatch, capsys) -> None:
    for name, value in (("tp_dup_a", 0.1), ("tp_dup_b", 0.2)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
            from tp_harness import MetricDef, hookimpl

            @hookimpl
            def tp_register_metrics(registry):
                registry.add("brier", MetricDef(compute=lambda records: {value}, display="Brier"))
        """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "tp_dup_b,tp_dup_a")
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tp-harness: error: metric 'brier' is registered twice: by plugin 'tp_dup_a' and by "
                          "plugin 'tp_dup_b'; uninstall or disable one of them")
    assert "Traceback" not in err


def test_two_distributions_declaring_one_entry_point_name_is_an_error(monkeypatch) -> None:
    fake = {"example": [EntryPointInfo("example", "pkg_one", "dist-one", "1.0"),
                        EntryPointInfo("example", "pkg_two", "dist-two", "2.0")]}
    monkeypatch.setattr("tp_harness.plugin.manager.available_entry_points", lambda: fake)
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert str(info.value) == ("entry point 'example' of group 'tp_harness' is declared by several distributions: "
                               "dist-one 1.0 (pkg_one), dist-two 2.0 (pkg_two); uninstall all but one of them")


# ----------------------------------------------------------------------------------------------
# Selection: TP_HARNESS_PLUGINS


def test_selected_plugins_reads_the_environment() -> None:
    assert selected_plugins({}) is None
    assert selected_plugins({"TP_HARNESS_PLUGINS": ""}) == ()
    assert selected_plugins({"TP_HARNESS_PLUGINS": " , "}) == ()
    assert selected_plugins({"TP_HARNESS_PLUGINS": " a, b ,a"}) == ("a", "b")


def test_empty_selection_gives_exactly_the_builtins(monkeypatch) -> None:
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "")
    regs = build_registries()
    entries = [e for kind in KINDS for e in getattr(regs, kind).entries()]
    assert {e.plugin for e in entries} == set(BUILTIN_PLUGINS)
    assert all(e.builtin and e.dist == "tp-harness" and e.version for e in entries)
    assert _items(regs) == _items(build_registries(get_plugin_manager(entry_points=False)))


def test_selected_module_plugin_is_loaded_and_recorded(tmp_path, monkeypatch) -> None:
    (tmp_path / "tp_answer_len.py").write_text(textwrap.dedent('''
        from tp_harness import MetricDef, hookimpl

        def answer_length(records):
            """Mean response length in characters / 100, capped at 1."""
            return min(1.0, sum(len(r.response) for r in records) / max(1, len(records)) / 100)

        @hookimpl
        def tp_register_metrics(registry):
            registry.add("answer_length", MetricDef(compute=answer_length, display="len"))
    '''), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "tp_answer_len")
    entry = build_registries().metrics.entry("answer_length")
    assert (entry.plugin, entry.dist, entry.version, entry.builtin) == ("tp_answer_len", None, None, False)


def test_unknown_selected_name_lists_the_installed_entry_points(monkeypatch) -> None:
    fake = {"example": [EntryPointInfo("example", "tp_example_plugin", "tp-example-plugin", "0.1.0")],
            "other": [EntryPointInfo("other", "other_mod", "other-dist", "2.0")]}
    monkeypatch.setattr("tp_harness.plugin.manager.available_entry_points", lambda: fake)
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "exampel")
    with pytest.raises(PluginError) as info:
        build_registries()
    assert str(info.value) == (
        "TP_HARNESS_PLUGINS names plugin 'exampel', which is neither a 'tp_harness' entry point nor an importable "
        "module; installed entry points: example, other\n"
        "  to fix: pip install the plugin's package, or drop 'exampel' from TP_HARNESS_PLUGINS")
    assert info.value.exit_code == 2


# ----------------------------------------------------------------------------------------------
# Tracing and listing


def test_trace_env_logs_every_hook_call_with_its_plugin(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tp_harness.plugin.manager")
    monkeypatch.setenv("TP_HARNESS_TRACE_PLUGINS", "1")
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "")
    build_registries()
    trace = "\n".join(r.getMessage() for r in caplog.records if r.name == "tp_harness.plugin.manager")
    for hook in ("tp_register_data_formats", "tp_register_metrics", "tp_register_backends", "tp_register_optimizers",
                 "tp_register_reporters"):
        assert f"{hook} [hook]" in trace and f"finish {hook} -->" in trace
    assert "<Registry metric: 0 entries, adding as plugin 'tp_harness.evaluation.metrics'>" in trace


def test_no_trace_without_the_env_var(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tp_harness.plugin.manager")
    monkeypatch.delenv("TP_HARNESS_TRACE_PLUGINS", raising=False)
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "")
    build_registries()
    assert not [r for r in caplog.records if "[hook]" in r.getMessage()]


def _cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    for key in ("TP_HARNESS_PLUGINS", "TP_HARNESS_TRACE_PLUGINS"):
        if key not in extra:
            env.pop(key, None)
    return env


def _tp(*args: str, env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tp_harness", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_trace_env_traces_the_cli_to_stderr(tmp_path) -> None:
    proc = _tp("plugins", env=_cli_env(TP_HARNESS_PLUGINS="", TP_HARNESS_TRACE_PLUGINS="1"), cwd=tmp_path,
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tp-harness plugin trace:   tp_register_metrics [hook]" in proc.stderr  # to stderr, no logging level changed
    assert "adding as plugin 'tp_harness.reporting.report'" in proc.stderr


def test_plugins_command_table_and_json(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "")
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "kind", "name", "plugin", "distribution", "version", "built-in"]
    row = next(line for line in lines if "| results-json " in line)
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["reporter", "results-json", "tp_harness.interop.export",
                                                                  "tp-harness"]
    assert main(["plugins", "--format", "json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert {(i["kind"], i["name"]) for i in items} >= {("reporter", "results-json"), ("reporter", "plots"),
                                                       ("reporter", "markdown-report"), ("reporter", "leaderboard")}
    assert all(i["builtin"] is True and i["distribution"] == "tp-harness" and i["description"] for i in items)


# ----------------------------------------------------------------------------------------------
# The example plugin package, really installed


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install tests/plugins/tp_example_plugin (a copy, so no build files land in the repo); uninstall after."""
    src = tmp_path_factory.mktemp("example-plugin") / "tp_example_plugin"
    shutil.copytree(EXAMPLE_PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    proc = subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-q", str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    importlib.invalidate_caches()
    try:
        yield "tp-example-plugin"
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", "tp-example-plugin"], capture_output=True, text=True,
                       timeout=300)
        sys.modules.pop("tp_example_plugin", None)
        importlib.invalidate_caches()


@pytest.mark.slow
def test_installed_example_plugin_end_to_end(installed_example, tmp_path) -> None:
    env = _cli_env()  # TP_HARNESS_PLUGINS unset: every entry point loads
    # tp-harness plugins: all five contributions, from the installed distribution
    proc = _tp("plugins", "--format", "json", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    mine = [i for i in items if i["plugin"] == "example"]
    assert {(i["kind"], i["name"]) for i in mine} == EXAMPLE_ITEMS
    assert all(i["distribution"] == installed_example and i["version"] == "0.1.0" and not i["builtin"]
               for i in mine)
    table = _tp("plugins", env=env, cwd=tmp_path, timeout=120)
    assert table.returncode == 0 and "| example-greedy " in table.stdout and "tp-example-plugin" in table.stdout

    # selection: the entry-point name loads it; "" gives exactly the built-ins (in process and in the CLI)
    only = _tp("plugins", "--format", "json", env=_cli_env(TP_HARNESS_PLUGINS="example"), cwd=tmp_path, timeout=120)
    assert {(i["kind"], i["name"]) for i in json.loads(only.stdout) if i["plugin"] == "example"} == EXAMPLE_ITEMS
    none = _tp("plugins", "--format", "json", env=_cli_env(TP_HARNESS_PLUGINS=""), cwd=tmp_path, timeout=120)
    builtin_items = _items(build_registries(get_plugin_manager(entry_points=False)))
    assert {(i["kind"], i["name"]) for i in json.loads(none.stdout)} == builtin_items
    assert all(i["builtin"] for i in json.loads(none.stdout))
    assert _items(build_registries(get_plugin_manager())) == builtin_items | EXAMPLE_ITEMS  # in process too

    # evaluate: the plugin's data format and metric on the embedded model
    proc = _tp("evaluate", "--specs", str(EXAMPLE_SPECS), "--task", "example_task", "--limit", "8",
               env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task example_task (multiple_choice), split test, n=8, model embedded:smollm2-135m" in proc.stdout
    assert "other metrics: brier=0." in proc.stdout

    # optimize: the plugin's optimizer on the plugin's task; its reporter writes into the run directory
    results_dir = tmp_path / "results"
    proc = _tp("optimize", "--specs", str(EXAMPLE_SPECS), "--target", "example_task",
               "--optimizer", "example-greedy", "--optimizer-option", "rewrites=3", "--budget", "smoke",
               "--results-dir", str(results_dir), "--run-id", "example-run", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = results_dir / "runs" / "example-run"
    assert "example-greedy (example_task)" in proc.stderr  # its progress bar
    journal = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text(encoding="utf-8").splitlines()]
    rewrites = [r for r in journal if r["stage"] == "target" and r["proposer"] == "example-greedy"]
    assert len(rewrites) == 3 and all("brier" in r["metrics"] for r in rewrites)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    # the optimizer's mode (OptimizerDef.mode) was decided before the run: config.json and results.json agree
    assert config["mode"] == results["tp"]["mode"] == "no_transfer" and config["settings"]["mode"] == "two_stage"
    assert config["settings"]["optimizer_options"] == {"rewrites": "3"}
    kinds = {ev["prompt_kind"]: ev for ev in results["tp"]["evaluations"]}
    assert set(kinds) == {"original", "best_target"}
    assert all(0.0 <= ev["metrics"]["brier"] <= 1.0 for ev in kinds.values())
    assert results["higher_is_better"]["example_task__tp_original"]["brier"] is False
    report = (run_dir / "example_report.txt").read_text(encoding="utf-8")
    assert report.startswith("example report of run example-run (model embedded:smollm2-135m)")
    assert "example_task\toriginal\tn=8\tcomposite=" in report and "\tbrier=0." in report
    for name in ("report.md", "trajectory.png", "reliability.png"):  # built-in reporters ran as well
        assert (run_dir / name).is_file(), name
    assert (results_dir / "LEADERBOARD.md").is_file()
    refused = _tp("optimize", "--specs", str(EXAMPLE_SPECS), "--target", "example_task", "--optimizer",
                  "example-greedy", "--optimizer-option", "rewrite=1", "--results-dir", str(results_dir),
                  env=env, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "tp-harness: error: --optimizer-option: optimizer 'example-greedy' does not read 'rewrite'; it reads: rewrites")


@pytest.mark.slow
def test_the_example_backend_extends_a_builtin_without_changing_it(installed_example, caplog) -> None:
    """``example-logged`` wraps the built-in embedded backend through the public API: the same scores, its own
    identity, every request passed through its model; the built-in wrapper is untouched."""
    import tp_harness

    regs = build_registries(get_plugin_manager())
    caplog.set_level(logging.INFO, logger="tp_example_plugin")
    logged = tp_harness.evaluate("example_task", spec_dirs=[EXAMPLE_SPECS], limit=8, model="example-logged",
                                 registries=regs, cache=False)
    builtin = tp_harness.evaluate("example_task", spec_dirs=[EXAMPLE_SPECS], limit=8, registries=regs, cache=False)
    assert logged.metrics["acc"] == builtin.metrics["acc"]
    assert logged.metrics["composite"] == pytest.approx(builtin.metrics["composite"], abs=1e-3)  # lm-eval vs prefix
    assert any("example-logged: " in r.getMessage() and "loglikelihood requests" in r.getMessage()
               for r in caplog.records)
    backend = tp_harness.build_backend("example-logged", registries=regs)
    plain = tp_harness.build_backend("embedded:smollm2-135m", registries=regs)
    assert backend.identity["wrapped_by"] == "example-logged" and "wrapped_by" not in plain.identity
    assert backend.lm.inner is plain.lm and plain.fast_loglikelihood is not None  # one model, the built-in intact


def test_the_deprecated_tp_register_tasks_hook_still_registers_a_data_format_and_warns() -> None:
    from tp_harness import DataFormatDef, hookimpl

    class OldPlugin:
        @hookimpl
        def tp_register_tasks(self, registry):
            registry.add("old-lines", DataFormatDef(load=lambda path: iter(())))

    pm = get_plugin_manager(entry_points=False)
    with pytest.warns(DeprecationWarning, match="implement tp_register_data_formats instead"):
        pm.register(OldPlugin(), name="old")
    regs = build_registries(pm)
    assert "old-lines" in regs.data_formats and regs.tasks is regs.data_formats
    assert regs.data_formats.entry("old-lines").plugin == "old"
