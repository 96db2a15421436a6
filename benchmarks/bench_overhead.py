"""Scoring throughput of tp-harness vs raw batched forward passes of the same model on the same tokens.

The requests are a real evaluation's ``multiple_choice`` loglikelihood requests (instruction as the system
message, chat template, option texts as continuations). Three ways to score them, measured one after
another in one process:

- raw: ``model(input_ids)`` on every request's token sequence (``context + continuation`` exactly as
  lm-eval tokenizes it), sorted by length and padded in batches of 16: the physical cost of pushing those
  tokens through the model with nothing else around it (logits only, no log-softmax, no bookkeeping);
- lm-eval: ``HFLM.loglikelihood`` on the requests (what a harness built on lm-eval pays by default);
- tp-harness: ``LMBackend.loglikelihood`` (the prefix-sharing scorer; the response cache off).

Throughput is request tokens per second (the same token count for all three). Overhead = raw rate /
tp-harness rate - 1; negative means tp-harness scores the requests faster than raw forward passes over
them can, because it pushes each shared context once. Target (issue "Performance"): overhead <= 15%.

    TP_CACHE_DIR=... python benchmarks/bench_overhead.py [--tasks commonsenseqa,financial_phrasebank] [--docs 48]
"""

from __future__ import annotations

import argparse
import logging
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="commonsenseqa,financial_phrasebank,mmlu_general")
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)

    import torch
    from tabulate import tabulate

    from tp_harness.evaluation.evaluator import prepare_task, render_context
    from tp_harness.plugin.manager import build_registries
    from tp_harness.runs.runner import build_backend, load_specs

    registries = build_registries()
    backend = build_backend("embedded:smollm2-135m", "", registries, dtype="float32", batch_size=str(args.batch),
                            cache=False)
    reqs = []
    for task in args.tasks.split(","):
        (spec,) = load_specs([task], [], registries)
        prep = prepare_task(spec, data_formats=registries.data_formats, caps={"test": args.docs})
        for i, doc in enumerate(prep.splits["test"]):
            ctx = render_context(prep, backend, instruction=spec.tp.instruction, split="test", doc_id=i)
            reqs += prep.task.construct_requests(doc=doc, ctx=ctx, metadata=(task, i, 1), apply_chat_template=True)
    seqs = []
    for r in reqs:
        ctx_enc, cont_enc = backend.lm._encode_pair(*r.args)
        seqs.append((ctx_enc + cont_enc)[:-1])  # what lm-eval feeds the model for this request
    tokens = sum(len(s) for s in seqs)
    model = backend.lm.model

    def raw() -> None:
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        with torch.no_grad():
            for start in range(0, len(order), args.batch):
                batch = [seqs[i] for i in order[start:start + args.batch]]
                width = len(batch[0])
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, s in enumerate(batch):
                    ids[row, : len(s)] = torch.tensor(s)
                    mask[row, : len(s)] = 1
                model(input_ids=ids, attention_mask=mask)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    raw()  # warm-up (allocator, kernels)
    t_raw = timed(raw)
    t_lm_eval = timed(lambda: backend.lm.loglikelihood(reqs, disable_tqdm=True))
    t_ours = timed(lambda: backend.loglikelihood(reqs))
    rows = [[name, f"{t:.1f}", f"{tokens / t:,.0f}", f"{t / t_raw:.2f}"]
            for name, t in ((f"raw forward (batch {args.batch})", t_raw), ("lm-eval HFLM", t_lm_eval),
                            ("tp-harness", t_ours))]
    print(tabulate(rows, headers=["scorer", "seconds", "request tokens/s", "time / raw"]))
    print(f"\n{len(reqs)} requests, {tokens} request tokens ({args.tasks}, {args.docs} docs each); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(f"lm-eval HFLM overhead vs raw = {t_lm_eval / t_raw - 1:+.0%}")
    overhead = t_ours / t_raw - 1
    print(f"tp-harness overhead vs raw forward = {overhead:+.0%} (target <= +15%): {'met' if overhead <= 0.15 else 'missed'}")


if __name__ == "__main__":
    main()
