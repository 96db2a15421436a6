"""The numbers of docs/conformance.md: each spec with an upstream lm-eval task, stock lm-eval vs tp-harness.

Per spec and model, on the first N test docs of the spec's seeded test split (default 32, the conformance
test's docs): stock lm-eval's upstream task (``include:`` of the installed YAML, dataset overridden to those
docs), tp-harness with no instruction (must equal it), with the original instruction (template off: the new
default), and with the original instruction and the chat template (``--apply-chat-template on``, chat models).

    PYTHONPATH=. python benchmarks/conformance_table.py --models embedded:smollm2-135m,embedded:gemma3-270m \
        --docs 32 --out conformance.jsonl
    PYTHONPATH=. python benchmarks/conformance_table.py --write-task arc_challenge --docs 128 --task-dir /tmp/arc
      (writes the stock task only, for ``lm-eval run --include_path /tmp/arc --tasks tpconf_arc_challenge``)

Prints one JSON line per (model, spec) and a markdown table at the end. Needs the embedded models' GGUF
packages (docs/models.md); reads no hub (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 are set here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="embedded:smollm2-135m")
    p.add_argument("--tasks", default=None, help="comma-separated specs (default: every spec with tp.upstream)")
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument("--write-task", default=None, metavar="SPEC", help="only write SPEC's stock task to --task-dir")
    p.add_argument("--task-dir", type=Path, default=None)
    args = p.parse_args(argv)

    from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
    from tp_harness.interop.conformance import (
        check_conformance,
        prepare_upstream,
        stock_model,
        upstream_config,
        write_stock_task,
    )
    from tp_harness.plugin.manager import build_registries
    from tp_harness.runs.runner import build_backend, load_specs, spec_index
    from tp_harness.spec.loader import load_spec

    registries = build_registries()
    if args.write_task:
        (spec,) = load_specs([args.write_task], [], registries)
        prep = prepare_upstream(spec, registries, limit=args.docs, apply_chat_template="off")
        task = write_stock_task(spec, prep.splits, args.task_dir)
        print(task)
        return 0
    names = args.tasks.split(",") if args.tasks else sorted(
        n for n, path in spec_index().items() if load_spec(path).tp.upstream is not None)
    rows = []
    for model in args.models.split(","):
        backend = build_backend(model, "", registries, dtype="float32", batch_size="16")
        stock = stock_model(str(backend.checkpoint))
        for name in names:
            t0 = time.time()
            (spec,) = load_specs([name], [], registries)
            result = check_conformance(spec, backend, registries, stock=stock,
                                       work_dir=Path(tempfile.mkdtemp(prefix="tpconf-")), limit=args.docs)
            jobs = [EvalJob(prepare_task(spec, data_formats=registries.data_formats, caps={"test": args.docs},
                                         apply_chat_template="off"), "test", spec.tp.instruction)]
            if backend.has_chat_template:
                jobs.append(EvalJob(prepare_task(spec, data_formats=registries.data_formats, caps={"test": args.docs},
                                                 apply_chat_template="on"), "test", spec.tp.instruction))
            evs = evaluate_jobs(backend, jobs, metrics=registries.metrics)
            row = {"model": model, "task": name, "upstream": spec.tp.upstream.task_yaml, "n": result.n,
                   "deviates": sorted(spec.tp.upstream.fields),
                   "upstream_reports_acc_norm": any(m.get("metric") == "acc_norm"
                                                    for m in upstream_config(spec).get("metric_list") or []),
                   "stock": result.stock, "empty": {k: result.harness.get(k) for k in ("acc", "acc_norm")},
                   "original_off": {k: evs[0].metrics.get(k) for k in ("acc", "acc_norm")},
                   "original_on": {k: evs[1].metrics.get(k) for k in ("acc", "acc_norm")} if len(evs) > 1 else None,
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
    print("\n| model | task | n | stock ACC / acc_norm | tp-harness, no instruction | original instruction | "
          "difference (ACC) | original + chat template |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        on = r["original_on"]
        print(f"| {r['model']} | {r['task']} | {r['n']} | {_fmt(r['stock'].get('acc'))} / "
              f"{_fmt(r['stock'].get('acc_norm'))} | {_fmt(r['empty']['acc'])} / {_fmt(r['empty']['acc_norm'])} | "
              f"{_fmt(r['original_off']['acc'])} / {_fmt(r['original_off']['acc_norm'])} | "
              f"{r['original_off']['acc'] - r['stock']['acc']:+.3f} | "
              f"{_fmt(on['acc']) + ' / ' + _fmt(on['acc_norm']) if on else 'n/a (no template)'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
