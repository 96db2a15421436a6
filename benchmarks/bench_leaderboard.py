"""Benchmark: a sweep's leaderboard built once at the end against rebuilt after every run (issue 15, item 5).

A sweep used to rebuild ``LEADERBOARD.md`` (tables, bootstrap intervals, plots) after each run, so its cost grew
with the square of the number of runs; it now builds it once, at the end. This script measures both, side by
side in one process, on real stored runs: it copies the committed runs under ``results/runs`` into a scratch
results folder (cycling through them with new run ids until there are ``--runs``), then times

- before: after the k-th run is in place, build the leaderboard (k = 1 .. N), as the old sweep did;
- after: build it once with all N runs, as the sweep does now.

No model runs: the leaderboard reads stored ``results.json`` and ``samples/*.jsonl`` files only.

Usage (about 2 minutes on 2 cores for 20 runs)::

    PYTHONPATH=. python benchmarks/bench_leaderboard.py --runs 20

The last line printed is the summary: ``leaderboard of a 20-run sweep: before X s, after Y s (Z x less); target:
built once (after < before / 5): met``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _copy_run(src: Path, dest_root: Path, index: int) -> None:
    """Copy one stored run under a new run id (its results.json's ``tp.run_id`` follows the new name)."""
    run_id = f"bench-{index:03d}-{src.name}"[:120]
    dest = dest_root / "runs" / run_id
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.png", "lm_eval_tasks"))
    results = json.loads((dest / "results.json").read_text(encoding="utf-8"))
    results["tp"]["run_id"] = run_id
    (dest / "results.json").write_text(json.dumps(results), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs in the simulated sweep (default 20)")
    p.add_argument("--source", type=Path, default=REPO / "results" / "runs", help="stored runs to copy")
    args = p.parse_args(argv)

    from tp_harness.reporting.leaderboard import write_leaderboard

    sources = sorted(d for d in args.source.iterdir() if (d / "results.json").is_file())
    if not sources:
        print(f"no stored runs under {args.source}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-leaderboard-") as tmp:
        before_root, after_root = Path(tmp) / "before", Path(tmp) / "after"
        before = 0.0
        for index, src in zip(range(args.runs), itertools.cycle(sources)):
            _copy_run(src, before_root, index)
            t0 = time.perf_counter()
            write_leaderboard(before_root)  # the old sweep: after every run
            before += time.perf_counter() - t0
        for index, src in zip(range(args.runs), itertools.cycle(sources)):
            _copy_run(src, after_root, index)
        t0 = time.perf_counter()
        write_leaderboard(after_root)  # the sweep now: once, at the end
        after = time.perf_counter() - t0
        same = (before_root / "LEADERBOARD.md").read_text() == (after_root / "LEADERBOARD.md").read_text()
    print(f"runs: {args.runs} (copies of {len(sources)} stored runs)")
    print(f"{'variant':<38} {'leaderboard seconds':>20}")
    print(f"{'before: rebuilt after every run':<38} {before:>20.2f}")
    print(f"{'after: built once at the end':<38} {after:>20.2f}")
    print(f"final leaderboards identical: {same}")
    ratio = before / after if after > 0 else float("inf")
    verdict = "met" if after < before / 5 and same else "missed"
    print(f"leaderboard of a {args.runs}-run sweep: before {before:.1f} s, after {after:.1f} s ({ratio:.1f}x less); "
          f"target: built once (after < before / 5): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
