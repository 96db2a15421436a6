"""Gate expressions: the pass/fail rules a task spec's ``tp.gates`` states for the pytest plugin.

Owns parsing and checking one gate. Two forms, one per line of ``tp.gates``:

- an absolute threshold: ``<metric> <op> <number>``, e.g. ``acc >= 0.25``, ``ifr >= 0.8``, ``ece <= 0.3``;
- a regression check against the task's original prompt, with a tolerance band:
  ``<metric> <op> original [+|- <number>]``, e.g. ``composite >= original - 0.02``.

``<op>`` is one of ``>=``, ``<=``, ``>``, ``<``; ``<metric>`` is a registered metric name or
``composite``. Pure functions; no model, no I/O.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUM = rf"[+-]?{_UNSIGNED}"
_GATE_RE = re.compile(
    rf"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<original>original)\s*(?:(?P<sign>[+-])\s*(?P<offset>{_UNSIGNED}))?|(?P<value>{_NUM}))\s*$"
)


class GateSyntaxError(ValueError):
    """A gate expression that cannot be parsed or names an unknown metric; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class Gate:
    """One parsed gate.

    :ivar text: the expression as written in the spec.
    :ivar metric: the metric it checks (``acc``, ``ifr``, ``ece``, ``auroc``, ``pr_p``, ``pr_n``, ``composite``, ...).
    :ivar op: ``>=``, ``<=``, ``>`` or ``<``.
    :ivar threshold: the absolute bound, or for a regression gate the offset added to the original
        prompt's value (``composite >= original - 0.02`` has threshold ``-0.02``).
    :ivar relative: True for a regression gate (right-hand side ``original [+|- x]``).
    """

    text: str
    metric: str
    op: str
    threshold: float
    relative: bool = False

    @property
    def name(self) -> str:
        """A compact id without spaces, used in pytest node ids: ``acc>=0.25``, ``composite>=original-0.02``."""
        if not self.relative:
            return f"{self.metric}{self.op}{_num(self.threshold)}"
        if self.threshold == 0:
            return f"{self.metric}{self.op}original"
        sign = "-" if self.threshold < 0 else "+"
        return f"{self.metric}{self.op}original{sign}{_num(abs(self.threshold))}"

    def bound(self, original: float | None = None) -> float:
        """The number the value is compared with: ``threshold``, or ``original + threshold`` for a regression gate.

        :raises ValueError: a regression gate without the original prompt's value.
        """
        if not self.relative:
            return self.threshold
        if original is None:
            raise ValueError(f"gate {self.text!r} compares with the original prompt, whose {self.metric} is undefined")
        return original + self.threshold

    def check(self, value: float, original: float | None = None) -> bool:
        """True when ``value`` satisfies the gate. A NaN value never passes."""
        if value is None or math.isnan(value):
            return False
        return _OPS[self.op](value, self.bound(original))


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """The verdict of one gate on one evaluation (what :func:`check_gate` returns; the pytest item only applies it).

    :ivar status: ``passed``, ``failed`` or ``skipped`` (the gate cannot be checked: see ``reason``).
    :ivar value: the metric's value for the gated prompt (None when undefined).
    :ivar bound: the number it was compared with (None when skipped before a bound exists).
    :ivar reason: why it was skipped (empty otherwise).
    """

    status: Literal["passed", "failed", "skipped"]
    value: float | None
    bound: float | None = None
    reason: str = ""


def check_gate(gate: Gate, *, value: float | None, original: float | None, applies: bool, task: str,
               output_type: str, n: int) -> GateOutcome:
    """Check ``gate`` on one evaluation: pure, no model, no pytest (as pytest's ``evaluate_skip_marks``).

    :param value: the gated prompt's value of ``gate.metric`` (None: undefined for these records).
    :param original: the original prompt's value of the metric (used by a regression gate; None: undefined).
    :param applies: whether the metric applies to ``output_type`` at all (``MetricDef.output_types``).
    :param task, output_type, n: the evaluation's task name, lm-eval ``output_type`` and number of docs (for reasons).
    :return: a :class:`GateOutcome`: skipped when the value (or a regression gate's original) is undefined or the
        metric does not apply; else passed or failed with the bound it was compared with.
    """
    if value is None:
        if not applies:
            return GateOutcome("skipped", None, reason=f"{gate.metric} does not apply to {output_type} scoring ({task})")
        return GateOutcome("skipped", None, reason=f"{gate.metric} is undefined for {task} ({output_type}, n={n}): "
                                                   "every answer was right, or every answer was wrong")
    if gate.relative and original is None:
        return GateOutcome("skipped", value, reason=f"{gate.metric} of the original prompt is undefined for {task}; "
                                                    "nothing to compare with")
    bound = gate.bound(original)
    return GateOutcome("passed" if gate.check(value, original) else "failed", value, bound)


def _num(value: float) -> str:
    return f"{value:g}"


def parse_gate(text: str, *, metric_names: Collection[str] | None = None) -> Gate:
    """Parse one gate expression.

    :param metric_names: the metric names a gate may use (``composite`` is always allowed); None skips the check.
    :raises GateSyntaxError: the text is not ``<metric> <op> <number>`` or ``<metric> <op> original [+|- <number>]``,
        or names an unknown metric (the message lists the known ones).
    """
    if not isinstance(text, str):
        raise GateSyntaxError(f"expected a gate string such as 'acc >= 0.3', got {text!r}")
    m = _GATE_RE.match(text)
    if not m:
        raise GateSyntaxError(
            f"cannot parse gate {text!r}: expected '<metric> <op> <number>' (e.g. 'acc >= 0.3') or "
            "'<metric> <op> original [+|- <number>]' (e.g. 'composite >= original - 0.02'), op one of >=, <=, >, <"
        )
    metric = m.group("metric")
    if metric_names is not None and metric != "composite" and metric not in metric_names:
        known = ", ".join(sorted({*metric_names, "composite"}))
        raise GateSyntaxError(f"gate {text!r} names unknown metric {metric!r}; known: {known}")
    if m.group("original"):
        offset = float(m.group("offset") or 0.0)
        threshold = -offset if m.group("sign") == "-" else offset
        return Gate(text=text.strip(), metric=metric, op=m.group("op"), threshold=threshold, relative=True)
    return Gate(text=text.strip(), metric=metric, op=m.group("op"), threshold=float(m.group("value")))
