"""Tests of tp_harness.optimizer.loop.run_stage with doubles: a fake reference LLM, a deterministic score
function, a list sink and a recall over that list (the journal's role), including --resume."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from tp_harness.evaluation.evaluator import prompt_sha
from tp_harness.optimizer.candidates import Candidate, normalize
from tp_harness.optimizer.loop import Block, StageSettings, hash_seed, run_stage
from tp_harness.optimizer.meta_prompt import Exemplar
from tp_harness.store.journal import RunDir

OPENINGS = ["Think step by step", "Read the question twice", "Consider each option", "Work carefully",
            "Reason briefly", "Check the facts"]
ENDINGS = ["and answer.", "then give the letter.", "and state your confidence.", "before answering."]
INITIAL = [
    Candidate("Answer the question with a letter. State your confidence as a percentage.", "original"),
    Candidate("Choose the best option. Be brief.", "original"),
]
SETTINGS = StageSettings(steps=4, num_candidates=4)
EVOLUTION_OPS = {"crossover", "insert", "delete", "swap"}


class FakeReference:
    """Reference LLM double: deterministic per seed, records every call."""

    def __init__(self, *, weak: bool = False) -> None:
        self.weak = weak
        self.calls: list[dict[str, Any]] = []

    def sample(self, prompt: str, *, num_samples: int, temperature: float, max_tokens: int, seed: int) -> list[str]:
        self.calls.append({"prompt": prompt, "num_samples": num_samples, "temperature": temperature,
                           "max_tokens": max_tokens, "seed": seed})
        if self.weak:
            return ["text: foo score: 3", "", "<INS></INS>", "ok"][:num_samples]
        rng = random.Random(seed)
        return [f"Sure. <INS>{rng.choice(OPENINGS)} {rng.choice(ENDINGS)}</INS>" for _ in range(num_samples)]


class Scorer:
    """Score double: composite = len(text) % 97 / 100; records which (step, text) it scored."""

    def __init__(self) -> None:
        self.scored: list[tuple[int, str]] = []

    def __call__(self, cands: Sequence[Candidate], step: int, minibatch=None) -> list[tuple[dict, dict]]:
        out = []
        for c in cands:
            self.scored.append((step, c.text) if minibatch is None else (step, c.text, minibatch))
            composite = len(c.text) % 97 / 100
            if isinstance(minibatch, Block):  # racing on evidence: a noisy estimate on one block
                composite = round(composite + ((len(c.text) + 3 * minibatch.index) % 5 - 2) / 100, 4)
            elif minibatch is not None:  # a noisy minibatch estimate of the full score
                composite = round(composite + (len(c.text) % 7 - 3) / 100, 4)
            out.append(({"acc": composite, "composite": composite}, {"split": "optimize"}))
        return out


def _exemplars(rng: random.Random) -> list[Exemplar]:
    return [Exemplar(f"Question {rng.randint(0, 99)}?", "A")]


def _run(*, seed: int = 11, reference: Any = None, recall=None, initial=INITIAL, settings=SETTINGS,
         scorer: Scorer | None = None) -> tuple[list[dict], list, Scorer, Any]:
    rows: list[dict] = []
    scorer = scorer or Scorer()
    reference = reference if reference is not None else FakeReference()
    history = run_stage(
        stage="target", description="Answer multiple-choice questions.", initial=initial, score=scorer,
        sink=rows.append, recall=recall or (lambda step, sha, kind: None), reference=reference,
        exemplars=_exemplars, settings=settings, seed=seed, row_base={"task": "tiny"},
    )
    return rows, history, scorer, reference


def _recall_from(journal: list[dict]):
    def recall(step: int, sha: str, kind: str, block: int | None = None) -> dict | None:
        return next((r for r in journal if r["step"] == step and r["prompt_sha"] == sha and r["eval"] == kind
                     and r.get("block") == block), None)
    return recall


@pytest.fixture(scope="module")
def full_run() -> tuple[list[dict], list, Scorer, FakeReference]:
    return _run()


# ----------------------------------------------------------------------------------------------
# rows and history


def test_step_0_scores_the_initial_prompts(full_run) -> None:
    rows, _history, scorer, _ref = full_run
    step0 = [r for r in rows if r["step"] == 0]
    assert [r["prompt"] for r in step0] == [c.text for c in INITIAL]
    assert [(r["proposer"], r["operation"], r["candidate_index"], r["num_candidates"]) for r in step0] == [
        ("original", "", 0, 2), ("original", "", 1, 2)]
    assert all(r["stage"] == "target" and r["task"] == "tiny" and r["split"] == "optimize" for r in step0)
    assert [t for s, t in scorer.scored if s == 0] == [c.text for c in INITIAL]


def test_later_steps_record_proposer_operation_and_index(full_run) -> None:
    rows, _history, _scorer, _ref = full_run
    assert {r["step"] for r in rows} == set(range(SETTINGS.steps + 1))
    proposers = set()
    for step in range(1, SETTINGS.steps + 1):
        step_rows = [r for r in rows if r["step"] == step]
        assert 0 < len(step_rows) <= SETTINGS.num_candidates, f"step {step}: {len(step_rows)} candidates"
        assert [r["candidate_index"] for r in step_rows] == list(range(len(step_rows)))
        assert {r["num_candidates"] for r in step_rows} == {len(step_rows)}
        for r in step_rows:
            proposers.add(r["proposer"])
            if r["proposer"] == "reference":
                assert r["operation"] == "", r
                assert any(r["prompt"].startswith(o) for o in OPENINGS), r["prompt"]
            else:
                assert r["proposer"] == "evolution", r
                assert r["operation"] in EVOLUTION_OPS, r
    assert proposers == {"reference", "evolution"}


def test_rows_carry_prompt_sha_metrics_and_are_distinct(full_run) -> None:
    rows, _history, _scorer, _ref = full_run
    for r in rows:
        assert r["prompt_sha"] == prompt_sha(r["prompt"])
        assert r["metrics"]["composite"] == len(r["prompt"]) % 97 / 100
        assert r["prompt"] == r["prompt"].strip() and "<INS>" not in r["prompt"]
    normalized = [normalize(r["prompt"]) for r in rows]
    assert len(normalized) == len(set(normalized)), "a prompt was scored twice in one stage"


def test_history_is_returned_best_first(full_run) -> None:
    rows, history, _scorer, _ref = full_run
    assert len(history) == len(rows)
    composites = [p.composite for p in history]
    assert composites == sorted(composites, reverse=True)
    assert {(p.text, p.step, p.proposer) for p in history} == {(r["prompt"], r["step"], r["proposer"]) for r in rows}
    best = history[0]
    assert best.metrics == best.row["metrics"] and best.sha == prompt_sha(best.text)


def test_reference_gets_the_meta_prompt_with_seeded_settings(full_run) -> None:
    _rows, _history, _scorer, ref = full_run
    assert len(ref.calls) == SETTINGS.steps
    for step, call in enumerate(ref.calls, 1):
        assert call["num_samples"] == round(SETTINGS.num_candidates * SETTINGS.reference_share)
        assert call["temperature"] == 1.0 and call["max_tokens"] == SETTINGS.reference_max_tokens
        assert call["seed"] == hash_seed(11, "target", step)
        assert "Task: Answer multiple-choice questions." in call["prompt"]
        for cand in INITIAL:
            assert f"text: {cand.text}" in call["prompt"]
    assert len({c["seed"] for c in ref.calls}) == SETTINGS.steps


def test_same_seed_gives_same_rows_and_other_seed_differs(full_run) -> None:
    rows, _history, _scorer, _ref = full_run
    again, _, _, _ = _run()
    assert again == rows
    other, _, _, _ = _run(seed=12)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]


def test_no_reference_share_means_no_reference_call_and_only_evolution() -> None:
    ref = FakeReference()
    rows, _history, _scorer, _ = _run(reference=ref, settings=StageSettings(steps=2, num_candidates=3,
                                                                            reference_share=0.0))
    assert ref.calls == []
    assert {r["proposer"] for r in rows if r["step"] > 0} == {"evolution"}


def test_duplicate_initial_prompts_are_scored_once() -> None:
    initial = [INITIAL[0], Candidate("  " + INITIAL[0].text.upper(), "seed"), INITIAL[1]]
    rows, _history, _scorer, _ = _run(initial=initial, settings=StageSettings(steps=0))
    assert [r["prompt"] for r in rows] == [INITIAL[0].text, INITIAL[1].text]
    assert [r["num_candidates"] for r in rows] == [2, 2]


# ----------------------------------------------------------------------------------------------
# resume


def _rows_by_step(rows: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in rows:
        out.setdefault(r["step"], []).append(r["prompt"])
    return out


def test_resume_from_half_a_journal_ends_as_the_uninterrupted_run(full_run) -> None:
    rows, history, _scorer, _ref = full_run
    cut = len(rows) // 2
    while rows[cut - 1]["step"] != rows[cut]["step"]:  # cut inside a step: the hard case
        cut += 1
    journal = json.loads(json.dumps(rows[:cut]))  # as the journal stores them
    new_rows, resumed, scorer, _ = _run(recall=_recall_from(journal))
    assert journal + new_rows == rows
    assert _rows_by_step(journal + new_rows) == _rows_by_step(rows)
    keys = [(r["step"], r["prompt_sha"]) for r in journal + new_rows]
    assert len(keys) == len(set(keys)), "a candidate was written twice"
    recalled = {(r["step"], r["prompt"]) for r in journal}
    assert not recalled & set(scorer.scored), "recalled candidates were scored again"
    assert len(scorer.scored) == len(rows) - cut
    assert [(p.text, p.composite, p.step) for p in resumed] == [(p.text, p.composite, p.step) for p in history]


def test_resume_of_a_finished_run_scores_nothing(full_run) -> None:
    rows, history, _scorer, _ref = full_run
    new_rows, resumed, scorer, _ = _run(recall=_recall_from(rows))
    assert new_rows == []
    assert scorer.scored == []
    assert [p.text for p in resumed] == [p.text for p in history]


def test_resume_through_a_real_run_directory(tmp_path, full_run) -> None:
    rows, _history, _scorer, _ref = full_run
    run = RunDir.create(tmp_path, "r1", {"seed": 11})
    for row in rows[: len(rows) // 2 + 1]:
        run.append(row)
    reopened = RunDir.open(run.path)

    def recall(step: int, sha: str, kind: str) -> dict | None:
        found = reopened.find(stage="target", task="tiny", step=step, prompt_sha=sha, eval=kind)
        return found[0] if found else None

    history = run_stage(
        stage="target", description="Answer multiple-choice questions.", initial=INITIAL, score=Scorer(),
        sink=reopened.append, recall=recall, reference=FakeReference(), exemplars=_exemplars,
        settings=SETTINGS, seed=11, row_base={"task": "tiny"},
    )
    stored = [{k: v for k, v in r.items() if k != "ts"} for r in RunDir.open(run.path).journal()]
    assert stored == rows
    assert len(history) == len(rows)


# ----------------------------------------------------------------------------------------------
# weak reference


def test_weak_reference_still_yields_evolution_candidates() -> None:
    ref = FakeReference(weak=True)
    rows, history, _scorer, _ = _run(reference=ref)
    assert len(ref.calls) == SETTINGS.steps
    for step in range(1, SETTINGS.steps + 1):
        step_rows = [r for r in rows if r["step"] == step]
        assert step_rows, f"step {step}: the search did not move"
        assert {r["proposer"] for r in step_rows} == {"evolution"}
        assert all(r["operation"] in EVOLUTION_OPS for r in step_rows)
    assert len(history) > len(INITIAL)


def test_weak_reference_moves_from_a_single_one_sentence_original() -> None:
    initial = [Candidate("Answer the following multiple-choice question about general knowledge.", "original")]
    rows, _history, _scorer, _ = _run(reference=FakeReference(weak=True), initial=initial)
    assert [r for r in rows if r["step"] > 0], "no candidate after step 0"


def test_complete_steps_come_from_the_journal_without_asking_the_reference_llm(full_run) -> None:
    rows, history, _scorer, _ref = full_run
    reference = FakeReference()
    scorer = Scorer()
    replay = run_stage(
        stage="target", description="Answer multiple-choice questions.", initial=INITIAL, score=scorer,
        sink=lambda row: pytest.fail(f"a recalled run wrote {row}"), recall=_recall_from(rows),
        reference=reference, exemplars=_exemplars, settings=SETTINGS, seed=11, row_base={"task": "tiny"},
        recall_step=lambda step: [r for r in rows if r["step"] == step],
    )
    assert reference.calls == [] and scorer.scored == []
    assert [(p.text, p.composite) for p in replay] == [(p.text, p.composite) for p in history]


# ----------------------------------------------------------------------------------------------
# racing (successive halving on minibatches)

RACING = StageSettings(steps=4, num_candidates=4, minibatch=3, promote=1, full_eval_interval=2)


@pytest.fixture(scope="module")
def racing_run() -> tuple[list[dict], list, Scorer, FakeReference]:
    return _run(settings=RACING)


def test_racing_scores_every_candidate_on_the_minibatch_and_promotes_the_best(racing_run) -> None:
    rows, _history, scorer, _ref = racing_run
    assert all(r["eval"] == "full" for r in rows if r["step"] == 0)  # the initial prompts anchor the history
    for step in range(1, RACING.steps + 1):
        partial = [r for r in rows if r["step"] == step and r["eval"] == "partial"]
        full = [r for r in rows if r["step"] == step and r["eval"] == "full"]
        assert len(partial) == RACING.num_candidates
        # promote 1 per step, plus the periodic full evaluation every 2nd step
        assert len(full) == (2 if step % 2 == 0 else 1), (step, len(full))
        best_partial = max(partial, key=lambda r: (r["metrics"]["composite"], -r["candidate_index"]))
        assert full[0]["prompt_sha"] == best_partial["prompt_sha"]
    assert all(len(t) == 3 for t in scorer.scored if t[0] > 0 and len(t) == 3)  # minibatch calls carry their size


def test_racing_periodic_promotion_takes_the_best_unpromoted_partial_of_any_step(racing_run) -> None:
    rows, _history, _scorer, _ref = racing_run
    fully = set()
    for step in range(0, RACING.steps + 1):
        full = [r for r in rows if r["step"] == step and r["eval"] == "full"]
        if step and step % 2 == 0:
            periodic = full[-1]
            earlier = [r for r in rows if r["eval"] == "partial" and r["step"] <= step
                       and r["prompt_sha"] not in fully and r["prompt_sha"] != full[0]["prompt_sha"]]
            best = max(earlier, key=lambda r: (r["metrics"]["composite"], -r["step"]))
            assert periodic["prompt_sha"] == best["prompt_sha"]
        fully |= {r["prompt_sha"] for r in full}


def test_racing_history_and_meta_prompt_use_full_scores_only(racing_run) -> None:
    rows, history, _scorer, ref = racing_run
    full_shas = {r["prompt_sha"] for r in rows if r["eval"] == "full"}
    assert {p.sha for p in history} == full_shas
    assert all(p.row["eval"] == "full" for p in history)
    partial_only = [r for r in rows if r["eval"] == "partial" and r["prompt_sha"] not in full_shas]
    assert partial_only, "some candidates must lose the race"
    assert any(f"text: {INITIAL[0].text}\n" in call["prompt"] for call in ref.calls)  # full ones are shown
    for call in ref.calls:
        for r in partial_only:
            assert f"text: {r['prompt']}\n" not in call["prompt"]


def test_racing_resume_reproduces_the_journal(racing_run) -> None:
    rows, history, _scorer, _ref = racing_run
    half = rows[: len(rows) // 2]
    new_rows: list[dict] = []
    scorer = Scorer()
    resumed = run_stage(
        stage="target", description="Answer multiple-choice questions.", initial=INITIAL, score=scorer,
        sink=new_rows.append, recall=_recall_from(half), reference=FakeReference(), exemplars=_exemplars,
        settings=RACING, seed=11, row_base={"task": "tiny"},
    )
    assert half + new_rows == rows
    assert [p.sha for p in resumed] == [p.sha for p in history]


# ----------------------------------------------------------------------------------------------
# racing on evidence (race="bound", F-Race): block by block, drop only what the paired bound says is worse than
# the leader, survivors merged from their blocks

BOUND = StageSettings(steps=3, num_candidates=4, minibatch=3, race="bound", race_blocks=3)


class RaceDouble:
    """RaceFns double: a racer's point estimate is its mean block composite (a full row: its composite); the
    bound is the candidate's estimate minus the reference's plus ``margin`` (the half-width of a made-up interval);
    ``margin=None``: no bound (nobody is dropped)."""

    def __init__(self, margin: float | None) -> None:
        self.margin = margin
        self.calls: list[tuple[str, str, int]] = []  # (reference sha, candidate sha, blocks seen)

    @staticmethod
    def _point(rows) -> float:
        return sum(r["metrics"]["composite"] for r in rows) / len(rows)

    def composite(self, rows, docs):
        return self._point(rows)

    def bound(self, reference, candidate):
        self.calls.append((reference[0]["prompt_sha"], candidate[0]["prompt_sha"], len(candidate)))
        if self.margin is None:
            return None
        return self._point(candidate) - self._point(reference) + self.margin

    def merge(self, rows):
        assert [r["block"] for r in rows] == list(range(BOUND.race_blocks))
        composite = self._point(rows)
        return {"acc": composite, "composite": composite}, {"split": "optimize", "n": len(rows)}


def _bound_run(race, *, recall=None, rows=None, settings=BOUND):
    rows = [] if rows is None else rows
    scorer = Scorer()
    history = run_stage(
        stage="target", description="Answer multiple-choice questions.", initial=INITIAL, score=scorer,
        sink=rows.append, recall=recall or (lambda step, sha, kind, block=None: None), reference=FakeReference(),
        exemplars=_exemplars, settings=settings, seed=11, row_base={"task": "tiny"}, race=race,
    )
    return rows, history, scorer


def test_bound_racing_drops_a_candidate_once_the_bound_says_it_is_worse_than_the_leader() -> None:
    race = RaceDouble(0.02)
    rows, history, scorer = _bound_run(race)
    dropped_any = False
    for step in range(1, BOUND.steps + 1):
        blocks = [r for r in rows if r["step"] == step and r["eval"] == "partial"]
        full = {r["prompt_sha"]: r for r in rows if r["step"] == step and r["eval"] == "full"}
        incumbent = max((r for r in rows if r["eval"] == "full" and r["step"] < step),
                        key=lambda r: (r["metrics"]["composite"], -r["step"]))
        by_sha: dict[str, list[dict]] = {}
        for r in blocks:
            by_sha.setdefault(r["prompt_sha"], []).append(r)
        assert len(by_sha) == BOUND.num_candidates and all(len(rs) >= 1 for rs in by_sha.values())
        for k in range(BOUND.race_blocks - 1):  # replay each decision after block k
            racing = {sha: rs[:k + 1] for sha, rs in by_sha.items() if len(rs) > k}
            points = {sha: RaceDouble._point(rs) for sha, rs in racing.items()}
            points[incumbent["prompt_sha"]] = incumbent["metrics"]["composite"]
            leader = max(points, key=lambda sha: (points[sha], sha == incumbent["prompt_sha"]))
            for sha in racing:
                worse = sha != leader and points[sha] - points[leader] + 0.02 < 0
                assert (len(by_sha[sha]) > k + 1) is (not worse), (step, k, sha)
                dropped_any |= worse
        for sha, rs in by_sha.items():
            assert [r["block"] for r in rs] == list(range(len(rs)))  # blocks in order, each once
            survived = len(rs) == BOUND.race_blocks
            assert (sha in full) is survived
            if survived:
                assert full[sha]["merged_blocks"] == BOUND.race_blocks and full[sha]["n"] == BOUND.race_blocks
    assert dropped_any, "some candidate must lose the race"
    assert all(p.row["eval"] == "full" for p in history)  # the history holds full scores only
    assert all(len(t) == 3 for t in scorer.scored if t[0] > 0)  # after step 0 only blocks are scored, never a full split
    assert race.calls


def test_a_candidate_that_left_a_race_is_never_proposed_again() -> None:
    """The reference double draws from 24 instructions, so steps repeat proposals; one that lost a race is not
    raced again (as a fully scored one is never scored again)."""
    settings = StageSettings(steps=6, num_candidates=4, minibatch=3, race="bound", race_blocks=3)
    rows, _history, _ = _bound_run(RaceDouble(-0.2), settings=settings)  # drops every candidate but the leader
    first = [(r["prompt_sha"], r["step"]) for r in rows if r["eval"] == "partial" and r["block"] == 0]
    assert len(first) > settings.steps * 2
    assert len({sha for sha, _ in first}) == len(first)


def test_bound_racing_that_never_rejects_scores_every_candidate_on_every_block_once() -> None:
    rows, history, scorer = _bound_run(RaceDouble(None))
    partial = [(r["prompt_sha"], r["block"]) for r in rows if r["eval"] == "partial"]
    assert len(partial) == len(set(partial)) == BOUND.steps * BOUND.num_candidates * BOUND.race_blocks
    assert {sha for sha, _ in partial} <= {p.sha for p in history}


def test_bound_racing_resume_reproduces_the_journal() -> None:
    rows, history, _ = _bound_run(RaceDouble(0.02))
    for cut in (len(rows) // 3, len(rows) // 2, len(rows) - 1):
        half = rows[:cut]
        new_rows: list[dict] = []
        _, resumed, _ = _bound_run(RaceDouble(0.02), recall=_recall_from(half), rows=new_rows)
        assert half + new_rows == rows
        assert [p.sha for p in resumed] == [p.sha for p in history]


def test_bound_racing_needs_its_functions_and_two_blocks() -> None:
    with pytest.raises(ValueError, match="needs race"):
        _bound_run(None)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        _bound_run(RaceDouble(0.02), settings=StageSettings(steps=1, minibatch=3, race="bound", race_blocks=1))
