"""The response cache: keys, SQLite storage, hits and misses through a backend, two writer processes,
and identical scores cached vs uncached on the real embedded model."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import pytest

from tp_harness.backends.base import LMBackend
from tp_harness.backends.cache import ResponseCache, model_key, open_cache, request_key

IDENTITY = {"backend": "hf", "checkpoint": "/models/a", "dtype": "float32", "chat_template": "abc123"}


class Req:
    """lm-eval ``Instance`` double: only ``arguments`` matters to the cache."""

    def __init__(self, *arguments):
        self.arguments = arguments


class FakeLM:
    """LM double: loglikelihood = -len(continuation); generation echoes the context; counts computed requests."""

    def __init__(self, *, fail: bool = False, empty: bool = False):
        self.computed: list[tuple] = []
        self.fail = fail
        self.empty = empty

    def loglikelihood(self, reqs, disable_tqdm=True):
        if self.fail:
            raise RuntimeError("model crashed")
        self.computed += [r.arguments for r in reqs]
        return [(-float(len(r.arguments[1])), True) for r in reqs]

    def generate_until(self, reqs, disable_tqdm=True):
        self.computed += [r.arguments for r in reqs]
        return ["" if self.empty else f"echo {r.arguments[0]}" for r in reqs]


def _backend(tmp_path: Path, lm=None, identity=IDENTITY) -> LMBackend:
    return LMBackend(name="hf", lm=lm or FakeLM(), identity=dict(identity), cache=ResponseCache(tmp_path / "c.sqlite"))


# ---------------------------------------------------------------------------------------------
# keys


def test_key_changes_with_model_chat_template_type_arguments_settings_and_rollout():
    base = request_key(IDENTITY, "loglikelihood", ("ctx", " a"))
    assert base == request_key(dict(reversed(list(IDENTITY.items()))), "loglikelihood", ("ctx", " a"))  # order-free
    variants = [
        request_key({**IDENTITY, "checkpoint": "/models/b"}, "loglikelihood", ("ctx", " a")),
        request_key({**IDENTITY, "dtype": "bfloat16"}, "loglikelihood", ("ctx", " a")),
        request_key({**IDENTITY, "chat_template": "other"}, "loglikelihood", ("ctx", " a")),
        request_key({**IDENTITY, "chat_template": None}, "loglikelihood", ("ctx", " a")),
        request_key(IDENTITY, "generate_until", ("ctx", " a")),
        request_key(IDENTITY, "loglikelihood", ("ctx", " b")),
        request_key(IDENTITY, "loglikelihood", ("ctx2", " a")),
        request_key(IDENTITY, "loglikelihood", ("ctx", " a"), rollout=(7, 0)),
        request_key(IDENTITY, "loglikelihood", ("ctx", " a"), rollout=(7, 1)),
        request_key(IDENTITY, "loglikelihood", ("ctx", " a"), rollout=(8, 0)),
    ]
    assert len({base, *variants}) == len(variants) + 1
    g1 = request_key(IDENTITY, "generate_until", ("ctx", {"until": ["\n"], "max_gen_toks": 24}))
    g2 = request_key(IDENTITY, "generate_until", ("ctx", {"max_gen_toks": 24, "until": ["\n"]}))
    g3 = request_key(IDENTITY, "generate_until", ("ctx", {"until": ["\n"], "max_gen_toks": 32}))
    assert g1 == g2 != g3  # generation settings are part of the key, their order is not
    assert model_key(IDENTITY) != model_key({**IDENTITY, "chat_template": "other"})


# ---------------------------------------------------------------------------------------------
# storage


def test_store_get_clear_and_summary(tmp_path):
    cache = ResponseCache(tmp_path / "sub" / "c.sqlite")
    assert cache.put_many([("k1", "m1", "loglikelihood", [-1.5, True]), ("k2", "m2", "generate_until", "hi"),
                           ("k3", "m2", "generate_until", ""), ("k4", "m2", "generate_until", None)]) == 2
    assert cache.get_many(["k1", "k2", "k3", "k4", "nope"]) == {"k1": [-1.5, True], "k2": "hi"}
    cache.put_many([("k1", "m1", "loglikelihood", [-9.0, False])])  # an existing key is kept
    assert cache.get_many(["k1"]) == {"k1": [-1.5, True]}
    info = cache.summary()
    assert info["entries"] == 2 and info["bytes"] > 0
    assert {(r["model"], r["request_type"], r["entries"]) for r in info["by_model"]} == {
        ("m1", "loglikelihood", 1), ("m2", "generate_until", 1)}
    assert cache.clear("m1") == 1 and cache.get_many(["k1", "k2"]) == {"k2": "hi"}
    assert cache.clear() == 1 and cache.summary()["entries"] == 0
    mode = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_open_cache_is_one_object_per_directory(tmp_path):
    assert open_cache(tmp_path) is open_cache(tmp_path)
    assert open_cache(tmp_path).path == tmp_path / "responses.sqlite"


# ---------------------------------------------------------------------------------------------
# through a backend


def test_backend_hits_and_misses(tmp_path):
    backend = _backend(tmp_path)
    reqs = [Req("ctx", " a"), Req("ctx", " bb"), Req("ctx", " a")]
    first = backend.loglikelihood(reqs)
    assert first == [(-2.0, True), (-3.0, True), (-2.0, True)]
    assert backend.lm.computed == [("ctx", " a"), ("ctx", " bb")]  # the duplicate is computed once
    assert backend.cache.stats.as_dict() == {"hits": 1, "misses": 2}
    again = backend.loglikelihood([Req("ctx", " bb"), Req("ctx", " ccc")])
    assert again == [(-3.0, True), (-4.0, True)]
    assert backend.lm.computed[-1] == ("ctx", " ccc") and len(backend.lm.computed) == 3
    assert backend.issued["loglikelihood"] == 5 and backend.computed["loglikelihood"] == 3
    # another model (or chat template) never sees these entries
    other = _backend(tmp_path, identity={**IDENTITY, "chat_template": "other"})
    other.loglikelihood([Req("ctx", " a")])
    assert other.lm.computed == [("ctx", " a")]


def test_errors_and_empty_generations_are_never_cached(tmp_path):
    failing = _backend(tmp_path, FakeLM(fail=True))
    with pytest.raises(RuntimeError, match="model crashed"):
        failing.loglikelihood([Req("ctx", " a")])
    assert failing.cache.summary()["entries"] == 0
    empty = _backend(tmp_path, FakeLM(empty=True))
    assert empty.generate_until([Req("ctx", {"until": ["\n"]})]) == [""]
    assert empty.generate_until([Req("ctx", {"until": ["\n"]})]) == [""]
    assert len(empty.lm.computed) == 2 and empty.cache.summary()["entries"] == 0


def test_sampled_calls_are_replayed_whole(tmp_path):
    backend = _backend(tmp_path)
    reqs = [Req("meta", {"do_sample": True}), Req("meta", {"do_sample": True})]
    assert backend.generate_until(reqs, rollout_seed=5) == ["echo meta", "echo meta"]
    assert backend.generate_until(reqs, rollout_seed=5) == ["echo meta", "echo meta"]
    assert len(backend.lm.computed) == 2  # the second call came from the cache
    backend.generate_until(reqs + [Req("meta", {"do_sample": True})], rollout_seed=5)  # one sample more
    assert len(backend.lm.computed) == 5  # not all cached: the whole call is generated again
    backend.generate_until(reqs, rollout_seed=6)
    assert len(backend.lm.computed) == 7  # another seed is another rollout


def test_uncached_backend_counts_and_stores_nothing(tmp_path):
    backend = LMBackend(name="hf", lm=FakeLM(), identity=IDENTITY)
    backend.loglikelihood([Req("c", " a")])
    backend.loglikelihood([Req("c", " a")])
    assert len(backend.lm.computed) == 2 and backend.computed["loglikelihood"] == 2


def _writer(path: str, start: int, count: int) -> None:
    cache = ResponseCache(path)
    for i in range(start, start + count, 50):
        cache.put_many((f"k{j}", "m", "loglikelihood", [float(-j), j % 2 == 0]) for j in range(i, i + 50))


def test_two_processes_writing_the_same_cache_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, 0, 3000)), ctx.Process(target=_writer, args=(path, 1500, 3000))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = ResponseCache(path)
    got = cache.get_many(f"k{j}" for j in range(4500))
    assert len(got) == 4500 and cache.summary()["entries"] == 4500
    assert all(got[f"k{j}"] == [float(-j), j % 2 == 0] for j in range(4500))


# ---------------------------------------------------------------------------------------------
# the real model


@pytest.mark.slow
def test_cached_and_uncached_scores_are_identical_on_the_real_model(tmp_path, registries, embedded_backend):
    from tp_harness.evaluation.evaluator import EvalJob, evaluate_jobs, prepare_task
    from tp_harness.runs.runner import load_specs

    (spec,) = load_specs(["commonsenseqa"], [], registries)
    prep = prepare_task(spec, data_formats=registries.data_formats, caps={"test": 8})
    jobs = [EvalJob(prep, "test", spec.tp.instruction), EvalJob(prep, "test", "Pick the most sensible answer.")]
    uncached = evaluate_jobs(embedded_backend.with_options(cache=None), jobs, metrics=registries.metrics)
    backend = embedded_backend.with_options(cache=ResponseCache(tmp_path / "c.sqlite"))  # counters start at 0
    cold = evaluate_jobs(backend, jobs, metrics=registries.metrics)
    cold_computed = backend.computed["loglikelihood"]
    warm = evaluate_jobs(backend, jobs, metrics=registries.metrics)
    warm_computed = backend.computed["loglikelihood"] - cold_computed
    requests = sum(len(prep.task.doc_to_choice(d)) for d in prep.splits["test"]) * 2
    assert cold_computed == requests and warm_computed == 0
    for u, c, w in zip(uncached, cold, warm):
        assert u.metrics == c.metrics == w.metrics
        assert [r.confidence for r in u.records] == [r.confidence for r in w.records]


def test_cache_cli_stats_and_clear(tmp_path, capsys):
    from tp_harness.entrypoints.cli import main

    cache = ResponseCache(tmp_path / "responses.sqlite")
    cache.put_many([("k1", "m1", "loglikelihood", [-1.0, True]), ("k2", "m2", "loglikelihood", [-2.0, False])])
    assert main(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 responses" in out and "m1" in out and "m2" in out
    assert main(["cache", "clear", "--model", "m1", "--cache-dir", str(tmp_path)]) == 0
    assert "deleted 1 cached responses of model m1" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert cache.summary()["entries"] == 0


def test_a_shard_merges_once_and_merging_it_again_changes_nothing(tmp_path):
    """Worker caches ship new entries as JSONL shards; the central cache takes them with INSERT OR IGNORE."""
    from tp_harness.backends.cache import ResponseCache

    worker = ResponseCache(tmp_path / "node" / "responses.sqlite")
    central = ResponseCache(tmp_path / "central" / "responses.sqlite")
    central.put_many([("k0", "m", "loglikelihood", [-1.0, True])])
    worker.put_many([("k0", "m", "loglikelihood", [-1.0, True]), ("k1", "m", "generate_until", "Answer: B"),
                     ("k2", "m", "loglikelihood", [-2.5, False])])
    shard = tmp_path / "shards" / "a.jsonl"
    assert worker.export_shard(shard) == 3
    assert central.merge_shard(shard) == 2  # k0 was there already
    before = central.summary()
    assert central.merge_shard(shard) == 0
    assert central.summary() == before and before["entries"] == 3
    assert central.get_many(["k1", "k2"]) == {"k1": "Answer: B", "k2": [-2.5, False]}
    assert worker.export_shard(tmp_path / "none.jsonl", since=time.time() + 60) == 0
    assert not (tmp_path / "none.jsonl").exists()
    shard.write_text('{"key": "k9"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:1: not a cache entry"):
        central.merge_shard(shard)
