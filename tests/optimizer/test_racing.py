"""Racing on evidence (issue 15): the paired bound that drops a candidate, the minibatch that grows with the split
and turns racing off on small ones, and a real run on the embedded model with ``race="bound"``."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from tp_harness.evaluation.evaluator import metrics_of
from tp_harness.evaluation.metrics import DEFAULT_WEIGHTS, SampleRecord
from tp_harness.optimizer.budget import BUDGETS, Budget
from tp_harness.optimizer.loop import Block
from tp_harness.optimizer.transfer import RaceOnEvidence, _minibatch, _per_doc, equal_budget, minibatch_ids


def _records(correct: list[bool], confidence: list[float], ids=None) -> list[SampleRecord]:
    ids = list(range(len(correct))) if ids is None else list(ids)
    return [SampleRecord(doc_id=i, prompt_sha="p", response="A" if c else "B", parsed_answer="A" if c else "B",
                         gold="A", confidence=conf, followed=None, correct=c, correct_norm=c)
            for i, c, conf in zip(ids, correct, confidence, strict=True)]


def _row(records: list[SampleRecord], task: str = "t") -> dict:
    return {"per_doc": {task: _per_doc(SimpleNamespace(records=records))}}


def _task(name: str = "t", n: int = 0, weights=None):
    return SimpleNamespace(name=name, weights=dict(weights or DEFAULT_WEIGHTS), splits={"optimize": [{}] * n},
                           mode="multiple_choice")


GOOD = _records([True] * 12 + [False] * 4, [0.9] * 12 + [0.3] * 4)
BAD = _records([False] * 12 + [True] * 4, [0.9] * 12 + [0.3] * 4)


def _race(registries, tasks=None, **kw) -> RaceOnEvidence:
    return RaceOnEvidence(tuple(tasks or [_task(n=16)]), registries.metrics, alpha=kw.pop("alpha", 0.05), seed=0, **kw)


def test_the_bound_drops_a_clearly_worse_candidate_and_never_an_equal_or_better_one(registries) -> None:
    race = _race(registries)
    same = race.bound([_row(GOOD)], [_row(GOOD)])
    assert same is not None and same >= 0.0  # an equal candidate is never dropped
    assert race.bound([_row(GOOD)], [_row(BAD)]) < 0.0  # clearly worse on the same 16 docs: dropped
    assert race.bound([_row(BAD)], [_row(GOOD)]) > 0.0


def test_the_bound_pairs_the_candidates_blocks_with_the_same_docs_of_a_full_reference(registries) -> None:
    """The incumbent's full row against a candidate's two blocks: the incumbent's records on those docs only."""
    race = _race(registries)
    blocks = [_row(BAD[:8]), _row(BAD[8:12])]  # 12 docs seen
    direct = race.bound([_row(GOOD[:12])], [_row(BAD[:12])])
    assert race.bound([_row(GOOD)], blocks) == pytest.approx(direct)
    assert race.composite([_row(GOOD)], blocks) == pytest.approx(
        metrics_of(_task(), GOOD[:12], registries.metrics)["composite"])


def test_the_bound_is_undefined_without_paired_records_or_for_weights_it_cannot_resample(registries) -> None:
    race = _race(registries)
    row = _row(GOOD[:3])
    assert race.bound([{"metrics": {}}], [row]) is None
    other = _row(_records([True, False, True], [0.9, 0.2, 0.8], ids=[20, 21, 22]))
    assert race.bound([row], [other]) is None  # the reference lacks those docs: no pairing
    plugin = _race(registries, [_task(weights={**DEFAULT_WEIGHTS, "brevity": 1.0})])
    assert plugin.bound([row], [row]) is None


def test_the_bound_averages_the_tasks_of_stage_one(registries) -> None:
    a, b = _task("a", 16), _task("b", 16)
    good = {"per_doc": {**_row(GOOD, "a")["per_doc"], **_row(GOOD, "b")["per_doc"]}}
    half = {"per_doc": {**_row(GOOD, "a")["per_doc"], **_row(BAD, "b")["per_doc"]}}
    one = _race(registries, [b]).bound([good], [half])
    both = _race(registries, [a, b]).bound([good], [half])
    assert one < both < 0.5 and both > one / 2 - 0.05


def test_the_merge_of_a_survivors_blocks_equals_scoring_the_whole_split(registries) -> None:
    records = _records([True, False, True, True, False, True, False, True],
                       [0.9, 0.6, 0.8, 0.55, 0.7, 0.95, 0.4, 0.65])
    race = _race(registries, [_task(n=8)])
    blocks = [_row([records[i] for i in (1, 6, 3)]), _row([records[i] for i in (0, 7)]),
              _row([records[i] for i in (5, 2, 4)])]
    metrics, extra = race.merge(blocks)
    assert metrics == metrics_of(_task(n=8), records, registries.metrics)
    assert extra["n"] == 8 and extra["seconds"] == 0.0 and extra["tokens"] == 0
    assert extra["per_doc"]["t"]["doc_id"] == list(range(8))
    with pytest.raises(ValueError, match="cover its optimize split once"):
        race.merge(blocks[:2])
    with pytest.raises(ValueError, match="cover its optimize split once"):
        race.merge(blocks + blocks[:1])


def test_a_steps_blocks_cover_the_split_once_and_are_seeded() -> None:
    ctx, task = SimpleNamespace(seed=4), SimpleNamespace(name="t", splits={"optimize": [{}] * 30})
    parts = [minibatch_ids(ctx, "target", 2, task, Block(k, 4)) for k in range(4)]
    assert sorted(i for p in parts for i in p) == list(range(30))
    assert [len(p) for p in parts] == [7, 8, 7, 8] and all(list(p) == sorted(p) for p in parts)
    assert parts == [minibatch_ids(ctx, "target", 2, task, Block(k, 4)) for k in range(4)]
    assert parts != [minibatch_ids(ctx, "target", 3, task, Block(k, 4)) for k in range(4)]  # another step


@pytest.mark.parametrize(("n", "expected"), [(12, None), (15, None), (16, 8), (24, 8), (64, 16), (200, 50)])
def test_the_bound_minibatch_grows_with_the_split_and_is_off_on_small_ones(n, expected) -> None:
    budget = Budget("b", steps=1, num_candidates=4, optimize_n=None, validation_n=None, test_n=None, k_source=1,
                    finalists=1, minibatch=8, race="bound", minibatch_fraction=0.25)
    assert _minibatch(SimpleNamespace(budget=budget), [_task(n=n)]) == expected


def test_halving_keeps_its_fixed_minibatch() -> None:
    ctx = SimpleNamespace(budget=BUDGETS["smoke"])
    assert _minibatch(ctx, [_task(n=64)]) == BUDGETS["smoke"].minibatch == 3
    assert _minibatch(ctx, [_task(n=3)]) is None


@pytest.mark.parametrize(("budget", "n", "blocks"), [("light", 24, 3), ("medium", 64, 8), ("heavy", 200, 8),
                                                     ("heavy", 500, 7), ("light", 15, None)])
def test_the_presets_race_on_evidence_in_blocks_of_an_eighth_of_the_split(budget, n, blocks) -> None:
    """The measured defaults (docs/performance.md): light, medium and heavy race on evidence with a one-sided 80%
    bound, in blocks of 1/8 of the optimize split and at least ``minibatch`` docs; off below 2 blocks."""
    from tp_harness.optimizer.transfer import _settings

    b = BUDGETS[budget]
    assert b.race == "bound" and b.race_alpha == 0.2 and b.minibatch_fraction == 0.125
    settings = _settings(SimpleNamespace(budget=b, reference_share=0.5), [_task(n=n)])
    assert settings.race_blocks == blocks and settings.racing is (blocks is not None)


def test_an_equal_budget_ablation_refuses_a_budget_that_races_on_a_bound() -> None:
    from tp_harness.errors import UsageError

    budget = Budget("b", steps=1, num_candidates=4, optimize_n=None, validation_n=None, test_n=None, k_source=1,
                    finalists=1, minibatch=8, race="bound")
    with pytest.raises(UsageError, match="races on evidence.*--budget evidence"):
        equal_budget(budget, sources=[], target=_task(n=64), target_full=_task(n=64), reference_share=0.5)


@pytest.mark.slow
def test_a_real_run_racing_on_evidence_drops_on_the_bound_and_merges_what_full_scoring_gives(registries, tmp_path,
                                                                                             monkeypatch):
    """The embedded model on Financial PhraseBank: candidates are scored block by block, each decision replays
    from the journal (the leader on the docs seen, the paired bound), and every survivor's merged full row equals
    scoring its prompt on the whole optimize split at once."""
    import json

    from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs
    from tp_harness.runs.runner import OptimizeSettings, prepare_run, run_optimize

    budget = Budget("race-test", steps=1, num_candidates=4, optimize_n=24, validation_n=6, test_n=6, k_source=1,
                    finalists=1, reference_max_tokens=48, minibatch=6, race="bound", minibatch_fraction=0.25)
    monkeypatch.setitem(BUDGETS, budget.name, budget)
    settings = OptimizeSettings(targets=["financial_phrasebank"], sources=[], mode="no_transfer", budget=budget.name,
                                seed=3, results_dir=str(tmp_path), run_id="race", leaderboard=False)
    run_optimize(settings, registries)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "race" / "journal.jsonl").read_text().splitlines()]
    (original,) = [r for r in rows if r.get("stage") == "target" and r.get("step") == 0]
    step = [r for r in rows if r.get("stage") == "target" and r.get("step") == 1]
    blocks: dict[str, list[dict]] = {}
    for r in step:
        if r["eval"] == "partial":
            blocks.setdefault(r["prompt_sha"], []).append(r)
    full = {r["prompt_sha"]: r for r in step if r["eval"] == "full"}
    assert original["n"] == 24 and len(original["per_doc"]["financial_phrasebank"]["doc_id"]) == 24
    assert len(blocks) == 4 and all(r["n"] == 6 for rs in blocks.values() for r in rs)

    ctx, _ = prepare_run(replace(settings, run_id="check"), registries)
    try:
        (target,) = ctx.targets
        race = RaceOnEvidence((target,), registries.metrics, alpha=budget.race_alpha, seed=3)
        for k in range(3):  # the decisions after blocks 1-3, replayed
            racing = {sha: rs[:k + 1] for sha, rs in blocks.items() if len(rs) > k}
            docs = next(iter(racing.values()))
            points = {sha: race.composite(rs, docs) for sha, rs in racing.items()}
            points[original["prompt_sha"]] = race.composite([original], docs)
            leader = max(points, key=lambda sha: (points[sha], sha == original["prompt_sha"]))
            ref = [original] if leader == original["prompt_sha"] else racing[leader]
            for sha, rs in racing.items():
                upper = None if sha == leader else race.bound(ref, rs)
                assert (len(blocks[sha]) > k + 1) is (upper is None or upper >= 0), (k, sha, upper)
        assert set(full) == {sha for sha, rs in blocks.items() if len(rs) == 4}
        assert full and len(full) < len(blocks), "this seed drops some candidates and keeps one"
        for row in full.values():
            (direct,) = evaluate_jobs(ctx.scorer, [EvalJob(target, "optimize", row["prompt"])],
                                      metrics=registries.metrics)
            assert row["merged_blocks"] == 4 and row["n"] == 24
            for name, value in direct.metrics.items():
                assert row["metrics"][name] == pytest.approx(value, abs=1e-6), name
    finally:
        ctx.run.unlock()

