"""The ``vllm`` backend: lm-eval's vLLM model on CUDA GPUs, one engine per model per process.

Owns the checks that make a missing vllm, a missing GPU or a setting the harness cannot use one clear message
instead of a traceback, and reusing one engine per (model, settings) in a process: a sweep's runs of one model,
the scorer and the reference LLM share it instead of loading the weights again (docs/scaling.md).

Model args go to ``lm_eval.models.vllm_causallms.VLLM`` unchanged (``pretrained``, ``dtype``,
``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``revision``, ``seed``, ...).
``data_parallel_size`` > 1 is refused: lm-eval implements it by building a new ``LLM`` on every call (in Ray
workers it shuts down afterwards), which would reload the weights at every optimization step. Scale out with
``tensor_parallel_size`` inside one engine, and with ``tp-harness sweep --executor ray`` or a ``vllm serve
--data-parallel-size M`` server reached through the ``openai-compatible`` backend across engines.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from tp_harness.backends.base import LMBackend, fingerprint
from tp_harness.errors import BackendError

log = logging.getLogger(__name__)

#: vLLM settings the harness passes through and documents; others go to lm-eval's VLLM unchanged too
PASSED_THROUGH = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype", "revision", "seed",
                  "swap_space", "quantization", "enable_prefix_caching", "max_num_seqs")

_ENGINES: dict[tuple, Any] = {}
#: how many vLLM engines this process built (a sweep's runs of one model must share one)
LOAD_COUNT = {"engines": 0}


def cuda_available() -> bool:
    """True when torch sees at least one CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def engine_key(args: dict[str, Any]) -> tuple:
    """The reuse key of an engine: every argument it was built with, sorted (a different setting is another
    engine)."""
    return tuple(sorted((str(k), str(v)) for k, v in args.items()))


def vllm_args(model_args: dict[str, str], *, dtype: str, batch_size: int | str) -> dict[str, Any]:
    """lm-eval ``VLLM`` keyword arguments from ``--model-args`` (which win) and the CLI's dtype and batch size.

    :raises BackendError: ``pretrained`` is missing, or ``data_parallel_size`` is above 1.
    """
    if "pretrained" not in model_args:
        raise BackendError("vllm", "no model given", "pass --model-args pretrained=/path/or/name")
    args: dict[str, Any] = {"dtype": dtype, "batch_size": batch_size, **model_args}
    try:
        data_parallel = int(args.get("data_parallel_size", 1))
    except ValueError:
        data_parallel = 0
    if data_parallel != 1:
        raise BackendError(
            "vllm", f"data_parallel_size={args['data_parallel_size']!r} is not supported inside tp-harness",
            "lm-eval rebuilds the vLLM engine on every call with it (reloading the weights at every optimization "
            "step): use tensor_parallel_size=N for one engine on N GPUs, `tp-harness sweep --executor ray` for many "
            "models, or `vllm serve --data-parallel-size M` with --model openai-compatible (docs/scaling.md)")
    args.pop("data_parallel_size", None)
    return args


def make_vllm_backend(model_args: dict[str, str], *, dtype: str = "auto", batch_size: int | str = "auto",
                      device: str = "cuda") -> LMBackend:
    """Factory of ``vllm``: one lm-eval ``VLLM`` engine per (model, settings) per process, reused by later calls.

    :raises BackendError: vllm is not installed, no CUDA device is visible, ``pretrained`` is missing, or
        ``data_parallel_size`` > 1 (see the module docstring).
    """
    if importlib.util.find_spec("vllm") is None:
        raise BackendError("vllm", "the vllm package is not installed",
                           "on a GPU machine: pip install 'tp-harness[vllm]'; on CPU use --model hf or the default "
                           "embedded model")
    args = vllm_args(model_args, dtype=dtype, batch_size=batch_size)
    if not cuda_available():
        raise BackendError("vllm", "no CUDA device is visible",
                           "use a GPU machine, or --model hf --model-args pretrained=/path/to/model on CPU")
    key = engine_key(args)
    lm = _ENGINES.get(key)
    if lm is None:
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(**args)
        _ENGINES[key] = lm
        LOAD_COUNT["engines"] += 1
        log.info("built a vLLM engine for %s (tensor_parallel_size=%s)", args["pretrained"],
                 args.get("tensor_parallel_size", 1))
    identity = {"backend": "vllm", "pretrained": args["pretrained"], "dtype": args["dtype"],
                "revision": args.get("revision"),
                "chat_template": fingerprint(getattr(lm.tokenizer, "chat_template", None))}
    return LMBackend(name="vllm", lm=lm, identity=identity, checkpoint=args["pretrained"], lm_eval_model="vllm")
