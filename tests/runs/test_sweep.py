"""``tp-harness sweep``: planning and run ids (fast), and a tiny real sweep on the embedded model (slow):
a finished run is skipped, a deleted one redone, an interrupted one resumed, and the leaderboard rebuilt."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tp_harness.errors import RunError, UsageError
from tp_harness.runs.runner import OptimizeSettings
from tp_harness.runs.sweep import SweepItem, SweepSettings, plan_sweep, run_state, run_sweep, sweep_run_id


def test_run_ids_are_deterministic_and_filesystem_safe() -> None:
    rid = sweep_run_id("embedded:gemma3-270m", "financial_phrasebank", "no_transfer", budget="smoke", seed=3)
    assert rid == "sweep-embedded-gemma3-270m-financial_phrasebank-no_transfer-smoke-s3"
    assert sweep_run_id("hf", "t/x", "two_stage", budget="light", seed=0) == "sweep-hf-t-x-two_stage-light-s0"
    # the same grid scored in another output type gets its own runs
    assert sweep_run_id("hf", "t", "two_stage", budget="light", seed=0, output_type="generate_until") == \
        "sweep-hf-t-two_stage-light-generate_until-s0"


def test_plan_is_models_x_targets_x_modes_in_order() -> None:
    plan = plan_sweep(SweepSettings(models=["a", "b"], targets=["t1", "t2"], modes=["two_stage", "source_only"]))
    assert [(i.model, i.target, i.mode) for i in plan][:3] == [("a", "t1", "two_stage"), ("a", "t1", "source_only"),
                                                              ("a", "t2", "two_stage")]
    assert len(plan) == 8 and len({i.run_id for i in plan}) == 8


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"modes": ["two-stage"]}, "--modes: two-stage is not a mode; use one of two_stage, no_transfer, source_only"),
    ({"targets": []}, "a sweep needs at least one model"),
    ({"models": ["a", "a"]}, "--models lists a value twice: a,a"),
])
def test_plan_rejects_bad_grids(kwargs, message) -> None:
    settings = {"models": ["a"], "targets": ["t"], **kwargs}
    with pytest.raises(UsageError, match=message):
        plan_sweep(SweepSettings(**settings))


def test_run_state_of_new_partial_finished_and_foreign_directories(tmp_path: Path) -> None:
    item = SweepItem("m", "fpb", "no_transfer", "r")
    run = tmp_path / "r"
    assert run_state(run, item) == "new"
    (run / "samples").mkdir(parents=True)  # killed between mkdir and config.json: nothing recorded, removed
    assert run_state(run, item) == "new" and not run.exists()
    run.mkdir()
    (run / "config.json").write_text("{}", encoding="utf-8")
    (run / "journal.jsonl").write_text("", encoding="utf-8")
    assert run_state(run, item) == "interrupted"
    evals = [{"task": "fpb", "split": "test", "prompt_kind": "original"}]
    (run / "results.json").write_text(json.dumps({"tp": {"evaluations": evals}}), encoding="utf-8")
    assert run_state(run, item) == "interrupted"  # best_target missing: incomplete
    evals.append({"task": "fpb", "split": "test", "prompt_kind": "best_target"})
    (run / "results.json").write_text(json.dumps({"tp": {"evaluations": evals}}), encoding="utf-8")
    assert run_state(run, item) == "finished"
    (run / "results.json").write_text('{"tp": {"evaluations": [', encoding="utf-8")  # torn write
    assert run_state(run, item) == "interrupted"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(RunError, match="exists but is not a tp-harness run directory"):
        run_state(foreign, item)


@pytest.mark.slow
def test_sweep_skips_finished_redoes_deleted_and_resumes_interrupted_runs(tmp_path, registries, caplog, monkeypatch):
    import shutil

    results = tmp_path / "results"
    settings = SweepSettings(models=["embedded:smollm2-135m"], targets=["financial_phrasebank", "legalbench_hearsay"],
                             modes=["no_transfer"], run=OptimizeSettings(budget="smoke", seed=5, results_dir=str(results)))
    ids = [f"sweep-embedded-smollm2-135m-{t}-no_transfer-smoke-s5" for t in settings.targets]
    from tp_harness.reporting import leaderboard, report
    from tp_harness.runs import sweep

    builds = []
    original = leaderboard.write_leaderboard

    def counting(root, *args, **kwargs):
        builds.append(root)
        return original(root, *args, **kwargs)

    # every writer of LEADERBOARD.md calls write_leaderboard: the sweep, and the per-run reporter
    for module in (sweep, report):
        monkeypatch.setattr(module, "write_leaderboard", counting)
    first = run_sweep(settings, registries)
    assert first.executed == ids and not (first.skipped or first.resumed or first.failed)
    assert builds == [results], "a sweep builds the leaderboard once, at its end, not after every run"
    board = (results / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "## financial_phrasebank" in board and "## legalbench_hearsay" in board

    kept, deleted = (results / "runs" / i for i in ids)
    kept_mtime = (kept / "results.json").stat().st_mtime_ns
    kept_rows = (kept / "journal.jsonl").read_text(encoding="utf-8")
    shutil.rmtree(deleted)  # "deleted in the middle of a sweep"
    with caplog.at_level(logging.INFO, logger="tp_harness.runs.sweep"):
        again = run_sweep(settings, registries)
    assert again.executed == [ids[1]] and again.skipped == [ids[0]] and not again.resumed
    assert f"running {ids[1]}" in caplog.text and f"{ids[0]} is finished; skipped" in caplog.text
    assert (deleted / "results.json").is_file()
    assert (kept / "results.json").stat().st_mtime_ns == kept_mtime  # the finished run was not touched
    assert (kept / "journal.jsonl").read_text(encoding="utf-8") == kept_rows

    (deleted / "results.json").unlink()  # interrupted after the journal, before the results
    resumed = run_sweep(settings, registries)
    assert resumed.resumed == [ids[1]] and resumed.skipped == [ids[0]] and not resumed.executed
    assert (deleted / "results.json").is_file()


def test_a_run_made_before_the_rendering_switch_is_not_reused_under_the_new_default(tmp_path: Path) -> None:
    from tp_harness.runs.sweep import _check_same_settings, run_settings

    settings = SweepSettings(models=["m"], targets=["fpb"], modes=["no_transfer"])
    item = plan_sweep(settings)[0]
    run = tmp_path / item.run_id
    run.mkdir()
    legacy = {k: v for k, v in vars(run_settings(settings, item)).items() if k != "apply_chat_template"}
    (run / "config.json").write_text(json.dumps({"settings": legacy}), encoding="utf-8")
    (run / "journal.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(RunError, match=r"made with other settings: apply_chat_template='on' \(sweep: None\)"):
        _check_same_settings(run, run_settings(settings, item))
    on = SweepSettings(models=["m"], targets=["fpb"], modes=["no_transfer"],
                       run=OptimizeSettings(budget="smoke", apply_chat_template="on"))
    _check_same_settings(run, run_settings(on, item))  # the old rendering, asked for: reused


def test_sweep_plans_one_run_per_seed(tmp_path: Path) -> None:
    from tp_harness.runs.sweep import run_settings

    settings = SweepSettings(models=["m"], targets=["fpb"], modes=["two_stage", "no_transfer"], seeds=[0, 2],
                             run=OptimizeSettings(budget="smoke"))
    plan = plan_sweep(settings)
    assert [(i.mode, i.seed) for i in plan] == [("two_stage", 0), ("two_stage", 2), ("no_transfer", 0),
                                                ("no_transfer", 2)]
    assert plan[1].run_id.endswith("-smoke-s2") and run_settings(settings, plan[1]).seed == 2
