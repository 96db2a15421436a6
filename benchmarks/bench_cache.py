"""Benchmark: a warm re-run of an optimization (every response in the cache) against the cold first run.

Runs ``python -m tp_harness optimize`` twice in fresh subprocesses with the same seed and settings
(``--no-transfer`` on one target; budgets smoke, light and medium by default, each with its own
response cache that starts empty): the cold run computes every scorer and reference request and fills the cache, the warm run finds
them all there. Each run writes its own results directory. Measures the wall time of each subprocess
(interpreter start, imports and model load included), checks that both runs end with identical
journals (metrics of every candidate) and final metrics, and prints the speedup.

The response cache lives in ``$TP_CACHE_DIR/responses.sqlite``; the same folder holds the converted
embedded model (``models/``). So the benchmark gives the runs a fresh ``TP_CACHE_DIR`` of its own whose
``models`` (and ``gguf``, ``wheels``) are links to the real cache's: the model is not converted again,
the responses (and the memos) start from nothing.

The warm run still starts an interpreter, imports lm-eval (and datasets) and tokenizes, and renders, scores and
journals every candidate; it does not import torch nor load the weights (they load on the first cache miss,
``tp_harness.backends.hf.LazyHFLM``), does not render the docs again to check them, and copies the plots a run
with the same data drew before (the memos under ``$TP_CACHE_DIR/memos``; the cold run starts without them).

Usage (about 8 minutes for all three budgets on an idle 2-core machine)::

    TP_CACHE_DIR=/tmp/tpcache python benchmarks/bench_cache.py                  # smoke, light and medium
    python benchmarks/bench_cache.py --budget light                             # that budget alone
    python benchmarks/bench_cache.py --budget light --task legalbench_hearsay --workdir /tmp/bench_cache

The last line printed is the summary, e.g. ``warm/cold speedup: light 24.1x, medium 61.0x (target >= 20x at light
and medium; smoke 12.0x, not a target): met``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = ("models", "gguf", "wheels")  # what the real cache dir lends the benchmark's fresh one


def real_cache_dir() -> Path:
    """The user's tp-harness cache (converted models): ``$TP_CACHE_DIR`` or ``~/.cache/tp_harness``."""
    return Path(os.environ.get("TP_CACHE_DIR") or Path.home() / ".cache" / "tp_harness").expanduser()


def fresh_cache_dir(workdir: Path) -> Path:
    """A cache dir with no responses whose model folders link to the real cache's."""
    real = real_cache_dir()
    # make sure the embedded model is converted before anything is timed (a no-op when it is)
    code = "from tp_harness.backends.embedded import ZOO, ensure_checkpoint; ensure_checkpoint(ZOO['smollm2-135m'])"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TP_CACHE_DIR": str(real)})
    cache = workdir / "cache"
    cache.mkdir(parents=True)
    for name in SHARED:
        if (real / name).exists():
            (cache / name).symlink_to((real / name).resolve(), target_is_directory=True)
    return cache


def run_once(label: str, *, workdir: Path, cache: Path, budget: str, args: argparse.Namespace) -> dict:
    """One ``optimize`` subprocess; returns its wall time, results document and journal."""
    results_dir = workdir / f"results_{label}"
    cmd = [sys.executable, "-m", "tp_harness", "optimize", "--no-transfer", "--target", args.task,
           "--budget", budget, "--seed", str(args.seed), "--dtype", args.dtype,
           "--results-dir", str(results_dir), "--run-id", label]
    env = {**os.environ, "TP_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log = workdir / f"{label}.log"
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} run failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    run = results_dir / "runs" / label
    rows = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
    return {"label": label, "wall_s": wall, "results": json.loads((run / "results.json").read_text()),
            "journal": rows, "cmd": " ".join(cmd)}


def outcome(run: dict) -> dict:
    """What must not change between cold and warm: every scored row's metrics and the final evaluations."""
    tp = run["results"]["tp"]
    return {
        "journal": [(r["stage"], r["step"], r.get("eval"), r["prompt_sha"], r.get("metrics")) for r in run["journal"]],
        "final": sorted((e["prompt_kind"], e["prompt"], json.dumps(e["metrics"], sort_keys=True))
                        for e in tp["evaluations"]),
    }


TARGET = 20.0
TARGET_BUDGETS = ("light", "medium")  # smoke is reported, not a target: its cold run is mostly start-up


def measure(budget: str, args: argparse.Namespace, workdir: Path) -> dict:
    """One cold and one warm run of ``budget`` in ``workdir/<budget>`` with a fresh response cache."""
    workdir = workdir / budget
    workdir.mkdir(parents=True)
    cache = fresh_cache_dir(workdir)
    cold = run_once("cold", workdir=workdir, cache=cache, budget=budget, args=args)
    print(f"  {budget} cold {cold['wall_s']:.1f} s", file=sys.stderr, flush=True)
    warm = run_once("warm", workdir=workdir, cache=cache, budget=budget, args=args)
    print(f"  {budget} warm {warm['wall_s']:.1f} s", file=sys.stderr, flush=True)
    if outcome(cold) != outcome(warm):
        raise SystemExit(f"the warm re-run did not reproduce the cold run; compare the journals under {workdir}")
    return {"budget": budget, "cold": cold, "warm": warm, "speedup": cold["wall_s"] / warm["wall_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="financial_phrasebank", help="target task (default financial_phrasebank)")
    parser.add_argument("--budget", default=None, choices=["smoke", "light", "medium", "heavy"],
                        help="measure this budget alone (default: smoke, light and medium)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--workdir", type=Path, default=None, help="must not exist (default: a temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cache_"))
    if args.workdir:
        workdir.mkdir(parents=True)
    budgets = [args.budget] if args.budget else ["smoke", "light", "medium"]
    results = [measure(b, args, workdir) for b in budgets]

    print(f"cold vs warm re-run: task {args.task}, --no-transfer, seed {args.seed}, dtype {args.dtype}; "
          f"workdir {workdir}")
    print(f"command: {results[0]['cold']['cmd']}")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}; cpus: {os.cpu_count()}")
    print(f"{'budget':<7} {'run':<5} {'wall s':>8} {'scorer requests':>15} {'computed':>9} {'projected':>9} "
          f"{'journal rows':>12} {'speedup':>8}")
    for r in results:
        for run in (r["cold"], r["warm"]):
            calls = run["results"]["tp"]["calls"]
            speedup = f"{r['speedup']:.1f}x" if run is r["warm"] else ""
            print(f"{r['budget']:<7} {run['label']:<5} {run['wall_s']:8.1f} {calls['scorer_requests']:15d} "
                  f"{calls['scorer_computed']:9d} {calls['projected_scorer_requests']:9d} {len(run['journal']):12d} "
                  f"{speedup:>8}")
        finals = {e["prompt_kind"]: e["metrics"]["composite"] for e in r["warm"]["results"]["tp"]["evaluations"]}
        print(f"{r['budget']}: identical journal metrics and final metrics: True; test composites: "
              + ", ".join(f"{k} {v:.4f}" for k, v in sorted(finals.items())))
    targeted = [r for r in results if r["budget"] in TARGET_BUDGETS]
    others = [r for r in results if r["budget"] not in TARGET_BUDGETS]
    figures = ", ".join(f"{r['budget']} {r['speedup']:.1f}x" for r in targeted)
    extra = "".join(f"; {r['budget']} {r['speedup']:.1f}x, not a target" for r in others)
    verdict = "met" if targeted and all(r["speedup"] >= TARGET for r in targeted) else (
        "missed" if targeted else "no target budget measured")
    print(f"warm/cold speedup: {figures or '-'} (target >= {TARGET:.0f}x at {' and '.join(TARGET_BUDGETS)}"
          f"{extra}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
