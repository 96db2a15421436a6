"""The ``vllm`` backend: lm-eval's vLLM model on a CUDA GPU.

Owns the checks that make a missing vllm or a missing GPU one clear message instead of a traceback.
"""

from __future__ import annotations

import importlib.util

from ..errors import BackendError
from .base import LMBackend, fingerprint


def cuda_available() -> bool:
    """True when torch sees at least one CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def make_vllm_backend(model_args: dict[str, str], *, dtype: str = "auto", batch_size: int | str = "auto",
                      device: str = "cuda") -> LMBackend:
    """Factory of ``vllm``: ``model_args`` go to ``lm_eval.models.vllm_causallms.VLLM`` unchanged.

    :raises BackendError: vllm is not installed, no CUDA device is visible, or ``pretrained`` is missing.
    """
    if importlib.util.find_spec("vllm") is None:
        raise BackendError("vllm", "the vllm package is not installed",
                           "on a GPU machine: pip install 'tp-harness[vllm]'; on CPU use --model hf or the default "
                           "embedded model")
    if not cuda_available():
        raise BackendError("vllm", "no CUDA device is visible",
                           "use a GPU machine, or --model hf --model-args pretrained=/path/to/model on CPU")
    if "pretrained" not in model_args:
        raise BackendError("vllm", "no model given", "pass --model-args pretrained=/path/or/name")
    from lm_eval.models.vllm_causallms import VLLM

    args = {"dtype": dtype, "batch_size": batch_size, **model_args}
    lm = VLLM(**args)
    identity = {"backend": "vllm", "pretrained": model_args["pretrained"], "dtype": args["dtype"],
                "revision": model_args.get("revision"),
                "chat_template": fingerprint(getattr(lm.tokenizer, "chat_template", None))}
    return LMBackend(name="vllm", lm=lm, identity=identity, checkpoint=model_args["pretrained"],
                     lm_eval_model="vllm")
