"""A faster loglikelihood scorer for multiple-choice requests on local transformers models.

Owns the hot path of ``multiple_choice`` scoring (DESIGN.md section 5). lm-eval 0.4.13's ``HFLM`` runs
``context + continuation`` once per choice and projects every position onto the whole vocabulary. This
scorer tokenizes exactly as lm-eval does (``HFLM._encode_pair``), groups the requests that share a
context, and packs each group into ONE sequence ``context + cont_1 + ... + cont_k`` with a block attention
mask (each continuation sees the context and itself, never another continuation) and position ids that
restart at the context length for every continuation; it then applies the output projection only at the
positions that predict continuation tokens. A question's context is pushed through the model once
instead of k times, and the vocabulary projection runs on a few positions instead of all.

The result per request is lm-eval's: ``(sum of continuation token log-probabilities, is_greedy)``; it
agrees with ``HFLM.loglikelihood`` to 1e-4 (checked by tests on the embedded model). Requests it does not
cover (empty context, sequences longer than the model's window or, packed, than its sliding attention window,
unsupported architectures) go to lm-eval.
Technique: shared-prefix packing with a custom attention mask, as in prefix-sharing / "packed sequences
with block-diagonal masks" (e.g. Hydragen, Juravsky et al. 2024, and vLLM's prefix caching).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

#: model types whose decoder accepts a custom 4D additive attention mask and position ids, checked against
#: HFLM by tests on the embedded models: SmolLM2 (llama) and Gemma 3 270M (gemma3_text)
SUPPORTED_MODEL_TYPES = frozenset({"llama", "gemma3_text"})
#: the scorer's id in cache keys and journals (a change of method must change cached values' key)
SCORER_ID = "prefix-shared-v1"


class PrefixSharingScorer:
    """Loglikelihood of ``(context, continuation)`` requests with one forward pass per shared context.

    :param lm: an lm-eval ``HFLM`` (its model, tokenizer and ``_encode_pair`` are used).
    :param max_batch_tokens: packed tokens per forward pass (rows x padded length); bounds memory.
    """

    def __init__(self, lm: Any, *, max_batch_tokens: int = 4096) -> None:
        self.lm = lm
        self.max_batch_tokens = max_batch_tokens
        #: work done so far: forward passes, tokens pushed through the decoder (``padded``: rows x longest row,
        #: what the hardware computed; ``tokens``: without the padding), requests sent on to lm-eval
        self.stats = {"forward_passes": 0, "tokens": 0, "padded": 0, "lm_eval_requests": 0}

    @property
    def model(self) -> Any:
        """The transformers model (a lazily loaded ``lm`` loads its weights here, on the first request)."""
        return self.lm.model

    @property
    def max_length(self) -> int:
        """The model's context window in tokens (lm-eval's ``max_length``)."""
        return int(self.lm.max_length)

    @property
    def max_packed(self) -> int:
        """The longest packed sequence: the context window, or a shorter sliding attention window.

        A model with sliding-window layers (Gemma 3: 512) masks keys further back than the window. A packed
        sequence no longer than the window sees exactly what each unpacked request sees; longer groups go to
        lm-eval, which scores them unpacked."""
        window = getattr(getattr(self.model, "config", None), "sliding_window", None)
        return min(self.max_length, int(window)) if window else self.max_length

    @classmethod
    def supports(cls, lm: Any) -> bool:
        """Whether ``lm`` is a causal HF model of a verified architecture (else lm-eval scores it). A lazily loaded
        model (:class:`~tp_harness.backends.hf.LazyHFLM`) is judged by its ``config.json``, without loading it."""
        if getattr(lm, "lazy", False) is True:
            return lm.backend == "causal" and lm.model_type in SUPPORTED_MODEL_TYPES
        model = getattr(lm, "_model", None) or getattr(lm, "model", None)
        config = getattr(model, "config", None)
        return (getattr(lm, "backend", None) == "causal" and config is not None
                and getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES
                and hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings"))

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """One ``(loglikelihood, is_greedy)`` per request, in order (natural log, summed over continuation tokens)."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        fallback: list[int] = []
        max_length = self.max_length
        for i, req in enumerate(requests):
            context, continuation = req.args
            if not context:
                fallback.append(i)
                continue
            ctx_enc, cont_enc = self.lm._encode_pair(context, continuation)
            if not cont_enc or len(ctx_enc) + len(cont_enc) > max_length:
                fallback.append(i)
                continue
            groups.setdefault(tuple(ctx_enc), []).append((i, list(cont_enc)))
        max_packed = self.max_packed if groups else max_length
        packed = [(ctx, conts) for ctx, conts in groups.items()
                  if len(ctx) + sum(len(c) for _, c in conts) <= max_packed]
        for ctx, conts in groups.items():
            if len(ctx) + sum(len(c) for _, c in conts) > max_packed:
                fallback.extend(i for i, _ in conts)
        for batch in self._batches(packed):
            for index, value in self._score_batch(batch):
                out[index] = value
        if fallback:
            self.stats["lm_eval_requests"] += len(fallback)
            results = self.lm.loglikelihood([requests[i] for i in fallback], disable_tqdm=True)
            for i, value in zip(fallback, results):
                out[i] = (float(value[0]), bool(value[1]))
        if any(v is None for v in out):  # a bug, not bad input
            raise RuntimeError(f"prefix scorer left {sum(v is None for v in out)} requests unscored")
        return out  # type: ignore[return-value]

    def _batches(self, groups: list[tuple[tuple[int, ...], list[tuple[int, list[int]]]]]):
        """Groups sorted by packed length (longest first), cut so rows x longest row <= ``max_batch_tokens``."""
        sized = sorted(groups, key=lambda g: -(len(g[0]) + sum(len(c) for _, c in g[1])))
        batch: list = []
        longest = 0
        for g in sized:
            length = len(g[0]) + sum(len(c) for _, c in g[1])
            if batch and max(longest, length) * (len(batch) + 1) > self.max_batch_tokens:
                yield batch
                batch, longest = [], 0
            batch.append(g)
            longest = max(longest, length)
        if batch:
            yield batch

    def _score_batch(self, batch):
        import torch

        model = self.model
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        rows, targets = [], []  # targets: (row, request index, predicting positions, continuation tokens)
        for r, (ctx, conts) in enumerate(batch):
            ids = list(ctx)
            pos = list(range(len(ctx)))
            spans = []
            for index, cont in conts:
                start = len(ids)
                ids += cont
                pos += list(range(len(ctx), len(ctx) + len(cont)))
                spans.append((start, len(cont)))
                # token t of the continuation is predicted at the position before it: the context's last
                # position for t = 0, the continuation's own previous position after that
                predictors = [len(ctx) - 1] + list(range(start, start + len(cont) - 1))
                targets.append((r, index, predictors, cont))
            rows.append((ids, pos, len(ctx), spans))
        length = max(len(ids) for ids, _, _, _ in rows)
        self.stats["forward_passes"] += 1
        self.stats["tokens"] += sum(len(ids) for ids, _, _, _ in rows)
        self.stats["padded"] += len(rows) * length
        input_ids = torch.zeros((len(rows), length), dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        allowed = torch.zeros((len(rows), length, length), dtype=torch.bool)
        for r, (ids, pos, ctx_len, spans) in enumerate(rows):
            n = len(ids)
            input_ids[r, :n] = torch.tensor(ids)
            position_ids[r, :n] = torch.tensor(pos)
            allowed[r, :ctx_len, :ctx_len] = torch.tril(torch.ones(ctx_len, ctx_len, dtype=torch.bool))
            for start, size in spans:
                allowed[r, start:start + size, :ctx_len] = True
                allowed[r, start:start + size, start:start + size] = torch.tril(
                    torch.ones(size, size, dtype=torch.bool))
            idx = torch.arange(n, length)
            allowed[r, idx, idx] = True  # padding attends to itself only (no all-masked rows)
        mask = torch.zeros((len(rows), 1, length, length), dtype=dtype)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                         position_ids=position_ids.to(device), use_cache=False).last_hidden_state
            row_idx = torch.tensor([r for r, _, p, _ in targets for _ in p], device=device)
            pos_idx = torch.tensor([q for _, _, p, _ in targets for q in p], device=device)
            logits = model.get_output_embeddings()(hidden[row_idx, pos_idx])
            softcap = getattr(model.config, "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            greedy = logprobs.argmax(dim=-1)
        out = []
        offset = 0
        for _r, index, predictors, cont in targets:
            n = len(predictors)
            toks = torch.tensor(cont, device=device)
            lp = logprobs[offset:offset + n].gather(1, toks.unsqueeze(1)).sum().item()
            out.append((index, (float(lp), bool((greedy[offset:offset + n] == toks).all().item()))))
            offset += n
        return out


def with_prefix_scorer(backend: Any) -> Any:
    """``backend`` (an :class:`~tp_harness.backends.base.LMBackend` over an ``HFLM``) as a new wrapper with the
    prefix-sharing scorer, when its architecture is supported and ``TP_HARNESS_SCORER`` is not ``lm-eval``;
    otherwise ``backend`` itself. Never changes ``backend``.

    The new wrapper's identity carries ``loglikelihood_scorer``, so cached values never mix the two methods.
    """
    import os

    if os.environ.get("TP_HARNESS_SCORER", "").lower() == "lm-eval" or not PrefixSharingScorer.supports(backend.lm):
        return backend
    if getattr(backend, "fast_loglikelihood", None) is not None:
        return backend
    return backend.with_options(fast_loglikelihood=PrefixSharingScorer(backend.lm),
                                identity={**backend.identity, "loglikelihood_scorer": SCORER_ID})
