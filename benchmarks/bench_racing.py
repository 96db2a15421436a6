"""Benchmark: racing against full evaluation of every candidate, paired over seeds and tasks.

Runs the same optimization twice per (task, seed) on the real embedded scorer with the scorer's response cache
off, so every scorer request reaches the model: once with racing and once with every candidate scored on the
full optimize split (``minibatch=None``); same seed and budget otherwise. Racing is ``--race bound`` by default
(racing on evidence, F-Race: candidates are scored block by block of the optimize split and one is dropped once the
paired-bootstrap upper bound of its composite minus the leader's, on the docs seen, is below 0; survivors end fully
scored; ``tp_harness.optimizer.loop``) or ``--race halving`` (the best ``promote`` per step go on, as MIPROv2).
Reports per run the scorer requests the model computed (the whole run, and the search phase alone: the
optimize-split scoring that racing changes, without the validation and test scoring both variants share) and the test composite of the final
``best_target`` prompt; then the mean paired difference of that test composite, racing minus full, over every
(task, seed) pair with its 95% bootstrap CI, and the ratio of search-phase scorer calls.

The reference LLM (the same embedded model) gets a view of the model with a response cache of its own
(``--reference-cache``), so its samples are not counted as scorer calls, and a step both variants reach
with the same meta-prompt (step 1 always) is sampled once.

Usage (fp32, 2 idle CPU cores: about 6 minutes per (task, seed) pair, an hour for the default 2 tasks x 5 seeds)::

    TP_CACHE_DIR=/tmp/tpcache python benchmarks/bench_racing.py --json racing.json
    python benchmarks/bench_racing.py --seeds 0 --json racing.json    # then --seeds 1, ...: the table
                                                                      # covers every run in racing.json
    python benchmarks/bench_racing.py --quick --seeds 0 --tasks financial_phrasebank   # checks that it runs

Targets: racing costs no quality, i.e. the mean paired test-composite difference, racing minus full, has a 95% CI
that includes 0 (or lies above it: racing better) and a mean above -0.01, at at most 0.5 of full evaluation's
search-phase scorer calls, over >= 5 seeds on 2 tasks. The last line printed is the summary, e.g. ``racing (bound)
vs full, 10 pairs: mean test composite diff +0.013 [95% CI +0.001, +0.026] (above 0: racing better), search-phase
scorer calls 0.37 (target: no loss, i.e. CI includes 0 or lies above it, mean > -0.01; calls <= 0.5): met``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

#: racing on evidence: a medium-like search (8 candidates, 3 steps) on a 64-doc optimize split raced in blocks of
#: max(8, 64 / 8) = 8 docs (8 blocks); small enough for minutes per run on 2 cores
RACING = dict(name="bench-racing", steps=3, num_candidates=8, optimize_n=64, validation_n=32, test_n=64,
              k_source=3, finalists=3, reference_max_tokens=64, minibatch=8, promote=1, full_eval_interval=2,
              race="bound", race_alpha=0.2, minibatch_fraction=0.125)
#: ``--race halving``: the setting measured before (minibatch 4 of a 32-doc split, promote 1)
HALVING = dict(RACING, optimize_n=32, validation_n=24, test_n=48, finalists=2, minibatch=4, race="halving")
#: ``--quick``: a short check that the benchmark runs (its numbers mean nothing)
QUICK = dict(RACING, steps=1, num_candidates=3, optimize_n=16, validation_n=6, test_n=6, minibatch=4)
TASKS = "financial_phrasebank,legalbench_hearsay"
#: bumped when the racing loop changes what a racing run does (2: a candidate that left a race is not proposed again)
RACING_VERSION = 2
TARGET_CALLS = 0.5
TARGET_MEAN = -0.01


def budgets(values: dict):
    """The racing budget and the same budget with racing off (every candidate on the full optimize split)."""
    from tp_harness.optimizer.budget import Budget

    racing = Budget(**values)
    return racing, replace(racing, name="bench-full", minibatch=None)


def setup_key(budget, *, task: str, dtype: str) -> dict:
    """What makes two runs the same run: task, dtype and the budget values that matter to its variant
    (a full run ignores the racing settings, so one full run serves every racing configuration)."""
    values = {k: v for k, v in asdict(budget).items() if k != "name"}
    if budget.minibatch is None:  # a full run ignores every racing setting
        values = {k: v for k, v in values.items()
                  if k not in ("promote", "full_eval_interval", "race", "race_alpha", "minibatch_fraction")}
        return {"task": task, "dtype": dtype, "budget": values}
    # racing runs made before the loop stopped re-proposing candidates that had left a race are kept in the file,
    # unmatched (version 2 and later never reuse them)
    return {"task": task, "dtype": dtype, "budget": values, "racing_version": RACING_VERSION}


def run_one(registries, budget, *, task: str, seed: int, results_dir: Path, dtype: str, reference_cache: Path,
            run_id: str) -> dict:
    """One real optimization (``--no-transfer``, scorer cache off); returns its counts and test composites."""
    from tp_harness.backends.cache import open_cache
    from tp_harness.evaluation.evaluator import count_scorer_requests
    from tp_harness.optimizer.budget import BUDGETS
    from tp_harness.runs.runner import OptimizeSettings, _call_counts, finish_run, prepare_run

    BUDGETS[budget.name] = budget  # prepare_run looks the budget up by name
    settings = OptimizeSettings(targets=[task], sources=[], mode="no_transfer", budget=budget.name, seed=seed,
                                results_dir=str(results_dir), run_id=run_id, dtype=dtype, cache=False,
                                leaderboard=False)
    t0 = time.perf_counter()
    ctx, projection = prepare_run(settings, registries)
    try:
        # the reference LLM: a wrapper of the same loaded model with a response cache of its own (a new context;
        # the one prepare_run built is not changed)
        ctx = dataclasses.replace(ctx, reference=ctx.scorer.with_options(cache=open_cache(reference_cache)))
        outcome = registries.optimizers.get("transfer").run(ctx)
        calls = {**_call_counts(ctx), "projected_scorer_requests": projection.scorer_requests}
        results = finish_run(ctx, outcome, results_root=Path(results_dir), calls=calls, skip_reporters=("leaderboard",))
    finally:
        ctx.run.unlock()
    run = ctx.run
    wall = time.perf_counter() - t0
    assert ctx.scorer.cache is None, "the scorer must not use the response cache in this benchmark"
    prep = ctx.targets[0]
    per_doc = count_scorer_requests(prep, "optimize") / len(prep.splits["optimize"])  # label words: constant
    rows = run.journal()
    calls = results["tp"]["calls"]
    evals = {e["prompt_kind"]: e for e in results["tp"]["evaluations"]}
    return {
        "variant": "racing" if budget.minibatch else "full", "seed": seed, "wall_s": round(wall, 1),
        "scorer_computed": calls["scorer_computed"], "scorer_issued": calls["scorer_requests"],
        "projected": calls["projected_scorer_requests"],
        # merged rows (racing on evidence: a survivor's blocks put together) computed nothing
        "search_requests": round(sum(r["n"] * per_doc for r in rows
                                     if r["stage"] == "target" and not r.get("merged_blocks"))),
        "reference_samples": ctx.reference.issued["generate_until"],
        "full_evals": sum(1 for r in rows if r["stage"] == "target" and r.get("eval", "full") == "full"),
        "partial_evals": sum(1 for r in rows if r.get("eval") == "partial"),
        "test_best": evals["best_target"]["metrics"]["composite"],
        "test_original": evals["original"]["metrics"]["composite"],
        "best_prompt": evals["best_target"]["prompt"],
    }


def mean_ci(diffs: list[float], *, seed: int = 0, resamples: int = 10_000) -> tuple[float, float, float]:
    """Mean of the paired differences and its 95% percentile bootstrap CI over the pairs."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def report(runs: list[dict], *, tasks: list[str], dtype: str, budget: dict) -> None:
    """Print the per-run table, the totals and (last line) the summary against the targets."""
    print(f"racing vs full evaluation: tasks {', '.join(tasks)}, --no-transfer, scorer cache off, dtype {dtype}")
    print(f"budget: {budget} (full: minibatch=None)")
    head = (f"{'task':<22} {'seed':>4} {'variant':<7} {'wall s':>7} {'scorer computed':>15} {'projected':>9} "
            f"{'search reqs':>11} {'full/minibatch evals':>20} {'test best':>9} {'test orig':>9}")
    print(head)
    print("-" * len(head))
    for r in runs:
        evals = f"{r['full_evals']}/{r['partial_evals']}"
        print(f"{r['task']:<22} {r['seed']:>4} {r['variant']:<7} {r['wall_s']:7.1f} {r['scorer_computed']:15d} "
              f"{r['projected']:9d} {r['search_requests']:11d} {evals:>20} {r['test_best']:9.4f} "
              f"{r['test_original']:9.4f}")
    tot = {v: [r for r in runs if r["variant"] == v] for v in ("racing", "full")}
    for v, rs in tot.items():
        print(f"{'all':<22} {'':>4} {v:<7} {sum(r['wall_s'] for r in rs):7.1f} "
              f"{sum(r['scorer_computed'] for r in rs):15d} {sum(r['projected'] for r in rs):9d} "
              f"{sum(r['search_requests'] for r in rs):11d}")
    full = {(r["task"], r["seed"]): r for r in tot["full"]}
    pairs = [(r, full[(r["task"], r["seed"])]) for r in tot["racing"] if (r["task"], r["seed"]) in full]
    if not pairs:
        print("no (task, seed) pair has both variants yet")
        return
    ratio = sum(a["scorer_computed"] for a, _ in pairs) / sum(b["scorer_computed"] for _, b in pairs)
    search = sum(a["search_requests"] for a, _ in pairs) / sum(b["search_requests"] for _, b in pairs)
    diffs = [a["test_best"] - b["test_best"] for a, b in pairs]
    same = sum(a["best_prompt"] == b["best_prompt"] for a, b in pairs)
    mean, lo, hi = mean_ci(diffs)
    print(f"same best_target prompt in {same} of {len(pairs)} pairs; test composite diff (racing - full) per pair: "
          + ", ".join(f"{d:+.4f}" for d in diffs))
    print(f"racing/full scorer calls: whole run {ratio:.2f}, search phase {search:.2f}")
    enough = len({s for _, s in ((a["task"], a["seed"]) for a, _ in pairs)}) >= 5 and len({a["task"] for a, _ in pairs}) >= 2
    # no loss: the interval is not below 0 (it includes 0, or racing is better beyond it)
    ok = hi >= 0.0 and mean > TARGET_MEAN and search <= TARGET_CALLS
    side = "includes 0" if lo <= 0.0 <= hi else ("above 0: racing better" if lo > 0 else "below 0: racing worse")
    verdict = ("met" if ok else "missed") + ("" if enough else " (fewer than 5 seeds on 2 tasks: not the target's "
                                                               "protocol)")
    print(f"racing ({budget.get('race', 'halving')}) vs full, {len(pairs)} pairs: mean test composite diff "
          f"{mean:+.3f} [95% CI {lo:+.3f}, {hi:+.3f}] ({side}), search-phase scorer calls {search:.2f} (target: no "
          f"loss, i.e. CI includes 0 or lies above it, mean > {TARGET_MEAN}; calls <= {TARGET_CALLS}): {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    parser.add_argument("--tasks", default=TASKS, help=f"comma-separated target tasks (default {TASKS})")
    parser.add_argument("--race", default="bound", choices=["bound", "halving"],
                        help="how racing decides (default bound: racing on evidence)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--results-dir", type=Path, default=None, help="run directories (default: a temporary one)")
    parser.add_argument("--reference-cache", type=Path, default=None,
                        help="response cache of the reference LLM's samples (default: a temporary directory)")
    parser.add_argument("--minibatch", type=int, default=None, help=f"racing minibatch (default {RACING['minibatch']})")
    parser.add_argument("--promote", type=int, default=None, help=f"racing promote (default {RACING['promote']})")
    parser.add_argument("--race-alpha", type=float, default=None,
                        help=f"racing on evidence: one-sided level of the bound (default {RACING['race_alpha']})")
    parser.add_argument("--minibatch-fraction", type=float, default=None,
                        help=f"racing on evidence: block fraction of the split (default {RACING['minibatch_fraction']})")
    parser.add_argument("--full-eval-interval", type=int, default=None,
                        help=f"racing full-eval interval (default {RACING['full_eval_interval']})")
    parser.add_argument("--quick", action="store_true", help="a tiny budget, to check that the script runs")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the per-run numbers here after each run; runs of the same setup already in "
                             "the file are kept and not re-run (so seeds, or racing settings, can run in separate "
                             "invocations: a full run serves every racing setting)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    from tp_harness.plugin.manager import build_registries

    registries = build_registries()
    from tp_harness.runs.runner import build_backend

    # the weights load once, before anything is timed (run_optimize gets the same process-wide model back)
    build_backend("embedded:smollm2-135m", "", registries, dtype=args.dtype, batch_size="16", cache=False).lm.hflm()
    values = dict(QUICK if args.quick else RACING if args.race == "bound" else HALVING)
    for key in ("minibatch", "promote", "full_eval_interval", "race_alpha", "minibatch_fraction"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    racing, full = budgets(values)
    results_dir = args.results_dir or Path(tempfile.mkdtemp(prefix="bench_racing_"))
    reference_cache = args.reference_cache or Path(tempfile.mkdtemp(prefix="bench_racing_refcache_"))
    saved = json.loads(args.json.read_text()) if args.json and args.json.is_file() else []
    runs: list[dict] = []
    tasks = [t for t in args.tasks.split(",") if t]
    for seed in [int(s) for s in args.seeds.split(",")]:  # seed by seed: an interrupted run has pairs of both tasks
        for task in tasks:
            for budget in (racing, full):
                key = setup_key(budget, task=task, dtype=args.dtype)
                done = [r for r in saved if r["seed"] == seed and r.get("setup") == key]
                if done:  # a finished run of the same setup: kept, not re-run
                    runs.append(done[0])
                    continue
                tag = "" if budget.minibatch is None else (
                    f"-{budget.race}-m{budget.minibatch}" + (f"p{budget.promote}i{budget.full_eval_interval}"
                                                              if budget.race == "halving" else
                                                              f"f{budget.minibatch_fraction}a{budget.race_alpha}"))
                r = run_one(registries, budget, task=task, seed=seed, results_dir=results_dir, dtype=args.dtype,
                            reference_cache=reference_cache, run_id=f"{task}-{budget.name}{tag}-seed{seed}")
                r["setup"], r["task"] = key, task
                runs.append(r)
                saved.append(r)
                print(f"  {task} seed {seed} {r['variant']:<6} {r['wall_s']:7.1f} s  scorer computed "
                      f"{r['scorer_computed']:5d}  test composite {r['test_best']:.4f}", file=sys.stderr, flush=True)
                if args.json:
                    args.json.write_text(json.dumps(saved, indent=2))
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}; cpus: {os.cpu_count()}")
    report(runs, tasks=tasks, dtype=args.dtype, budget=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
