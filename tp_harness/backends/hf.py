"""The ``hf`` backend: any local transformers checkpoint, through ONE lm-eval ``HFLM`` per process.

Owns building and reusing ``HFLM`` objects (keyed by checkpoint, dtype, device, batch size), so the
scorer and the reference LLM share one model when they are the same; every call returns a new
:class:`LMBackend` wrapper around it. Never downloads from a hub: ``pretrained`` must be a local directory
(``local_files_only``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tp_harness.backends.base import LMBackend, fingerprint
from tp_harness.errors import BackendError

log = logging.getLogger(__name__)

#: the loaded models of this process: ``(checkpoint, dtype, device, batch size) -> (HFLM, model_type, chat template hash)``
_LOADED: dict[tuple, tuple[Any, Any, str | None]] = {}
#: ``--batch-size auto`` on CPU: lm-eval's probe for the largest batch that fits is a GPU-memory search
CPU_AUTO_BATCH = 16
#: how many HFLM objects this process built (tests assert the model loads once)
LOAD_COUNT = {"hflm": 0}


def _chat_template_hash(tokenizer: Any) -> str | None:
    tmpl = getattr(tokenizer, "chat_template", None)
    return fingerprint(tmpl) if tmpl else None


def load_hflm(
    checkpoint: str | Path,
    *,
    backend_name: str,
    dtype: str = "float32",
    batch_size: int | str = 16,
    device: str = "cpu",
    extra_identity: dict[str, Any] | None = None,
    loglikelihood_only: bool = False,
) -> LMBackend:
    """A new :class:`LMBackend` over the process-wide ``HFLM`` of a local HF checkpoint (loaded on first use).

    :param checkpoint: a local directory with ``config.json``, weights and tokenizer files.
    :param dtype: ``float32`` (exact, the default for tests) or ``bfloat16`` (1.3-2x faster on CPU).
    :param batch_size: requests per forward pass; ``auto``: 16 on CPU (lm-eval's memory probe only makes
        sense on a GPU, where ``auto`` is passed to lm-eval).
    :param loglikelihood_only: mark a base model (see :class:`LMBackend`); part of the reuse key.
    :raises BackendError: the directory does not exist or holds no loadable model.
    """
    path = Path(checkpoint).expanduser()
    if not (path / "config.json").is_file():
        raise BackendError(
            backend_name,
            f"no model at {str(path)!r} (config.json not found)",
            "pass a local checkpoint directory: --model hf --model-args pretrained=/path/to/model "
            "(model hubs are not reachable from tp-harness)",
        )
    if str(batch_size) == "auto":
        bs: int | str = CPU_AUTO_BATCH if device == "cpu" else "auto"
    else:
        bs = int(batch_size)
    key = (str(path.resolve()), dtype, device, str(bs))
    if key not in _LOADED:
        _LOADED[key] = _load(path, backend_name=backend_name, dtype=dtype, batch_size=bs, device=device)
    lm, model_type, chat_template = _LOADED[key]
    identity = {
        "backend": backend_name,
        "checkpoint": str(path.resolve()),
        "model_type": model_type,
        "dtype": dtype,
        "chat_template": chat_template,
        **(extra_identity or {}),
    }
    return LMBackend(name=backend_name, lm=lm, identity=identity, checkpoint=str(path.resolve()),
                     loglikelihood_only=loglikelihood_only)


def _load(path: Path, *, backend_name: str, dtype: str, batch_size: int | str, device: str
          ) -> tuple[Any, Any, str | None]:
    """Load weights and tokenizer from a local directory into an lm-eval ``HFLM``: ``(HFLM, model_type, chat
    template hash)``. :raises BackendError: unknown dtype, or the files cannot be loaded."""
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise BackendError(backend_name, f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise BackendError(backend_name, f"cannot load {str(path)!r}: {err}", "check the checkpoint files") from err
    model.eval()
    if device != "cpu":
        model.to(device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    LOAD_COUNT["hflm"] += 1
    log.info("loaded %s from %s (%s)", backend_name, path, dtype)
    return lm, getattr(model.config, "model_type", None), _chat_template_hash(tokenizer)


def checkpoint_window(path: str | Path) -> int | None:
    """The context window of a local checkpoint read from its ``config.json`` alone (no weights, no tokenizer).

    The attributes lm-eval's ``resolve_max_length`` checks first (``text_config``, then the top level:
    ``n_positions``, ``max_position_embeddings``, ``n_ctx``); None when the file names none or cannot be read.
    """
    import json

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for scope in (config.get("text_config") or {}, config):
        if isinstance(scope, dict):
            for key in ("n_positions", "max_position_embeddings", "n_ctx"):
                if isinstance(scope.get(key), int) and scope[key] > 0:
                    return int(scope[key])
    return None


def count_checkpoint_tokens(path: str | Path, text: str) -> int:
    """Tokens of ``text`` under a local checkpoint's tokenizer, loaded alone (no weights)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def hf_checkpoint(model_args: dict[str, str]) -> Path | None:
    """The local checkpoint ``make_hf_backend`` would load (``pretrained``), if it is one."""
    path = Path(model_args.get("pretrained") or "").expanduser()
    return path if model_args.get("pretrained") and (path / "config.json").is_file() else None


def make_hf_backend(model_args: dict[str, str], *, dtype: str = "float32", batch_size: int | str = 16,
                    device: str = "cpu") -> LMBackend:
    """Factory of the ``hf`` backend: ``model_args['pretrained']`` is a local checkpoint directory.

    ``dtype``, ``batch_size`` and ``device`` in ``model_args`` override the keyword defaults.
    :raises BackendError: ``pretrained`` is missing or not a loadable local checkpoint.
    """
    if "pretrained" not in model_args:
        raise BackendError("hf", "no checkpoint given", "pass --model-args pretrained=/path/to/local/model")
    return load_hflm(
        model_args["pretrained"],
        backend_name="hf",
        dtype=model_args.get("dtype", dtype),
        batch_size=model_args.get("batch_size", batch_size),
        device=model_args.get("device", device),
    )
