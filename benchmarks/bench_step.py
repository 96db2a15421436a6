"""One optimization step, tp-harness vs the naive loop, side by side on the same machine.

tp-harness: the requests of all candidates of a step go to the backend in one call
(``evaluator.evaluate_jobs``), scored by the prefix-sharing scorer (one forward pass per question for
all its choices, vocabulary projection only at continuation positions); the response cache is off.
Naive: one ``lm_eval.simple_evaluate`` per candidate on a reused ``HFLM`` (the same model object, the
same lm-eval task object and docs, the instruction as the system message), which is what a user would
write around lm-eval. Both score the same candidates on the same docs; the ACC of every candidate is
asserted equal. Target (issue "Performance"): >= 3x faster.

    TP_CACHE_DIR=... python benchmarks/bench_step.py [--task commonsenseqa] [--candidates 8] [--docs 64]

Prints a table and, as its last line, ``step speedup (naive / tp-harness) = N.NNx (target >= 3x): met|missed``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

CANDIDATES = [
    "Answer the following commonsense question by choosing the most sensible option.",
    "Choose the most sensible answer to the everyday question.",
    "Think about everyday situations and pick the best option.",
    "Read the question and the five options carefully, then pick the most plausible one.",
    "You are a helpful assistant. Select the option a sensible person would choose.",
    "Pick the answer that best fits common sense.",
    "Eliminate clearly wrong options first, then choose the most sensible one.",
    "Answer with the option that makes the most sense in daily life.",
    "Consider each option and choose the one that is most reasonable.",
    "Select the single best answer.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="commonsenseqa")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--docs", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)

    import lm_eval
    import torch
    from tabulate import tabulate

    from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
    from tp_harness.plugin.manager import build_registries
    from tp_harness.runs.runner import build_backend, load_specs

    registries = build_registries()
    backend = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size="16", cache=False)
    hflm = backend.lm.hflm()  # the weights load here (they load lazily), before anything is timed
    (spec,) = load_specs([args.task], [], registries)
    prep = prepare_task(spec, data_formats=registries.data_formats, caps={"test": args.docs})
    prompts = CANDIDATES[: args.candidates]
    n_docs = len(prep.splits["test"])
    requests = sum(len(prep.task.doc_to_choice(d)) for d in prep.splits["test"]) * len(prompts)

    t0 = time.perf_counter()
    ours = evaluate_jobs(backend, [EvalJob(prep, "test", p) for p in prompts], metrics=registries.metrics)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive = []
    for prompt in prompts:
        out = lm_eval.simple_evaluate(
            model=hflm, tasks=[prep.task], system_instruction=prompt + "\n\n", apply_chat_template=True,
            bootstrap_iters=0, random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            verbosity="ERROR",
        )
        naive.append(out["results"][prep.task.config.task]["acc,none"])
    t_naive = time.perf_counter() - t0

    rows = [[p[:60], f"{ev.metrics['acc']:.4f}", f"{acc:.4f}"] for p, ev, acc in zip(prompts, ours, naive)]
    print(tabulate(rows, headers=["candidate", "ACC tp-harness", "ACC lm-eval"]))
    mismatched = [r for r in rows if r[1] != r[2]]
    print(f"\n{args.task}: {len(prompts)} candidates x {n_docs} docs = {requests} loglikelihood requests; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"tp-harness step: {t_ours:.1f} s ({requests / t_ours:.1f} req/s)")
    print(f"naive simple_evaluate loop: {t_naive:.1f} s ({requests / t_naive:.1f} req/s)")
    assert not mismatched, f"ACC differs for {len(mismatched)} candidates: {mismatched}"
    speedup = t_naive / t_ours
    print(f"step speedup (naive / tp-harness) = {speedup:.2f}x (target >= 3x): {'met' if speedup >= 3 else 'missed'}")


if __name__ == "__main__":
    main()
