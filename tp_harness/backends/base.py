"""The model backend contract: what the evaluator and the optimizer may ask of a model.

A backend wraps one lm-eval ``LM`` (``HFLM``, ``VLLM``, ...) and adds what tp-harness needs around
it: a stable identity (for caching keys and journals), chat-template rendering, and sampling for the
reference LLM. Requests are lm-eval ``Instance`` objects; results come back one per request, in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tp_harness.errors import BackendError

log = logging.getLogger(__name__)


REFERENCE_BASE_MODEL_PROBLEM = ("is a base model without a chat template: it cannot be the reference LLM "
                                "(it does not follow the meta-prompt's request to write an instruction)")
REFERENCE_BASE_MODEL_FIX = ("leave --reference-model unset (a scorer without a chat template gets the default "
                            "embedded:smollm2-135m as its reference LLM) or name an instruct model, e.g. "
                            "--reference-model embedded:smollm2-135m")


@dataclass(frozen=True)
class LMBackend:
    """A scorer or reference LLM served through one lm-eval ``LM`` object.

    A backend is a wrapper built fresh by every :func:`tp_harness.backends.resolve_backend` call (the
    ``build_backend`` of the CLI and the API); what it wraps, the loaded model, is built once per process and
    shared. Its fields are fixed when it is built (use :meth:`with_options` for a variant); only its request
    counters ``issued`` and ``computed`` change, and they are its own.

    :param name: the backend name the user gave (``embedded:smollm2-135m``, ``hf``, ``vllm``).
    :param lm: the lm-eval LM (e.g. ``lm_eval.models.huggingface.HFLM``), built once per process.
    :param identity: model identity (path or name, revision, dtype, chat template hash): the key of
        cache entries and the model description written to ``config.json``.
    :param checkpoint: a local path that stock ``lm-eval --model hf --model_args pretrained=...`` can
        load to reproduce this backend, when there is one.
    :param loglikelihood_only: a base model without a chat template (e.g. ``embedded:gemma3-270m``): it
        scores ``multiple_choice`` requests only; :meth:`generate_until` and :meth:`sample` raise
        :class:`BackendError` instead of returning text it was never trained to produce.
    :param cache: a :class:`~tp_harness.backends.cache.ResponseCache` answering repeated requests, or None.
    :param fast_loglikelihood: an object with ``loglikelihood(requests)`` that scores instead of lm-eval (the
        prefix-sharing scorer), or None; its method is part of ``identity`` (``loglikelihood_scorer``).
    """

    name: str
    lm: Any
    identity: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    lm_eval_model: str = "hf"
    loglikelihood_only: bool = False

    cache: Any = field(default=None, repr=False)  # a ResponseCache, or None (--no-cache)
    fast_loglikelihood: Any = field(default=None, repr=False)  # e.g. a PrefixSharingScorer; else lm-eval scores
    #: requests asked of this wrapper, and those its model computed (the rest came from the cache), by type
    issued: dict[str, int] = field(default_factory=lambda: {"loglikelihood": 0, "generate_until": 0}, repr=False,
                                   init=False, compare=False)
    computed: dict[str, int] = field(default_factory=lambda: {"loglikelihood": 0, "generate_until": 0}, repr=False,
                                     init=False, compare=False)

    def with_options(self, **changes: Any) -> LMBackend:
        """A new wrapper of the same loaded model with ``changes`` (e.g. ``cache=None``) and counters at 0."""
        return dataclasses.replace(self, **changes)

    # -- requests -------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """Score ``(context, continuation)`` requests: one ``(loglikelihood, is_greedy)`` per request, in order.

        ``loglikelihood`` is the sum of the continuation tokens' log-probabilities (natural log). Answers
        come from the response cache when it holds them; only the others reach the model.
        """
        def compute(reqs: list[Any]) -> list[Any]:
            if self.fast_loglikelihood is not None:
                return self.fast_loglikelihood.loglikelihood(reqs)
            return [(float(ll), bool(greedy)) for ll, greedy in self.lm.loglikelihood(reqs, disable_tqdm=True)]

        return [(float(v[0]), bool(v[1])) for v in self._through_cache("loglikelihood", requests, compute)]

    def generate_until(self, requests: Sequence[Any], *, rollout_seed: int | None = None) -> list[str]:
        """Generate for ``(context, gen_kwargs)`` requests: one string per request, in order.

        :param rollout_seed: the seed of a sampled (``do_sample``) call; with it, cache keys carry
            ``(seed, index)`` and the call is served from the cache only when every request is there.
        :raises BackendError: the backend is ``loglikelihood_only`` (a base model) and ``requests`` is not empty.
        """
        if self.loglikelihood_only and len(requests):
            raise BackendError(
                self.name,
                "is a base model without a chat template: it scores multiple_choice (loglikelihood) tasks only "
                "and cannot answer in generate_until mode",
                "score in multiple_choice mode (drop --output-type generate_until; pick tasks whose spec offers "
                "multiple_choice), or use an instruct model such as embedded:smollm2-135m",
            )

        def compute(reqs: list[Any]) -> list[Any]:
            if rollout_seed is not None:
                _seed_everything(rollout_seed)  # only when the model samples: a cached call needs no torch
            return list(self.lm.generate_until(reqs, disable_tqdm=True))

        return [str(v) for v in self._through_cache("generate_until", requests, compute, rollout_seed=rollout_seed)]

    def _through_cache(self, request_type: str, requests: Sequence[Any], compute: Any, *,
                       rollout_seed: int | None = None) -> list[Any]:
        requests = list(requests)
        if not requests:
            return []
        self.issued[request_type] += len(requests)
        if self.cache is None:
            self.computed[request_type] += len(requests)
            return compute(requests)
        from tp_harness.backends.cache import model_key, request_key

        keys = [request_key(self.identity, request_type, r.arguments,
                            (rollout_seed, i) if rollout_seed is not None else None)
                for i, r in enumerate(requests)]
        found = self.cache.get_many(keys)
        if rollout_seed is not None and len(found) < len(set(keys)):
            found = {}  # a sampled call is replayed whole: partial reuse would change the other samples
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in found:
                first.setdefault(k, i)
        if first:
            fresh = compute([requests[i] for i in first.values()])
            self.computed[request_type] += len(first)
            found.update(zip(first, fresh))
            model = model_key(self.identity)
            self.cache.put_many((k, model, request_type, v) for k, v in zip(first, fresh))
        self.cache.stats.hits += len(requests) - len(first)
        self.cache.stats.misses += len(first)
        return [found[k] for k in keys]

    # -- chat -----------------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        """Whether the model's tokenizer carries a chat template (instruct models do; base models don't)."""
        tok = getattr(self.lm, "tokenizer", None)
        return bool(getattr(tok, "chat_template", None))

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render chat ``messages`` (``[{"role", "content"}, ...]``) to the model's prompt string."""
        return self.lm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    @property
    def context_window(self) -> int | None:
        """The model's context window in tokens (lm-eval's ``max_length``), or None when it does not say."""
        try:
            value = getattr(self.lm, "max_length", None)
        except Exception:  # an lm-eval model that cannot tell without a server round trip
            return None
        return int(value) if isinstance(value, int) and value > 0 else None

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Total number of tokens of ``texts`` under the model's tokenizer (0 if it has none)."""
        tok = getattr(self.lm, "tokenizer", None)
        if tok is None or not texts:
            return 0
        return sum(len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"])

    def sample(self, prompt: str, *, num_samples: int, temperature: float, max_tokens: int, seed: int) -> list[str]:
        """Sample ``num_samples`` completions of a chat user message ``prompt`` (the reference LLM's job).

        Sampling is seeded: the same (model, prompt, seed) gives the same samples, which is what makes
        ``--resume`` reproduce an interrupted step. ``temperature`` 0 means greedy.

        :raises BackendError: the backend is ``loglikelihood_only``: a base model cannot be the reference LLM.
        """
        if self.loglikelihood_only:
            raise BackendError(self.name, REFERENCE_BASE_MODEL_PROBLEM, REFERENCE_BASE_MODEL_FIX)
        from lm_eval.api.instance import Instance

        ctx = (
            self.apply_chat_template([{"role": "user", "content": prompt}])
            if self.has_chat_template
            else prompt
        )
        gen_kwargs: dict[str, Any] = {"until": ["</INS>\n\n", "<|im_end|>"], "max_gen_toks": max_tokens}
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=float(temperature), top_p=0.95)
        else:
            gen_kwargs.update(do_sample=False)
        reqs = [
            Instance(request_type="generate_until", doc={}, arguments=(ctx, dict(gen_kwargs)), idx=i,
                     metadata=("reference", i, 1))
            for i in range(num_samples)
        ]
        return self.generate_until(reqs, rollout_seed=seed if temperature > 0 else None)


def _seed_everything(seed: int) -> None:
    """Seed torch's generator right before a sampled call (HF ``generate`` samples from it)."""
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # a non-torch backend samples with its own seeds
        pass


def fingerprint(obj: Any) -> str:
    """A short stable sha256 of a JSON-serialisable object (16 hex chars)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_model_args(text: str | None, *, flag: str = "--model-args",
                     example: str = "pretrained=./my-model,dtype=float32") -> dict[str, str]:
    """Parse lm-eval style ``key=value,key=value`` model args into a dict of strings.

    :param flag: the option named in error messages; :param example: a valid value shown in them.

    :raises UsageError: a part is not exactly one ``key=value`` (no ``=``, an empty key, a second ``=``), or a
        key is given twice.
    """
    from tp_harness.errors import UsageError

    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or "=" in value:
            raise UsageError(f"{flag}: {part!r} is not one key=value pair (e.g. {example})")
        if key in out:
            raise UsageError(f"{flag}: {key!r} is given twice")
        out[key] = value
    return out
