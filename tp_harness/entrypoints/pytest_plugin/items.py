"""Collection: spec file -> task -> one gate item per (gate, prompt); a gate item applies ``check_gate``'s verdict."""


from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tp_harness.entrypoints.pytest_plugin.options import PROMPT_KINDS, WORST_SAMPLES
from tp_harness.entrypoints.pytest_plugin.session import GateResult, PromptChoice, TpSession, _session
from tp_harness.errors import TpHarnessError
from tp_harness.spec.gates import Gate, check_gate, parse_gate

# ---------------------------------------------------------------------------------------------
# collection: spec file -> task -> gate items


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = _session(parent.config)
    if not session.active or file_path.suffix not in (".yaml", ".yml"):
        return None
    if file_path.parent.resolve() not in session.spec_dirs:
        return None
    return SpecFile.from_parent(parent, path=file_path, nodeid=_spec_nodeid(parent.config, file_path))


def _spec_nodeid(config: pytest.Config, path: Path) -> str:
    """The spec file's node id: its path relative to the rootdir, with ``..`` when it lies outside (the shipped
    specs of an installed tp-harness, run from another project). pytest would make it relative to the argument
    that found it (``arc_challenge.yaml::...``), an id that selects nothing when pasted back."""
    return Path(os.path.relpath(path, config.rootpath)).as_posix()


class SpecFile(pytest.File):
    """A task spec YAML collected as a test file; its child is the task."""

    def collect(self) -> Iterator[pytest.Collector]:
        from tp_harness.spec.loader import load_spec

        session = _session(self.config)
        spec = load_spec(self.path, metric_names=set(session.registries.metrics.names()))
        if session.wants(spec.name):
            yield SpecTask.from_parent(self, name=spec.name, spec=spec)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:  # noqa: ANN001
        if isinstance(excinfo.value, TpHarnessError):
            return f"tp-harness: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)


class SpecTask(pytest.Collector):
    """One task of a spec; its children are the (gate, prompt) items."""

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def collect(self) -> Iterator[GateItem]:
        session = _session(self.config)
        metric_names = set(session.registries.metrics.names())
        for text in self.spec.tp.gates:
            gate = parse_gate(text, metric_names=metric_names)
            for kind in PROMPT_KINDS:
                if gate.relative and kind == "original":
                    continue  # the original prompt trivially matches itself
                item = GateItem.from_parent(self, name=f"{gate.name}[{kind}]", gate=gate, prompt_kind=kind)
                item.add_marker("tp")
                if session.model_name.split(":")[0] == "vllm":
                    item.add_marker("tp_gpu")
                if kind == "best" and session.optimize:
                    item.add_marker("tp_slow")
                yield item


class GateFailure(AssertionError):
    """Raised by a failing gate item; carries what the report shows."""

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report


class GateItem(pytest.Item):
    """One (task, gate, prompt) check against the session's shared evaluation."""

    def __init__(self, *, gate: Gate, prompt_kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.prompt_kind = prompt_kind

    @property
    def task(self) -> str:
        return self.parent.name

    def runtest(self) -> None:
        session = _session(self.config)
        gate, task = self.gate, self.task
        ev = session.evaluation(task, self.prompt_kind)
        choice = session.prompt(task, self.prompt_kind)
        value = ev.metrics.get(gate.metric)
        original = session.evaluation(task, "original").metrics.get(gate.metric) if gate.relative else None
        metrics = session.registries.metrics
        applies = gate.metric not in metrics.names() or ev.output_type in metrics.get(gate.metric).output_types
        verdict = check_gate(gate, value=value, original=original, applies=applies, task=task,
                             output_type=ev.output_type, n=ev.n)
        # apply the verdict: record it, then pass, skip or fail the item
        session.outcomes.append(GateResult(self.nodeid, task, gate.text, self.prompt_kind, verdict.status, value,
                                           verdict.bound, ev.n))
        self.user_properties += [("tp_task", task), ("tp_gate", gate.text), ("tp_prompt", self.prompt_kind),
                                 ("tp_prompt_origin", choice.origin), ("tp_n", ev.n)]
        self.user_properties += [(f"tp_{k}", v) for k, v in ev.metrics.items() if v is not None]
        if verdict.status == "skipped":
            pytest.skip(verdict.reason)
        self.user_properties.append(("tp_threshold", verdict.bound))
        if verdict.status == "failed":
            raise GateFailure(self._failure_report(session, ev, choice, value, verdict.bound, original))

    def _failure_report(self, session: TpSession, ev: Any, choice: PromptChoice, value: float, bound: float,
                        original: float | None) -> str:
        gate = self.gate
        lines = [f"gate failed: {gate.text}   [{self.task}, {self.prompt_kind} prompt, {session.model_name}]",
                 f"  {gate.metric} = {value:.4f}, threshold {gate.op} {bound:.4f}"
                 + (f" (original {original:.4f} {gate.threshold:+g})" if gate.relative else "")
                 + f", n = {ev.n} test docs ({ev.mode})",
                 f"  prompt ({choice.origin}): {_clip(choice.text, 300)}",
                 "  metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in ev.metrics.items() if v is not None)]
        worst = worst_samples(ev.records, WORST_SAMPLES)
        if worst:
            lines.append(f"  worst {len(worst)} samples (wrong answers with the highest confidence first):")
        from tp_harness.evaluation.evaluator import render_context

        prep = session.prepared(self.task)
        for r in worst:
            rendered = render_context(prep, session.backend, instruction=ev.instruction, split=ev.split,
                                      doc_id=r.doc_id)
            conf = "n/a" if r.confidence is None else f"{r.confidence:.2f}"
            lines += [f"  - doc {r.doc_id}: parsed answer {r.parsed_answer!r}, gold {r.gold!r}, confidence {conf}",
                      f"      prompt:   {_clip(rendered, 400, tail=True)}",
                      f"      response: {_clip(r.response, 200)}"]
        return "\n".join(lines)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:  # noqa: ANN001
        if isinstance(excinfo.value, GateFailure):
            return excinfo.value.report
        if isinstance(excinfo.value, TpHarnessError):
            return f"tp-harness: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The domain is what failure headers show. It must not be the node id's tail: pytest's `-v` line turns the
        # dots of such a tail into `::` (`acc>=0::2[original]`), and that id no longer selects the item.
        return self.path, None, f"{self.task}: {self.gate.text} [{self.prompt_kind}]"


def worst_samples(records: Sequence[Any], k: int) -> list[Any]:
    """The ``k`` most instructive failures: wrong answers first, most confident first, then unparsed ones.

    :param records: ``SampleRecord`` rows of one evaluation.
    """
    wrong = [r for r in records if not r.correct]
    wrong.sort(key=lambda r: (r.parsed_answer is None, -(r.confidence if r.confidence is not None else -1.0)))
    return wrong[:k]


def _clip(text: str | None, limit: int, *, tail: bool = False) -> str:
    text = (text or "").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    return "..." + text[-limit:] if tail else text[:limit] + "..."


