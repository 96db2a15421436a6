"""``tp-harness sweep --executor ray`` on local Ray clusters started by the tests (extra ``tp-harness[ray]``).

- The same sweep (smollm2, smoke, 2 targets x 2 modes) on Ray and sequentially: the same results.json metrics and
  the same leaderboard.
- A worker that dies (``os._exit``) after k journal rows is retried; the run finishes with the uninterrupted run's
  results and a journal with no row duplicated or lost.
- A node removed mid-run (``ray.cluster_utils.Cluster``): the group is re-scheduled on a new node and finishes.
- Packing: three model groups asking for a custom resource with 2 slots: two run at once, the third waits.
- GPUs asked of a CPU-only cluster: one clear error, at once. Cache shards merge idempotently.

Test doubles: worker setup hooks (shipped to the workers by value) kill a worker, or slow a group down, the way a
failing machine or a long run would; everything else is the real sweep on the real embedded model.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tp_harness.errors import UsageError  # noqa: E402
from tp_harness.runs.runner import OptimizeSettings  # noqa: E402
from tp_harness.runs.sweep import SweepSettings, run_sweep  # noqa: E402
from tp_harness.runs.sweep_ray import RayOptions, check_cluster, group_by_model, run_sweep_on_ray  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "embedded:smollm2-135m"
GRID = SweepSettings(models=[MODEL], targets=["financial_phrasebank", "legalbench_hearsay"],
                     modes=["two_stage", "no_transfer"], run=OptimizeSettings(budget="smoke", seed=0))

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the setup hooks below travel by value


def _worker_env(**extra: str) -> dict:
    env = {"TP_HARNESS_PLUGINS": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    if os.environ.get("TP_CACHE_DIR"):
        env["TP_CACHE_DIR"] = os.environ["TP_CACHE_DIR"]
    return env


@pytest.fixture
def fresh_ray():
    """Tears down whatever Ray instance a test started."""
    yield
    ray.shutdown()


def _metrics(results_dir: Path) -> dict:
    out = {}
    for path in sorted((results_dir / "runs").glob("*/results.json")):
        data = json.loads(path.read_text())
        out[path.parent.name] = {(e["task"], e["prompt_kind"], e["split"]): (e["prompt"], e["metrics"])
                                 for e in data["tp"]["evaluations"]}
    return out


def _journal_keys(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]
    return [tuple(r.get(k) for k in ("stage", "step", "task", "prompt_sha", "eval", "split")) for r in rows]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, registries):
    """The reference: the same grid swept sequentially in this process."""
    results = tmp_path_factory.mktemp("sequential")
    outcome = run_sweep(replace(GRID, run=replace(GRID.run, results_dir=str(results))), registries)
    assert not outcome.failed and len(outcome.executed) == 4
    return results


def test_a_ray_sweep_equals_the_sequential_sweep(sequential, tmp_path, fresh_ray):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": _worker_env()})
    reports = []
    outcome = run_sweep_on_ray(replace(GRID, run=replace(GRID.run, results_dir=str(tmp_path))), RayOptions(),
                               on_group=reports.append)
    assert not outcome.failed and sorted(outcome.executed) == sorted(p.name for p in (sequential / "runs").iterdir())
    assert len(reports) == 1 and reports[0]["pid"] != os.getpid()  # one task for the one model, in a worker
    assert _metrics(tmp_path) == _metrics(sequential)
    assert (tmp_path / "LEADERBOARD.md").read_text() == (sequential / "LEADERBOARD.md").read_text()
    assert not list((tmp_path / "cache-shards").glob("*.jsonl"))  # merged into the driver's cache, then removed
    again = run_sweep_on_ray(replace(GRID, run=replace(GRID.run, results_dir=str(tmp_path))), RayOptions())
    assert sorted(again.skipped) == sorted(outcome.executed) and not again.executed  # nothing sent to Ray


def _die_once_after_rows():
    """Worker setup hook: the first worker to append TP_TEST_DIE_AFTER journal rows dies with ``os._exit``."""
    import os

    from tp_harness.store import journal

    marker, after = os.environ["TP_TEST_DIE_MARKER"], int(os.environ["TP_TEST_DIE_AFTER"])
    original = journal.RunDir.append
    count = [0]

    def append(self, row):
        original(self, row)
        count[0] += 1
        if count[0] >= after and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(17)

    journal.RunDir.append = append


def test_a_worker_that_dies_is_retried_and_resumes_its_run(sequential, tmp_path, fresh_ray):
    marker = tmp_path / "died"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": _worker_env(TP_TEST_DIE_MARKER=str(marker), TP_TEST_DIE_AFTER="5"),
                          "worker_process_setup_hook": _die_once_after_rows})
    grid = replace(GRID, run=replace(GRID.run, results_dir=str(tmp_path / "results")))
    outcome = run_sweep_on_ray(grid, RayOptions(max_retries=2))
    assert marker.is_file(), "the worker never died: the test did not test a retry"
    assert not outcome.failed, outcome.failed
    assert _metrics(tmp_path / "results") == _metrics(sequential)
    for run in sorted((sequential / "runs").iterdir()):
        keys = _journal_keys(tmp_path / "results" / "runs" / run.name)
        assert len(keys) == len(set(keys)), f"{run.name}: a journal row is duplicated"
        assert sorted(keys) == sorted(_journal_keys(run)), f"{run.name}: journal rows differ from the uninterrupted run"


def test_a_node_removed_mid_run_is_rescheduled_and_finishes(sequential, tmp_path, fresh_ray):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20})
    try:
        first = cluster.add_node(num_cpus=1, resources={"worker": 1}, object_store_memory=80 * 2**20)
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": _worker_env()})
        grid = replace(GRID, targets=["legalbench_hearsay"], modes=["no_transfer"],
                       run=replace(GRID.run, results_dir=str(tmp_path), cache=False))  # no cache: slow enough to cut
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            outcome=run_sweep_on_ray(grid, RayOptions(max_retries=3, resources={"worker": 1}))))
        thread.start()
        journal = tmp_path / "runs" / "sweep-embedded-smollm2-135m-legalbench_hearsay-no_transfer-smoke-s0" / \
            "journal.jsonl"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (journal.is_file() and journal.read_text().count("\n") >= 2):
            time.sleep(0.2)
        assert journal.is_file(), "the run never started"
        cluster.remove_node(first, allow_graceful=False)
        cluster.add_node(num_cpus=1, resources={"worker": 1}, object_store_memory=80 * 2**20)
        thread.join(timeout=900)
        assert not thread.is_alive()
        outcome = result["outcome"]
        assert not outcome.failed, outcome.failed
        reference = _metrics(sequential)
        (run_id, evaluations), = _metrics(tmp_path).items()
        # computed afresh (no cache), in other batches than the reference: loglikelihoods agree to ~1e-6
        assert evaluations.keys() == reference[run_id].keys()
        for key, (prompt, metrics) in evaluations.items():
            assert prompt == reference[run_id][key][0]
            assert metrics == pytest.approx(reference[run_id][key][1], abs=1e-5, nan_ok=True), key
        keys = _journal_keys(journal.parent)
        assert len(keys) == len(set(keys))
    finally:
        ray.shutdown()
        cluster.shutdown()


def _slow_groups():
    """Worker setup hook: every model group takes at least 4 s (a stand-in for a long run)."""
    import time

    from tp_harness.runs import sweep_ray

    original = sweep_ray.run_item

    def run_item(*args, **kwargs):
        time.sleep(4)
        return original(*args, **kwargs)

    sweep_ray.run_item = run_item


def test_groups_pack_onto_custom_resource_slots(tmp_path, fresh_ray):
    """Three model groups, each asking for one of 2 ``slot`` resources: two run at once, the third waits. (The
    models do not exist: each run fails at once with a deliberate error, reported, not retried.)"""
    ray.init(num_cpus=3, resources={"slot": 2}, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20,
             runtime_env={"env_vars": _worker_env(), "worker_process_setup_hook": _slow_groups})
    grid = SweepSettings(models=["no-such-backend-a", "no-such-backend-b", "no-such-backend-c"],
                         targets=["financial_phrasebank"],
                         run=OptimizeSettings(budget="smoke", results_dir=str(tmp_path)))
    reports: list[dict] = []
    outcome = run_sweep_on_ray(grid, RayOptions(resources={"slot": 1}), on_group=reports.append)
    assert len(reports) == 3 and len(outcome.failed) == 3
    assert all("no-such-backend" in message for _run, message in outcome.failed)
    spans = sorted((r["started"], r["finished"]) for r in reports)
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlaps, f"no two groups ran at once: {spans}"
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.5, f"three groups ran at once on two slots: {spans}"


def test_gpus_asked_of_a_cpu_only_cluster_are_refused_at_once(tmp_path, fresh_ray):
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    grid = SweepSettings(models=["vllm"], targets=["financial_phrasebank"], run=OptimizeSettings(
        model_args="pretrained=/models/m,tensor_parallel_size=2", results_dir=str(tmp_path)))
    started = time.monotonic()
    with pytest.raises(UsageError) as err:
        run_sweep_on_ray(grid, RayOptions())
    assert time.monotonic() - started < 60
    assert "model group 'vllm' asks for GPU: 2, the cluster has 0" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_the_cli_refuses_gpus_of_a_cpu_only_cluster_with_one_line(tmp_path, capsys, fresh_ray):
    from tp_harness.entrypoints.cli import main

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    code = main(["sweep", "--executor", "ray", "--models", "vllm", "--model-args", "pretrained=/m",
                 "--targets", "financial_phrasebank", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("tp-harness: error:")]
    assert len(errors) == 1 and "asks for GPU: 1, the cluster has 0" in errors[0] and "Traceback" not in err


def test_check_cluster_and_grouping_without_ray():
    from tp_harness.runs.sweep import plan_sweep

    plan = plan_sweep(replace(GRID, models=["a", "b"]))
    groups = group_by_model(plan)
    assert [g.model for g in groups] == ["a", "b"] and all(len(g.items) == 4 for g in groups)
    check_cluster(groups, [{"CPU": 1}, {"CPU": 1}], {"CPU": 2.0}, None)
    with pytest.raises(UsageError, match=r"model group 'b' asks for slot: 1, the cluster has 0"):
        check_cluster(groups, [{"CPU": 1}, {"slot": 1}], {"CPU": 2.0}, "auto")


def test_a_run_locked_by_another_process_is_refused_naming_the_holder(tmp_path, registries, fresh_ray):
    """The run lock across Ray workers: while this process holds a run's lock, the worker's resume is refused with
    the holder named (a deliberate error: reported, not retried); once released, the same sweep finishes it."""
    import socket

    from tp_harness.store.journal import RunDir

    grid = replace(GRID, targets=["legalbench_hearsay"], modes=["no_transfer"], run=replace(GRID.run, results_dir=str(tmp_path)))
    assert not run_sweep(grid, registries).failed
    (run_dir,) = (tmp_path / "runs").iterdir()
    (run_dir / "results.json").unlink()  # interrupted after its journal: the next sweep resumes it
    holder = RunDir.open(run_dir)
    holder.lock()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20,
             runtime_env={"env_vars": _worker_env()})
    try:
        refused = run_sweep_on_ray(grid, RayOptions(max_retries=2))
    finally:
        holder.unlock()
    ((run_id, message),) = refused.failed
    assert run_id == run_dir.name and f"in use by pid {os.getpid()}" in message and socket.gethostname() in message
    assert not (run_dir / "results.json").exists()
    done = run_sweep_on_ray(grid, RayOptions())
    assert done.resumed == [run_dir.name] and not done.failed and (run_dir / "results.json").is_file()
