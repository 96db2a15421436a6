"""``--dtype bfloat16`` vs ``float32`` on CPU: the same evaluation scored by both, side by side in one run.

Both backends score the same prompts (the original instruction of each task) on the same test docs through
``evaluator.evaluate_jobs`` (prefix-sharing scorer, response cache off); the bfloat16 one is a second copy
of the embedded model's weights. Prints each wall time, the ACC of both (bfloat16 rounds the
loglikelihoods, so a near tie can flip an answer), and, as its last line, the speedup.

    TP_CACHE_DIR=... python benchmarks/bench_dtype.py [--tasks commonsenseqa,mmlu_general] [--docs 64]

The issue "Performance" quotes 1.3-2x for bfloat16 on CPU; the speedup depends on the CPU's bf16 support
(AVX-512 BF16 / AMX run it natively; older CPUs emulate it and can be slower than float32).
"""

from __future__ import annotations

import argparse
import logging
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="commonsenseqa,mmlu_general")
    parser.add_argument("--docs", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)

    import torch
    from tabulate import tabulate

    from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
    from tp_harness.plugin.manager import build_registries
    from tp_harness.runs.runner import build_backend, load_specs

    registries = build_registries()
    specs = load_specs(args.tasks.split(","), [], registries)
    preps = [prepare_task(s, data_formats=registries.data_formats, caps={"test": args.docs}) for s in specs]
    jobs = [EvalJob(p, "test", p.spec.tp.instruction) for p in preps]
    requests = sum(len(p.task.doc_to_choice(d)) for p in preps for d in p.splits["test"])

    rows, seconds = [], {}
    for dtype in ("float32", "bfloat16"):
        backend = build_backend("embedded:smollm2-135m", "", registries, dtype=dtype, batch_size="auto", cache=False)
        evaluate_jobs(backend, jobs[:1], metrics=registries.metrics)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        evs = evaluate_jobs(backend, jobs, metrics=registries.metrics)
        seconds[dtype] = time.perf_counter() - t0
        rows.append([dtype, f"{seconds[dtype]:.1f}", f"{requests / seconds[dtype]:.1f}",
                     *(f"{ev.metrics['acc']:.4f}" for ev in evs)])
    print(tabulate(rows, headers=["dtype", "seconds", "requests / s", *(f"ACC {p.name}" for p in preps)]))
    print(f"\n{requests} loglikelihood requests ({args.tasks}, {args.docs} test docs each); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch size auto (16 on CPU)")
    speedup = seconds["float32"] / seconds["bfloat16"]
    print(f"bfloat16 speedup (float32 / bfloat16) = {speedup:.2f}x (target: the quoted 1.3-2x or more): "
          f"{'met' if speedup >= 1.3 else 'missed'}")


if __name__ == "__main__":
    main()
