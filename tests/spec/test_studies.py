"""Named studies (``--study``): the paper's source -> target setup over the shipped specs."""

from __future__ import annotations

import pytest

from tp_harness.entrypoints.cli import main
from tp_harness.errors import UsageError
from tp_harness.runs.runner import DEFAULT_SOURCES, DEFAULT_TARGETS
from tp_harness.spec.loader import BUILTIN_SPEC_DIR, discover_specs, load_spec
from tp_harness.spec.studies import STUDIES, get_study, resolve_tasks


def test_paper_study_is_general_sources_to_medical_legal_financial_targets() -> None:
    study = get_study("paper")
    shipped = discover_specs([BUILTIN_SPEC_DIR])
    domains = {}
    for name in [*study.sources, *study.targets]:
        assert name in shipped, name
        domains[name] = load_spec(shipped[name]).tp.domain
    assert {domains[s] for s in study.sources} == {"general"}
    assert {domains[t] for t in study.targets} == {"medical", "legal", "financial"}
    assert set(study.sources).isdisjoint(study.targets)
    for name in study.sources:
        assert load_spec(shipped[name]).tp.role in ("source", "both"), name
    for name in study.targets:
        assert load_spec(shipped[name]).tp.role in ("target", "both"), name


def test_resolve_uses_the_study_the_flags_or_the_defaults() -> None:
    paper = STUDIES["paper"]
    assert resolve_tasks("paper", None, None, DEFAULT_SOURCES, DEFAULT_TARGETS) == (list(paper.sources),
                                                                                   list(paper.targets))
    assert resolve_tasks(None, None, None, DEFAULT_SOURCES, DEFAULT_TARGETS) == (list(DEFAULT_SOURCES),
                                                                                list(DEFAULT_TARGETS))
    assert resolve_tasks(None, ["logiqa"], None, DEFAULT_SOURCES, DEFAULT_TARGETS) == (["logiqa"],
                                                                                      list(DEFAULT_TARGETS))
    with pytest.raises(UsageError, match="--study paper sets the source and target tasks; drop --targets"):
        resolve_tasks("paper", None, ["medmcqa"], DEFAULT_SOURCES, DEFAULT_TARGETS)
    with pytest.raises(UsageError, match="'nope' is not a known study; known: paper"):
        get_study("nope")


def test_cli_refuses_study_with_task_flags_before_loading_a_model(capsys) -> None:
    assert main(["optimize", "--study", "paper", "--sources", "logiqa"]) == 2
    assert "--study paper sets the source and target tasks; drop --sources" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--study", "unknown"])
    assert "invalid choice: 'unknown'" in capsys.readouterr().err
