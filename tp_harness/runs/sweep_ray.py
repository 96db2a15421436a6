"""``tp-harness sweep --executor ray``: the sweep's plan run on a Ray cluster, one Ray task per model group.

Owns mapping a sweep onto Ray core (docs/scaling.md): the planner of :mod:`tp_harness.runs.sweep` is kept as it is
(deterministic run ids, finished runs skipped, interrupted ones resumed from their journals); the unfinished runs
are grouped by model and each group becomes one Ray task, sized ``num_gpus`` = the tensor-parallel size for
``vllm`` or ``num_cpus`` otherwise (plus any custom resources). A task runs its model's targets and modes in order
in one process, so the model loads once and stage 1, which does not depend on the target, is served from the
cache after the first run. The cluster's resources are checked before anything is submitted: a group asking for
more GPUs (or any resource) than the cluster has is refused at once instead of waiting forever.

State: run directories live under the sweep's ``results_dir``, on storage every node sees; each worker's response
cache is its node's own ``$TP_CACHE_DIR`` (SQLite WAL needs one host), and a finished task exports the entries
it added as a JSONL shard under ``<results_dir>/cache-shards/``, which the driver merges into its own cache
(``INSERT OR IGNORE``; merging twice changes nothing). Failures: a dead worker or node is retried by Ray
(``max_retries``) and the retry resumes each run from its journal; a deliberate tp-harness error is a failed run,
reported and not retried; a dead driver is handled by running the same command again.

Ray is imported only here, and only when this executor is chosen (extra ``tp-harness[ray]``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tp_harness.errors import UsageError
from tp_harness.reporting.leaderboard import write_leaderboard
from tp_harness.runs.sweep import SweepItem, SweepOutcome, SweepSettings, plan_sweep, run_item, run_state

log = logging.getLogger(__name__)

SHARD_DIR = "cache-shards"


@dataclass(frozen=True)
class RayOptions:
    """How a sweep runs on Ray.

    :ivar address: the cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local one, unless this
        process already called ``ray.init``.
    :ivar max_retries: how often Ray re-runs a model group whose worker or node died (each retry resumes its runs
        from their journals).
    :ivar num_cpus: CPUs per model group of a non-vLLM model (a ``vllm`` group asks for ``num_gpus`` =
        its ``tensor_parallel_size`` model arg, default 1, and no CPU).
    :ivar resources: custom Ray resources every group asks for, e.g. ``{"slot": 1}``.
    """

    address: str | None = None
    max_retries: int = 3
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelGroup:
    """The unfinished runs of one model: they run in order in one Ray task."""

    model: str
    items: tuple[SweepItem, ...]


def group_by_model(items: Sequence[SweepItem]) -> list[ModelGroup]:
    """Planned runs grouped by model, in plan order (models, then their targets and modes as planned)."""
    groups: dict[str, list[SweepItem]] = {}
    for item in items:
        groups.setdefault(item.model, []).append(item)
    return [ModelGroup(model, tuple(group)) for model, group in groups.items()]


def group_resources(model: str, model_args: str, options: RayOptions) -> dict[str, float]:
    """What one model group asks Ray for: ``{"GPU": tp}`` for ``vllm``, else ``{"CPU": num_cpus}``, plus custom
    resources.

    :raises UsageError: ``tensor_parallel_size`` is not a positive integer.
    """
    need: dict[str, float] = {}
    if model.split(":")[0] == "vllm":
        args = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv)
        try:
            tp = int(args.get("tensor_parallel_size", 1))
        except ValueError:
            tp = 0
        if tp < 1:
            raise UsageError(f"--model-args tensor_parallel_size={args.get('tensor_parallel_size')!r}: expected a "
                             "positive whole number of GPUs")
        need["GPU"] = float(tp)
    elif options.num_cpus:
        need["CPU"] = float(options.num_cpus)
    need.update({k: float(v) for k, v in options.resources.items()})
    return need


def check_cluster(groups: Sequence[ModelGroup], needs: Sequence[dict[str, float]], available: dict[str, float],
                  address: str | None) -> None:
    """Refuse a group that asks for more of a resource than the whole cluster has (Ray would wait forever).

    :param available: ``ray.cluster_resources()``.
    :raises UsageError: one line per refused group, naming the resource, what it asks and what the cluster has.
    """
    problems = []
    for group, need in zip(groups, needs):
        for resource, amount in need.items():
            have = float(available.get(resource, 0.0))
            if have < amount:
                problems.append(f"model group {group.model!r} asks for {resource}: {amount:g}, the cluster has "
                                f"{have:g}")
    if problems:
        where = address or "the local Ray instance"
        raise UsageError(f"the Ray cluster ({where}) cannot run this sweep: " + "; ".join(problems) + ". Start "
                         "nodes that have them (ray start --num-gpus N / --resources), pick another model, or run "
                         "the sweep without --executor ray")


def _shard_name(model: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in model)
    return f"{safe}-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.jsonl"


def run_model_group(settings: SweepSettings, items: Sequence[SweepItem], since: float) -> dict[str, Any]:
    """The body of one Ray task: bring every run of one model group to finished, in order, in this process.

    Builds the plugin registries here (a worker is a fresh process), runs each item as the sequential sweep does
    (skip / resume / run), then exports the response-cache entries added since ``since`` (the sweep's start, so a
    retry on the same node also ships what a dead attempt computed) as a shard under
    ``<results_dir>/cache-shards/``. A deliberate tp-harness error of a run is recorded as failed, not raised, so
    Ray does not retry it.
    :return: ``{"executed", "resumed", "skipped": [run ids], "failed": [[run id, message]], "shard": path|None,
        "host": name, "pid": int, "started": t, "finished": t}``.
    """
    from tp_harness.backends.cache import open_cache
    from tp_harness.plugin.manager import build_registries, get_plugin_manager

    started = time.time()
    registries = build_registries(get_plugin_manager())
    outcome = SweepOutcome()
    for index, item in enumerate(items, start=1):
        run_item(settings, item, registries, outcome, label=f"{item.model} {index}/{len(items)}")
    shard = None
    if settings.run.cache:
        path = Path(settings.run.results_dir) / SHARD_DIR / _shard_name(items[0].model if items else "none")
        if open_cache().export_shard(path, since=since):
            shard = str(path)
    return {"executed": outcome.executed, "resumed": outcome.resumed, "skipped": outcome.skipped,
            "failed": [list(f) for f in outcome.failed], "shard": shard, "host": socket.gethostname(),
            "pid": os.getpid(), "started": started, "finished": time.time()}


def merge_shards(results_dir: str | Path, cache: Any = None) -> int:
    """Merge every shard under ``<results_dir>/cache-shards/`` into ``cache`` (default: this process's response
    cache) and delete the merged files. :return: the entries added (0 when all were present)."""
    from tp_harness.backends.cache import open_cache

    cache = cache or open_cache()
    added = 0
    for shard in sorted((Path(results_dir) / SHARD_DIR).glob("*.jsonl")):
        added += cache.merge_shard(shard)
        shard.unlink()
    return added


def run_sweep_on_ray(
    settings: SweepSettings,
    options: RayOptions = RayOptions(),
    *,
    on_item: Callable[[SweepItem, str], None] | None = None,
    on_group: Callable[[dict[str, Any]], None] | None = None,
) -> SweepOutcome:
    """Run a sweep's unfinished runs on a Ray cluster, one task per model group; then merge the cache shards and
    rebuild ``<results_dir>/LEADERBOARD.md`` once.

    Finished runs are skipped on the driver without touching the cluster. Results equal the sequential sweep's
    (:func:`tp_harness.runs.sweep.run_sweep`): each run is the same deterministic optimization.
    :param on_item: ``(item, "skip" | "run" | "done" | "failed")`` as runs are planned and groups come back.
    :param on_group: called with each group task's report (see :func:`run_model_group`).
    :raises UsageError: the grid is invalid, ray is not installed, or the cluster lacks a resource a group needs.
    """
    plan = plan_sweep(settings)
    outcome = SweepOutcome()
    todo = []
    for item in plan:
        if run_state(Path(settings.run.results_dir) / "runs" / item.run_id, item) == "finished":
            run_item(settings, item, None, outcome, label="driver", on_item=on_item)  # validates settings, skips
        else:
            todo.append(item)
    groups = group_by_model(todo)
    if groups:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'tp-harness[ray]'") from None
        needs = [group_resources(g.model, settings.run.model_args, options) for g in groups]
        if not ray.is_initialized():
            ray.init(address=options.address, ignore_reinit_error=True, log_to_driver=False)
        check_cluster(groups, needs, ray.cluster_resources(), options.address)
        task = ray.remote(run_model_group)
        since = time.time()
        pending = {}
        for group, need in zip(groups, needs):
            custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
            ref = task.options(num_cpus=need.get("CPU", 0), num_gpus=need.get("GPU", 0), resources=custom or None,
                               max_retries=options.max_retries, retry_exceptions=False,
                               name=f"tp-harness sweep {group.model}").remote(settings, group.items, since)
            pending[ref] = group
            for item in group.items:
                if on_item:
                    on_item(item, "run")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            group = pending.pop(done[0])
            try:
                report = ray.get(done[0])
            except Exception as err:  # the task died more often than max_retries, or raised a bug
                message = f"the Ray task of model {group.model!r} failed: {type(err).__name__}: {err}"
                log.error("%s", message)
                for item in group.items:
                    outcome.failed.append((item.run_id, message + "; run the same sweep again to resume"))
                    if on_item:
                        on_item(item, "failed")
                continue
            if on_group:
                on_group(report)
            outcome.executed += report["executed"]
            outcome.resumed += report["resumed"]
            outcome.skipped += report["skipped"]
            outcome.failed += [(run_id, message) for run_id, message in report["failed"]]
            failed = {run_id for run_id, _ in report["failed"]}
            for item in group.items:
                if on_item:
                    on_item(item, "failed" if item.run_id in failed else "done")
        if settings.run.cache:
            added = merge_shards(settings.run.results_dir)
            log.info("merged %d new cache entries from the workers' shards", added)
    outcome.leaderboard = write_leaderboard(Path(settings.run.results_dir))
    return outcome
