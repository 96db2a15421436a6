"""The ``hf`` backend: any local transformers checkpoint, through ONE lm-eval ``HFLM`` per process.

Owns building and reusing ``HFLM`` objects (keyed by checkpoint, dtype, device, batch size), so the
scorer and the reference LLM share one model when they are the same; every call returns a new
:class:`LMBackend` wrapper around it. The weights load on the first request the response cache cannot
answer (:class:`LazyHFLM`): a warm re-run never loads them. Never downloads from a hub: ``pretrained`` must be a local directory
(``local_files_only``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tp_harness.backends.base import LMBackend, fingerprint
from tp_harness.errors import BackendError

log = logging.getLogger(__name__)

#: the models of this process: ``(checkpoint, dtype, device, batch size) -> LazyHFLM`` (weights load on first use)
_LOADED: dict[tuple, LazyHFLM] = {}
#: ``--batch-size auto`` on CPU: lm-eval's probe for the largest batch that fits is a GPU-memory search
CPU_AUTO_BATCH = 16
#: how many HFLM objects (weights) this process loaded (tests assert the model loads once, or not at all)
LOAD_COUNT = {"hflm": 0}
DTYPES = ("float32", "bfloat16", "float16")
#: tokenizer classes that ``PreTrainedTokenizerFast`` loads as ``AutoTokenizer`` does, from ``tokenizer.json`` alone
#: (``AutoTokenizer`` reads the model config first, which imports torch: 1-2 s a warm run does not need)
_PLAIN_FAST_TOKENIZERS = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _chat_template_hash(tokenizer: Any) -> str | None:
    tmpl = getattr(tokenizer, "chat_template", None)
    return fingerprint(tmpl) if tmpl else None


class LazyHFLM:
    """An lm-eval ``HFLM`` over a local checkpoint whose weights are loaded on first use.

    What a run needs before the model computes anything comes from the checkpoint's files: the tokenizer (for
    token counts and the chat template), the model type (for the backend identity and the prefix-sharing scorer)
    and the context window (:attr:`max_length`, lm-eval's ``resolve_max_length`` over ``config.json``). The first
    request that reaches the model (a response-cache miss) imports torch, loads the weights and builds the
    ``HFLM`` with the same tokenizer object; from then on the ``HFLM`` answers every attribute. So a warm re-run,
    whose responses are all in the cache, never imports torch nor loads the weights (issue 15, item 3).

    Built once per (checkpoint, dtype, device, batch size) per process by :func:`load_hflm` and shared by every
    backend wrapper over that checkpoint; its only state is what it has loaded.

    :raises BackendError: (on first use) the weights cannot be loaded.
    """

    backend = "causal"  # an AutoModelForCausalLM, as lm-eval's HFLM.backend says
    lazy = True

    def __init__(self, path: Path, *, backend_name: str, dtype: str, batch_size: int | str, device: str) -> None:
        self.path, self.backend_name, self.dtype = path, backend_name, dtype
        self.batch_size_arg, self.device_arg = batch_size, device
        self.chat_template_args: dict[str, Any] = {}
        config = _read_json(path / "config.json")
        #: the architecture (``config.json``'s ``model_type``, e.g. ``llama``), known without loading weights
        self.model_type: str | None = config.get("model_type")
        self._config_window = checkpoint_window(path)
        self._tokenizer: Any = None
        self._hflm: Any = None
        self._lock = threading.RLock()  # hflm() reads the tokenizer under it

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded (the first cache miss loads them)."""
        return self._hflm is not None

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer, loaded alone (no weights, no torch where the files allow it)."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer(self.path, self.backend_name)
        return self._tokenizer

    @property
    def max_length(self) -> int:
        """The context window in tokens: lm-eval's ``resolve_max_length`` order (``config.json``, then the
        tokenizer's ``model_max_length`` unless unset, then 2048), the loaded ``HFLM``'s own once loaded."""
        if self._hflm is not None:
            return int(self._hflm.max_length)
        if self._config_window is not None:
            return self._config_window
        value = getattr(self.tokenizer, "model_max_length", None)
        return int(value) if isinstance(value, int) and 0 < value < 10**12 else 2048

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """``HFLM.apply_chat_template`` of lm-eval 0.4.13, on the tokenizer alone (same arguments, same fallback
        without the system turn when the template refuses it)."""
        import jinja2

        kwargs = dict(tokenize=False, add_generation_prompt=add_generation_prompt,
                      continue_final_message=not add_generation_prompt, **self.chat_template_args)
        try:
            return self.tokenizer.apply_chat_template(chat_history, **kwargs)
        except jinja2.exceptions.TemplateError:
            log.warning("Failed to apply chat template. removing the system role in chat history.")
            return self.tokenizer.apply_chat_template([m for m in chat_history if m["role"] != "system"], **kwargs)

    def hflm(self) -> Any:
        """The lm-eval ``HFLM`` (weights loaded on the first call). :raises BackendError: it cannot be loaded."""
        if self._hflm is None:
            with self._lock:
                if self._hflm is None:
                    self._hflm = _load(self.path, tokenizer=self.tokenizer, backend_name=self.backend_name,
                                       dtype=self.dtype, batch_size=self.batch_size_arg, device=self.device_arg)
        return self._hflm

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in _OWN:
            raise AttributeError(name)
        return getattr(self.hflm(), name)  # loglikelihood, generate_until, _encode_pair, model, ...

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:  # e.g. a test's monkeypatch of batch_size_per_gpu: it must reach the HFLM that scores
            setattr(self.hflm(), name, value)

    def __delattr__(self, name: str) -> None:
        if name in _OWN:
            object.__delattr__(self, name)
        else:
            delattr(self.hflm(), name)


#: the attributes a LazyHFLM keeps itself; every other one is the HFLM's
_OWN = frozenset({"path", "backend_name", "dtype", "batch_size_arg", "device_arg", "chat_template_args", "model_type",
                  "_config_window", "_tokenizer", "_hflm", "_lock"})


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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
    """A new :class:`LMBackend` over the process-wide :class:`LazyHFLM` of a local HF checkpoint.

    The tokenizer loads here (the identity holds its chat template's hash); the weights load on the first
    request the response cache cannot answer.

    :param checkpoint: a local directory with ``config.json``, weights and tokenizer files.
    :param dtype: ``float32`` (exact, the default for tests) or ``bfloat16`` (1.3-2x faster on CPU).
    :param batch_size: requests per forward pass; ``auto``: 16 on CPU (lm-eval's memory probe only makes
        sense on a GPU, where ``auto`` is passed to lm-eval).
    :param loglikelihood_only: mark a base model (see :class:`LMBackend`); part of the reuse key.
    :raises BackendError: the directory does not exist or holds no model weights, the dtype is unknown, or the
        tokenizer cannot be loaded.
    """
    path = Path(checkpoint).expanduser()
    problem = None
    if not (path / "config.json").is_file():
        problem = "config.json not found"
    elif not any((path / w).is_file() for w in _WEIGHTS):
        problem = f"no weights: none of {', '.join(_WEIGHTS)}"
    if problem:
        raise BackendError(
            backend_name,
            f"no model at {str(path)!r} ({problem})",
            "pass a local checkpoint directory: --model hf --model-args pretrained=/path/to/model "
            "(model hubs are not reachable from tp-harness)",
        )
    if dtype not in DTYPES:
        raise BackendError(backend_name, f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
    if str(batch_size) == "auto":
        bs: int | str = CPU_AUTO_BATCH if device == "cpu" else "auto"
    else:
        bs = int(batch_size)
    key = (str(path.resolve()), dtype, device, str(bs))
    if key not in _LOADED:
        _LOADED[key] = LazyHFLM(path, backend_name=backend_name, dtype=dtype, batch_size=bs, device=device)
    lm = _LOADED[key]
    identity = {
        "backend": backend_name,
        "checkpoint": str(path.resolve()),
        "model_type": lm.model_type,
        "dtype": dtype,
        "chat_template": _chat_template_hash(lm.tokenizer),
        **(extra_identity or {}),
    }
    return LMBackend(name=backend_name, lm=lm, identity=identity, checkpoint=str(path.resolve()),
                     loglikelihood_only=loglikelihood_only)


def _load_tokenizer(path: Path, backend_name: str) -> Any:
    """The checkpoint's tokenizer as ``AutoTokenizer`` gives it; a plain fast tokenizer (``tokenizer.json``) is
    built directly, which skips the model config (and torch). :raises BackendError: it cannot be loaded."""
    try:
        if (path / "tokenizer.json").is_file() and \
                _read_json(path / "tokenizer_config.json").get("tokenizer_class") in _PLAIN_FAST_TOKENIZERS:
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        import transformers

        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise BackendError(backend_name, f"cannot load the tokenizer of {str(path)!r}: {err}",
                           "check the checkpoint files") from err


def _load(path: Path, *, tokenizer: Any, backend_name: str, dtype: str, batch_size: int | str, device: str) -> Any:
    """Load the weights from a local directory into an lm-eval ``HFLM`` with ``tokenizer``.

    :raises BackendError: the files cannot be loaded."""
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BackendError(backend_name, f"cannot load {str(path)!r}: {err}", "check the checkpoint files") from err
    model.eval()
    if device != "cpu":
        model.to(device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    LOAD_COUNT["hflm"] += 1
    log.info("loaded %s from %s (%s)", backend_name, path, dtype)
    return lm


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
