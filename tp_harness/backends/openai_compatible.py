"""The ``openai-compatible`` backend: a model behind an OpenAI-compatible HTTP server (vLLM, llama.cpp, ...).

Owns turning ``--model-args`` into one of lm-eval's API models, ``local-completions`` or, with
``chat=true``, ``local-chat-completions`` (``lm_eval/models/openai_completions.py``), the API key read
from an environment variable, a reachability check of the server before the first request, and
``BackendError`` messages for what goes wrong on the wire. It never starts a server.

Model args (lm-eval's names where lm-eval has one):
- ``base_url`` (required): the API root, ``http://HOST:PORT/v1``; a full ``.../completions`` or
  ``.../chat/completions`` endpoint is accepted as well.
- ``model`` (required): the model name the server serves.
- ``chat``: ``true`` sends chat messages to ``/chat/completions`` (the server applies the model's chat
  template); ``false`` (default) sends prompt strings to ``/completions``.
- ``tokenizer``: a local Hugging Face tokenizer directory of the served model. With ``chat=false`` it renders
  the chat template client-side and makes loglikelihood (``multiple_choice``) requests possible.
- ``tokenized_requests``: send token ids instead of strings (lm-eval's flag; needs ``tokenizer``); default false.
- ``num_concurrent``: requests in flight at once (lm-eval's concurrency); default 1.
- ``api_key_env``: the environment variable holding the API key; default ``OPENAI_API_KEY``. A key, when
  set, goes out as ``Authorization: Bearer <key>``; a local server usually needs none.
- anything else (``max_retries``, ``timeout``, ``max_length``, ``max_gen_toks``, ``batch_size``, ...)
  is passed to lm-eval's model unchanged.

Servers' echoed prompt log-probabilities (lm-eval's loglikelihood over ``/completions``) differ between
servers and are often missing or approximate: score such models in ``generate_until`` mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tp_harness.backends.base import LMBackend
from tp_harness.errors import BackendError

log = logging.getLogger(__name__)

NAME = "openai-compatible"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_OURS = ("base_url", "model", "chat", "tokenizer", "tokenized_requests", "num_concurrent", "api_key_env")


def _flag(model_args: dict[str, str], key: str, default: bool) -> bool:
    """A boolean model arg (``true``/``false``, ``1``/``0``, ``yes``/``no``); :raises BackendError: anything else."""
    value = model_args.get(key)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BackendError(NAME, f"model arg {key}={value!r} is not a boolean", f"pass {key}=true or {key}=false")


def api_root(base_url: str) -> str:
    """The API root of ``base_url``: ``http://h:p/v1/completions`` and ``.../v1/chat/completions`` -> ``http://h:p/v1``.

    :raises BackendError: ``base_url`` is not an ``http://`` or ``https://`` URL.
    """
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BackendError(NAME, f"base_url={base_url!r} is not an http(s) URL",
                           "pass the server's API root, e.g. --model-args base_url=http://127.0.0.1:8000/v1,model=NAME")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def check_server(root: str, *, model: str, headers: dict[str, str], timeout: float = 10.0) -> list[str]:
    """Ask the server for ``GET <root>/models``; return the model ids it lists (empty when it lists none).

    Any HTTP answer means a server is there (some servers have no ``/models``); a 401/403 means the key is wrong.
    :raises BackendError: nothing answers at ``root`` (connection refused, DNS failure, timeout) or it refuses the key.
    """
    request = urllib.request.Request(f"{root}/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise BackendError(NAME, f"the server at {root} refused the API key (HTTP {err.code})",
                               "set the right key in the environment variable named by api_key_env "
                               f"(default {DEFAULT_API_KEY_ENV})") from None
        return []
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BackendError(NAME, f"no server reachable at {root} ({reason})",
                           "start the server first (e.g. vllm serve NAME, or python -m llama_cpp.server --model "
                           "FILE.gguf) and check base_url's host and port") from None
    try:
        listed = [str(m.get("id")) for m in json.loads(body).get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return []
    if listed and model not in listed:
        log.warning("%s: the server at %s lists models %s, not %r; it may serve another model", NAME, root, listed,
                    model)
    return listed


@dataclass(frozen=True)
class OpenAICompatibleBackend(LMBackend):
    """An :class:`LMBackend` over lm-eval's ``local-completions`` / ``local-chat-completions`` model.

    :param is_chat: requests go to ``/chat/completions`` as messages; the server applies the chat template.
    :param base_url: the API root the requests go to (for messages).
    """

    is_chat: bool = False
    base_url: str = ""

    @property
    def has_chat_template(self) -> bool:
        """Chat mode, or a local tokenizer (``tokenizer=``) that carries a chat template."""
        if self.is_chat:
            return True
        tok = getattr(self.lm, "tokenizer", None)
        return bool(getattr(tok, "chat_template", None))

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> Any:
        """Chat mode: lm-eval's JSON message list (``JsonChatStr``), sent as is. Otherwise the local tokenizer's
        chat template rendered to the prompt string."""
        if self.is_chat:
            return self.lm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.lm.tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)

    def count_tokens(self, texts: Sequence[Any]) -> int:
        """Tokens of ``texts`` under the local tokenizer; 0 without one (the server does not say)."""
        tok = getattr(self.lm, "tokenizer", None)
        if tok is None or not callable(tok) or not texts:
            return 0
        plain = [t.prompt if hasattr(t, "prompt") else str(t) for t in texts]
        return sum(len(ids) for ids in tok(plain, add_special_tokens=False)["input_ids"])

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """Loglikelihoods from the server's echoed prompt log-probabilities (``/completions``, ``tokenizer`` set).

        :raises BackendError: chat mode or no ``tokenizer`` (the server cannot score continuations then), or the
            server fails.
        """
        if len(requests) and (self.is_chat or getattr(self.lm, "tokenizer", None) is None):
            raise BackendError(
                NAME,
                "multiple_choice (loglikelihood) scoring needs /completions with echoed log-probabilities and a local "
                "tokenizer" + (", but chat=true" if self.is_chat else ", but no tokenizer= was given"),
                "score in generate_until mode (--output-type generate_until), or pass chat=false,tokenizer=/path/to/"
                "tokenizer (many servers' echoed log-probabilities are unreliable)",
            )
        with _wire_errors(self.base_url):
            return super().loglikelihood(requests)

    def generate_until(self, requests: Sequence[Any], *, rollout_seed: int | None = None) -> list[str]:
        """Generations from the server, one per request, in order, each cut before its first stop sequence.

        The OpenAI API leaves the stop sequence out of the text; some servers (``transformers serve``) keep it,
        and lm-eval's API models pass the text on as is. Cutting it here makes every server's answer what
        lm-eval's ``hf`` backend returns for the same generation.
        :raises BackendError: the server fails.
        """
        with _wire_errors(self.base_url):
            texts = super().generate_until(requests, rollout_seed=rollout_seed)
        return [cut_at_stop(text, _stop_sequences(req)) for text, req in zip(texts, requests)]


def _stop_sequences(request: Any) -> list[str]:
    """The ``until`` strings of an lm-eval ``generate_until`` request (an ``Instance`` or a ``(context, kwargs)``)."""
    args = getattr(request, "args", request)
    kwargs = args[1] if isinstance(args, (tuple, list)) and len(args) > 1 and isinstance(args[1], dict) else {}
    until = kwargs.get("until") or []
    return [until] if isinstance(until, str) else [u for u in until if isinstance(u, str) and u]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any of ``stops`` (as lm-eval's ``hf`` backend cuts); unchanged
    when none occurs."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


@contextlib.contextmanager
def _wire_errors(root: str) -> Iterator[None]:
    """Turn the HTTP client's errors (requests, aiohttp, tenacity's RetryError) into a :class:`BackendError`."""
    try:
        yield
    except BackendError:
        raise
    except Exception as err:
        module = type(err).__module__.split(".")[0]
        if module in ("requests", "aiohttp", "tenacity", "urllib3") or isinstance(err, (ConnectionError, TimeoutError)):
            raise BackendError(NAME, f"the server at {root} failed: {type(err).__name__}: {err}",
                               "check that the server is still running and serves the model; raise timeout= or "
                               "max_retries= in --model-args for a slow server") from err
        raise


def make_openai_compatible_backend(model_args: dict[str, str], *, dtype: str = "auto", batch_size: int | str = 1,
                                   device: str | None = None) -> LMBackend:
    """Factory of ``openai-compatible``: lm-eval's ``local-completions`` or ``local-chat-completions`` (``chat=true``).

    ``dtype``, ``device`` and the CLI's ``batch_size`` are the server's business and are ignored; a
    ``batch_size`` model arg (prompts per ``/completions`` request, for servers that take lists) is lm-eval's.
    Concurrency is ``num_concurrent``. See the module docstring for the model args.
    :raises BackendError: ``base_url`` or ``model`` is missing, a flag is not a boolean, lm-eval's API extras are
        not installed, the API key variable named by ``api_key_env`` is unset, or no server answers at ``base_url``.
    """
    del dtype, device, batch_size
    missing = [key for key in ("base_url", "model") if not model_args.get(key)]
    if missing:
        raise BackendError(NAME, f"missing model arg(s): {', '.join(missing)}",
                           "pass --model-args base_url=http://127.0.0.1:8000/v1,model=NAME (the API root and the "
                           "model name the server serves)")
    import importlib.util

    absent = [pkg for pkg in ("aiohttp", "tenacity", "requests") if importlib.util.find_spec(pkg) is None]
    if absent:
        raise BackendError(NAME, f"lm-eval's API client packages are not installed: {', '.join(absent)}",
                           "pip install 'tp-harness[openai]' (or: pip install 'lm-eval[api]')")
    root = api_root(model_args["base_url"])
    model = model_args["model"]
    is_chat = _flag(model_args, "chat", False)
    tokenizer = model_args.get("tokenizer") or None
    tokenized = _flag(model_args, "tokenized_requests", False)
    if tokenized and (tokenizer is None or is_chat):
        raise BackendError(NAME, "tokenized_requests=true needs chat=false and a local tokenizer",
                           "pass tokenizer=/path/to/tokenizer, or drop tokenized_requests")
    key_env = model_args.get("api_key_env") or DEFAULT_API_KEY_ENV
    if model_args.get("api_key_env") and key_env not in os.environ:
        raise BackendError(NAME, f"api_key_env={key_env} but the environment variable {key_env} is not set",
                           f"export {key_env}=<your key>, or drop api_key_env for a server without keys")
    key = os.environ.get(key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    check_server(root, model=model, headers=headers)

    if tokenizer and not (Path(tokenizer).expanduser() / "tokenizer_config.json").is_file():
        raise BackendError(NAME, f"tokenizer={tokenizer} is not a local tokenizer directory (no tokenizer_config.json)",
                           "pass tokenizer=/path/to/a/local/model/or/tokenizer (model hubs are not reachable from "
                           "tp-harness)")
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI
    from lm_eval.utils import handle_arg_string

    extra = {k: handle_arg_string(str(v)) for k, v in model_args.items() if k not in _OURS and k != "name"}
    batch = extra.pop("batch_size", 1)  # prompts per request: only if the server takes lists (llama.cpp does not)
    try:
        num_concurrent = int(model_args.get("num_concurrent", 1))
    except ValueError:
        raise BackendError(NAME, f"num_concurrent={model_args['num_concurrent']!r} is not an integer",
                           "pass num_concurrent=8 (requests in flight at once)") from None
    common = {"model": model, "num_concurrent": num_concurrent, "header": headers or None, **extra}
    try:
        if is_chat:
            lm = LocalChatCompletion(base_url=f"{root}/chat/completions", tokenizer_backend=None,
                                     tokenized_requests=False, **common)
        else:
            lm = LocalCompletionsAPI(base_url=f"{root}/completions", tokenizer=tokenizer,
                                     tokenizer_backend="huggingface" if tokenizer else None,
                                     tokenized_requests=tokenized, batch_size=batch, **common)
    except (OSError, ValueError, TypeError) as err:
        raise BackendError(NAME, f"cannot build lm-eval's API model: {err}",
                           "check tokenizer= (a local tokenizer directory) and the other model args") from err
    identity = {"backend": NAME, "base_url": root, "model": model, "chat": is_chat,
                "tokenizer": tokenizer, "tokenized_requests": tokenized}
    return OpenAICompatibleBackend(name=NAME, lm=lm, identity=identity, checkpoint=None,
                                   lm_eval_model="local-chat-completions" if is_chat else "local-completions",
                                   is_chat=is_chat, base_url=root)
