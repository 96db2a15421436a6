"""The contracts a plugin implements, as ``typing.Protocol`` classes (documented like lm-eval's ``LM``).

- :class:`LanguageModel`: the lm-eval style model a backend wraps (``lm``): what a plugin backend implements to
  bring a new kind of model. Any lm-eval ``LM`` (``HFLM``, ``VLLM``, the API models) already is one.
- :class:`ScorerBackend`: what the evaluator and the optimizer ask of a backend; :class:`tp_harness.LMBackend`
  (what a ``BackendDef.factory`` returns) implements it around a :class:`LanguageModel`.
- :class:`Optimizer`: the callable an ``OptimizerDef`` registers.

They are structural: nothing needs to inherit from them. ``isinstance`` works (``runtime_checkable``) but checks
only that the methods exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tp_harness.optimizer.transfer import RunContext, RunOutcome


@runtime_checkable
class LanguageModel(Protocol):
    """An lm-eval style model: the ``lm`` of a backend (lm-eval ``lm_eval.api.model.LM``'s request methods).

    Requests are lm-eval ``Instance`` objects; each method returns one result per request, in request order.
    """

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """For each ``(context, continuation)`` in ``request.args``: ``(log P(continuation | context), is_greedy)``,
        the natural-log probability summed over the continuation's tokens and whether greedy decoding would
        produce exactly that continuation."""
        ...

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """For each ``(context, gen_kwargs)`` in ``request.args``: the generated text, cut before the first of
        ``gen_kwargs["until"]`` (a list of stop strings); ``max_gen_toks``, ``do_sample`` and ``temperature`` as in
        lm-eval."""
        ...


@runtime_checkable
class ScorerBackend(Protocol):
    """What the objective prompt evaluator (scorer LLM) and the optimizer (reference LLM) ask of a backend.

    :ivar name: the backend name the user gave (``embedded:smollm2-135m``, ``hf``, ...).
    :ivar identity: a JSON-able description of the model (path, dtype, chat-template hash, scoring method): the
        response cache's key and what config.json records. Two backends with equal identities must score alike.
    :ivar loglikelihood_only: a base model: it scores ``multiple_choice`` only and cannot be the reference LLM.
    :ivar issued, computed: requests asked of this backend, and those its model computed, by request type.
    """

    name: str
    identity: dict[str, Any]
    loglikelihood_only: bool
    issued: dict[str, int]
    computed: dict[str, int]

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """See :meth:`LanguageModel.loglikelihood` (answers may come from the response cache)."""
        ...

    def generate_until(self, requests: Sequence[Any], *, rollout_seed: int | None = None) -> list[str]:
        """See :meth:`LanguageModel.generate_until`; ``rollout_seed`` keys a sampled call in the cache."""
        ...

    def sample(self, prompt: str, *, num_samples: int, temperature: float, max_tokens: int, seed: int) -> list[str]:
        """``num_samples`` seeded completions of a chat user message (the reference LLM's job); temperature 0: greedy."""
        ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``[{"role", "content"}, ...]`` to the model's prompt string."""
        ...

    @property
    def has_chat_template(self) -> bool:
        """Whether the model has a chat template (instruct models do)."""
        ...

    @property
    def context_window(self) -> int | None:
        """The context window in tokens, or None when unknown."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Total tokens of ``texts`` under the model's tokenizer (0 without one)."""
        ...


class Optimizer(Protocol):
    """A prompt optimizer, registered as ``OptimizerDef(run=...)``: ``run(ctx) -> RunOutcome``.

    It receives the frozen :class:`~tp_harness.RunContext` (scorer and reference backends, prepared source and
    target tasks, budget, seed, ablation mode, the run store, progress bars, its ``optimizer_options``), scores
    candidates only through :func:`tp_harness.evaluate_jobs`, appends one journal row per scored candidate with
    ``ctx.run.append(row)`` (and finds them with ``ctx.run.find(...)`` on ``--resume``), and returns a
    :class:`~tp_harness.RunOutcome` whose targets carry test-split evaluations of ``original`` and ``best_target``
    (or ``best_source``); :func:`tp_harness.select_on_validation` and :func:`tp_harness.final_evaluations` do the
    standard ending. It never changes ``ctx``.
    """

    def __call__(self, ctx: RunContext) -> RunOutcome:
        ...
