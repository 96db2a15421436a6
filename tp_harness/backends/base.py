"""The model backend contract: what the evaluator and the optimizer may ask of a model.

A backend wraps one lm-eval ``LM`` (``HFLM``, ``VLLM``, ...) and adds what tp-harness needs around
it: a stable identity (for caching keys and journals), chat-template rendering, and sampling for the
reference LLM. Requests are lm-eval ``Instance`` objects; results come back one per request, in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class LMBackend:
    """A scorer or reference LLM served through one lm-eval ``LM`` object.

    :param name: the backend name the user gave (``embedded:smollm2-135m``, ``hf``, ``vllm``).
    :param lm: the lm-eval LM (e.g. ``lm_eval.models.huggingface.HFLM``), built once per process.
    :param identity: model identity (path or name, revision, dtype, chat template hash): the key of
        cache entries and the model description written to ``config.json``.
    :param checkpoint: a local path that stock ``lm-eval --model hf --model_args pretrained=...`` can
        load to reproduce this backend, when there is one.
    """

    name: str
    lm: Any
    identity: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    lm_eval_model: str = "hf"

    # -- requests -------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """Score ``(context, continuation)`` requests: one ``(loglikelihood, is_greedy)`` per request, in order.

        ``loglikelihood`` is the sum of the continuation tokens' log-probabilities (natural log).
        """
        if not requests:
            return []
        return list(self.lm.loglikelihood(list(requests), disable_tqdm=True))

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Generate for ``(context, gen_kwargs)`` requests: one string per request, in order."""
        if not requests:
            return []
        return list(self.lm.generate_until(list(requests), disable_tqdm=True))

    # -- chat -----------------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        """Whether the model's tokenizer carries a chat template (instruct models do; base models don't)."""
        tok = getattr(self.lm, "tokenizer", None)
        return bool(getattr(tok, "chat_template", None))

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render chat ``messages`` (``[{"role", "content"}, ...]``) to the model's prompt string."""
        return self.lm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

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
        """
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
        _seed_everything(seed)
        reqs = [
            Instance(request_type="generate_until", doc={}, arguments=(ctx, dict(gen_kwargs)), idx=i,
                     metadata=("reference", i, 1))
            for i in range(num_samples)
        ]
        return self.generate_until(reqs)


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


def parse_model_args(text: str | None) -> dict[str, str]:
    """Parse lm-eval style ``key=value,key=value`` model args into a dict of strings."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            from ..errors import UsageError

            raise UsageError(f"--model-args: {part!r} is not key=value (e.g. pretrained=./my-model,dtype=float32)")
        out[key.strip()] = value.strip()
    return out
