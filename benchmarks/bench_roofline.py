"""How far a scoring step is from the hardware: achieved model FLOP/s against the CPU's measured matmul peak.

Issue 15, item 4. For each dtype (fp32, then bf16), in one process:

1. a real ``multiple_choice`` scoring step: the test docs of the given tasks under the original instruction,
   rendered as the harness renders them (no chat template: lm-eval's default), scored by the embedded model's
   backend with the response cache off (the prefix-sharing scorer, ``tp_harness.backends.prefix_scorer``). Its
   ``stats`` count the tokens it pushed through the decoder: ``padded`` (rows x longest row per forward pass,
   what the hardware computed) and ``tokens`` (without padding);
2. achieved FLOP/s = 2 x N x padded tokens / seconds, with N the decoder's parameters less the token embedding
   (a lookup, not a matmul): the usual forward cost C = 2N per token (Kaplan et al., 2020, section 2.1). The
   vocabulary projection at the few predicting positions and attention's own O(T^2) work are left out, so this
   under-counts slightly;
3. the machine's peak: the best FLOP/s of ``torch.matmul`` on the model's own weight shapes (hidden x hidden,
   hidden x intermediate, intermediate x hidden) with as many rows as a packed batch holds, same dtype, same
   threads (``torch.get_num_threads()``), best of several repeats;
4. forward tokens saved by prefix sharing: lm-eval scores each request as ``context + continuation`` (less the
   last token), so its token count is that sum over the requests; ours is ``tokens`` above.

Usage (about 3 minutes on 2 cores)::

    PYTHONPATH=. python benchmarks/bench_roofline.py [--tasks commonsenseqa,mmlu_general] [--docs 48]

The last printed line is the summary: ``achieved / peak FLOP/s in fp32 = X% (target >= 50%): met|missed; bf16 Y%``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def _peak_flops(model, dtype, rows: int, repeats: int) -> float:
    """Best FLOP/s of a matmul over the model's weight shapes (rows x in) @ (in x out) in ``dtype``."""
    import torch

    config = model.config
    hidden, inter = int(config.hidden_size), int(config.intermediate_size)
    best = 0.0
    for k, n in ((hidden, hidden), (hidden, inter), (inter, hidden)):
        a = torch.randn(rows, k, dtype=dtype)
        b = torch.randn(k, n, dtype=dtype)
        torch.matmul(a, b)  # warm up
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            seconds = time.perf_counter() - t0
            best = max(best, 2.0 * rows * k * n / seconds)
    return best


def _decoder_params(model) -> int:
    """Parameters of the decoder less the token embedding (a lookup)."""
    embed = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.get_decoder().parameters()) - embed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="commonsenseqa,mmlu_general,arc_challenge")
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)

    import torch
    from tabulate import tabulate

    from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
    from tp_harness.plugin.manager import build_registries
    from tp_harness.runs.runner import build_backend, load_specs

    registries = build_registries()
    rows, summary = [], {}
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        backend = build_backend("embedded:smollm2-135m", "", registries, dtype=dtype_name, batch_size="16",
                                cache=False)
        scorer = backend.fast_loglikelihood
        if scorer is None:
            print("the prefix-sharing scorer is not attached (TP_HARNESS_SCORER=lm-eval?)", file=sys.stderr)
            return 2
        jobs = []
        for task in args.tasks.split(","):
            (spec,) = load_specs([task], [], registries)
            prep = prepare_task(spec, data_formats=registries.data_formats, caps={"test": args.docs})
            jobs.append(EvalJob(prep, "test", spec.tp.instruction))
        evaluate_jobs(backend, jobs[:1], metrics=registries.metrics)  # warm-up: first-call costs out of the timing
        before = dict(scorer.stats)
        t0 = time.perf_counter()
        evaluate_jobs(backend, jobs, metrics=registries.metrics)
        seconds = time.perf_counter() - t0
        stats = {k: scorer.stats[k] - before[k] for k in scorer.stats}
        # lm-eval's token count for the same requests: context + continuation per request, less the last token
        lm = backend.lm
        from tp_harness.evaluation.evaluator import render_context

        lm_eval_tokens = 0
        for job in jobs:
            prep = job.prepared
            for i, doc in enumerate(prep.splits["test"]):
                ctx = render_context(prep, backend, instruction=job.instruction, split="test", doc_id=i)
                for req in prep.task.construct_requests(doc=doc, ctx=ctx, metadata=(prep.name, i, 1)):
                    c, k = lm._encode_pair(*req.args)
                    lm_eval_tokens += len(c) + len(k) - 1
        params = _decoder_params(lm.model)
        achieved = 2.0 * params * stats["padded"] / seconds
        rows_per_batch = max(1, stats["padded"] // max(1, stats["forward_passes"]))
        peak = _peak_flops(lm.model, dtype, rows=min(4096, rows_per_batch), repeats=args.repeats)
        summary[dtype_name] = achieved / peak
        rows.append([dtype_name, f"{params / 1e6:.1f}M", stats["forward_passes"], stats["tokens"], stats["padded"],
                     f"{seconds:.2f}", f"{achieved / 1e9:.1f}", f"{peak / 1e9:.1f}", f"{achieved / peak:.0%}",
                     lm_eval_tokens, f"{1 - stats['tokens'] / lm_eval_tokens:.0%}", stats["lm_eval_requests"]])
    print(f"tasks {args.tasks}, {args.docs} test docs each, original instruction, no chat template; "
          f"torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["dtype", "N (decoder)", "forward passes", "tokens", "padded tokens", "seconds",
                                  "achieved GFLOP/s", "matmul peak GFLOP/s", "achieved / peak",
                                  "lm-eval tokens", "tokens saved by prefix sharing", "requests to lm-eval"],
                   tablefmt="github"))
    fp32 = summary["float32"]
    print(f"achieved / peak FLOP/s in fp32 = {fp32:.0%} (target >= 50%): {'met' if fp32 >= 0.5 else 'missed'}; "
          f"bf16 {summary['bfloat16']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
