"""Tests of tp_harness.data.formats: the built-in data formats, load_docs and the seeded splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tp_harness.data.formats import (
    load_bbh,
    load_csv,
    load_json,
    load_jsonl,
    load_logiqa,
    load_phrasebank,
    load_tsv,
    tp_register_data_formats,
)
from tp_harness.data.splits import load_docs, split_docs
from tp_harness.errors import DataError, SpecError
from tp_harness.plugin.hookspecs import DataFormatDef, Registry
from tp_harness.spec.loader import load_spec
from tp_harness.spec.schema import TaskSpec


@pytest.fixture
def sources() -> Registry[DataFormatDef]:
    registry: Registry[DataFormatDef] = Registry("task source", DataFormatDef)
    tp_register_data_formats(registry)
    return registry


def write_spec(
    directory: Path,
    *,
    files: list[str],
    fmt: str = "jsonl",
    options: str = "{}",
    splits: str = "{seed: 7, optimize: 3, validation: 3, test: 4}",
) -> Path:
    """A minimal valid multiple-choice spec over ``files`` in ``directory``."""
    path = directory / "tiny.yaml"
    path.write_text(
        "task: tiny\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\n'
        'doc_to_choice: ["no", "yes"]\n'
        'doc_to_target: "{{a}}"\n'
        "tp:\n"
        "  domain: general\n"
        "  description: A tiny task.\n"
        "  instruction: Answer.\n"
        "  data:\n"
        f"    format: {fmt}\n"
        f"    files: {json.dumps(files)}\n"
        f"    options: {options}\n"
        f"  splits: {splits}\n",
        encoding="utf-8",
    )
    return path


def jsonl_spec(tmp_path: Path, n: int, **kwargs: str) -> TaskSpec:
    rows = "".join(json.dumps({"q": f"question {i}", "a": i % 2}) + "\n" for i in range(n))
    (tmp_path / "rows.jsonl").write_text(rows, encoding="utf-8")
    return load_spec(write_spec(tmp_path, files=["rows.jsonl"], **kwargs))


# ----------------------------------------------------------------------------------------------
# formats


def test_builtin_formats_are_registered_through_the_hook(sources: Registry[DataFormatDef]) -> None:
    assert sources.names() == ["jsonl", "csv", "tsv", "logiqa", "phrasebank", "json", "ai2_arc", "mmlu", "medmcqa",
                               "medqa", "bbh"]
    assert sources.get("jsonl").suffixes == (".jsonl",)


def test_jsonl_rows_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n\n{"x": 2}\n', encoding="utf-8")
    assert list(load_jsonl(path)) == [(1, {"x": 1}), (3, {"x": 2})]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [('{"x": 2', "expected a JSON object, got invalid JSON"), ("[1, 2]", "expected a JSON object, got list")],
)
def test_jsonl_malformed_row_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(load_jsonl(path))
    assert str(info.value).startswith(f"{path}:2: {expected}")
    assert info.value.line == 2


def test_csv_with_header_and_quoted_multiline_field(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('q,a\n"two\nlines",1\nplain,0\n', encoding="utf-8")
    assert list(load_csv(path)) == [(2, {"q": "two\nlines", "a": "1"}), (4, {"q": "plain", "a": "0"})]


def test_csv_headerless_columns_and_source_field(tmp_path: Path) -> None:
    path = tmp_path / "global_facts_test.csv"
    path.write_text('"What, exactly?",1,2,3,4,B\n', encoding="utf-8")
    rows = list(load_csv(path, columns=["question", "A", "B", "C", "D", "answer"], source_field="subject"))
    assert rows == [
        (
            1,
            {
                "question": "What, exactly?",
                "A": "1",
                "B": "2",
                "C": "3",
                "D": "4",
                "answer": "B",
                "subject": "global_facts",
            },
        )
    ]


def test_csv_header_replaced_by_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("x,y\n1,2\n", encoding="utf-8")
    assert list(load_csv(path, columns=["p", "q"], header=True)) == [(2, {"p": "1", "q": "2"})]


def test_csv_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("q,a\nok,1\nnot,ok,here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.csv:3: expected 2 columns \(q, a\), got 3"):
        list(load_csv(path))


def test_csv_headerless_without_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="expected column names"):
        list(load_csv(path, header=False))


def test_tsv_keeps_inner_quotes(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text('label\ttext\nNo\tHe said "hi" to her.\n', encoding="utf-8")
    assert list(load_tsv(path)) == [(2, {"label": "No", "text": 'He said "hi" to her.'})]


def test_tsv_wrong_column_count(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("label\ttext\nNo\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.tsv:2: expected 2 columns"):
        list(load_tsv(path))


LOGIQA = (
    "\nc\nSome context.\nWhat follows?\nA.first\nB.second\nC.third\nD.fourth\n"
    "\nb\nMore context.\nWhich one?\nA one\nC.three\nB.two\nD?four\n"
    "\na\nContext three.\nQuestion three?\nWhen in City A.B\nB.x\nC.y\nD.z\n"
)


def test_logiqa_blocks_irregular_options(tmp_path: Path) -> None:
    path = tmp_path / "Test.txt"
    path.write_text(LOGIQA, encoding="utf-8")
    rows = list(load_logiqa(path))
    assert rows[0] == (
        2,
        {
            "context": "Some context.",
            "question": "What follows?",
            "A": "first",
            "B": "second",
            "C": "third",
            "D": "fourth",
            "answer": "C",
            "options": ["first", "second", "third", "fourth"],  # EleutherAI/logiqa's fields (lm-eval's logiqa)
            "label": "c",
        },
    )
    # "A one" (space), C before B (taken by written letter), "D?four"
    assert rows[1][1] == {
        "context": "More context.",
        "question": "Which one?",
        "A": "one",
        "B": "two",
        "C": "three",
        "D": "four",
        "answer": "B",
        "options": ["one", "two", "three", "four"],
        "label": "b",
    }
    # an option line without its letter is taken by position, unstripped
    assert rows[2][1]["A"] == "When in City A.B"
    assert [line for line, _ in rows] == [2, 10, 18]


def test_logiqa_bad_answer_letter_names_line(tmp_path: Path) -> None:
    path = tmp_path / "Test.txt"
    path.write_text(LOGIQA.replace("\nb\n", "\ne\n"), encoding="utf-8")
    with pytest.raises(
        DataError, match=r"Test\.txt:10: expected an answer letter a-d opening a block, got 'e'"
    ):
        list(load_logiqa(path))


def test_logiqa_truncated_block(tmp_path: Path) -> None:
    path = tmp_path / "Test.txt"
    path.write_text("\na\nContext.\nQuestion?\nA.x\nB.y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"Test\.txt:2: expected 7 lines per block"):
        list(load_logiqa(path))


def test_phrasebank_rows_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "Sentences_50Agree.txt"
    path.write_bytes("Profit rose @ 5 % .@positive\nCaf\u00e9 sales flat .@neutral\n".encode("latin-1"))
    assert list(load_phrasebank(path, encoding="latin-1")) == [
        (1, {"sentence": "Profit rose @ 5 % .", "label": "positive"}),
        (2, {"sentence": "Caf\u00e9 sales flat .", "label": "neutral"}),
    ]
    with pytest.raises(DataError, match=r"Sentences_50Agree\.txt:2: expected text in encoding 'utf-8'"):
        list(load_phrasebank(path))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Loss widened .@negatve", "expected label negative | neutral | positive, got 'negatve'"),
        ("No label at all", "expected 'sentence@label'"),
    ],
)
def test_phrasebank_malformed_row_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "s.txt"
    path.write_text(f"Fine .@neutral\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(load_phrasebank(path))
    assert str(info.value).startswith(f"{path}:2: {expected}")


def test_json_list_and_mapping_records(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"canary": "x", "data": {"examples": [{"q": 1}, {"q": 2}]}}', encoding="utf-8")
    assert list(load_json(path, records="data.examples")) == [(1, {"q": 1}), (2, {"q": 2})]
    path.write_text('{"111": {"QUESTION": "a?"},\n "222": {"QUESTION": "b?"}}', encoding="utf-8")
    assert list(load_json(path, key_field="pmid")) == [
        (1, {"QUESTION": "a?", "pmid": "111"}),
        (2, {"QUESTION": "b?", "pmid": "222"}),
    ]


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ('[{"q": 1},\n {"q": 2]', {}, r"a\.json:2: expected a JSON document, got invalid JSON"),
        ('[{"q": 1}, 7]', {}, r"a\.json: record 1: expected a JSON object, got int 7"),
        ('{"1": {"q": 1}, "2": "x"}', {"key_field": "id"}, r"a\.json: record 2: expected a JSON object, got str"),
        ('{"1": {"q": 1}}', {}, r"a\.json: expected a list of records, got a mapping .*; set option key_field"),
        ('{"examples": []}', {"records": "rows"}, r"a\.json: expected the records under key 'rows', found no 'rows'"),
    ],
)
def test_json_malformed_names_file_and_record(tmp_path: Path, text: str, options: dict, expected: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        list(load_json(path, **options))


def _bbh(tmp_path: Path, *examples: dict) -> Path:
    path = tmp_path / "snarks.json"
    path.write_text(json.dumps({"canary": "BENCHMARK DATA", "examples": list(examples)}), encoding="utf-8")
    return path


def test_bbh_options_parsed_into_choices(tmp_path: Path) -> None:
    path = _bbh(tmp_path, {"input": "Which is sarcastic?\nOptions:\n(A) Great, rain.\n(B) Nice day.", "target": "(A)"})
    assert list(load_bbh(path, source_field="subtask")) == [
        (1, {"input": "Which is sarcastic?\nOptions:\n(A) Great, rain.\n(B) Nice day.", "target": "(A)",
             "question": "Which is sarcastic?", "choices": ["Great, rain.", "Nice day."], "answer": "A",
             "answer_index": 0, "subtask": "snarks"})
    ]


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ({"input": "Q?\nOptions:\n(A) x\n(B) y", "target": "Monsters, Inc"}, "example 1: expected target (A)..(B)"),
        ({"input": "Q? no options", "target": "(A)"}, "example 1: expected the input to end with 'Options:'"),
        ({"input": "Q?\nOptions:\n(A) x\n(C) y", "target": "(A)"}, "example 1: expected the input to end"),
        ({"input": "Q?", "target": 3}, "example 1: expected string fields input and target"),
    ],
)
def test_bbh_malformed_example_names_file_and_index(tmp_path: Path, example: dict, expected: str) -> None:
    good = {"input": "Q?\nOptions:\n(A) x\n(B) y", "target": "(B)"}
    path = _bbh(tmp_path, good, example)
    with pytest.raises(DataError) as info:
        list(load_bbh(path))
    assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)


# ----------------------------------------------------------------------------------------------
# load_docs


def test_load_docs_concatenates_files_in_order(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    (tmp_path / "b.csv").write_text("q,a\nb1,0\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text("q,a\na1,1\na2,0\n", encoding="utf-8")
    spec = load_spec(write_spec(tmp_path, files=["b.csv", "a.csv"], fmt="csv"))
    assert [d["q"] for d in load_docs(spec, sources)] == ["b1", "a1", "a2"]


def test_load_docs_missing_file_is_a_spec_error(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    spec = jsonl_spec(tmp_path, 10)
    (tmp_path / "rows.jsonl").unlink()
    with pytest.raises(SpecError) as info:
        load_docs(spec, sources)
    message = str(info.value)
    assert message.startswith(f"{spec.path}:12: tp.data.files[0]: file not found: ")
    assert str(tmp_path / "rows.jsonl") in message


def test_load_docs_unknown_format(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    (tmp_path / "rows.jsonl").write_text("{}\n", encoding="utf-8")
    spec = load_spec(write_spec(tmp_path, files=["rows.jsonl"], fmt="jsonlines"))
    with pytest.raises(SpecError, match=r"tiny\.yaml:11: tp\.data\.format: unknown task source 'jsonlines'"):
        load_docs(spec, sources)


def test_load_docs_unknown_option_did_you_mean(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    (tmp_path / "rows.jsonl").write_text("{}\n", encoding="utf-8")
    spec = load_spec(write_spec(tmp_path, files=["rows.jsonl"], options="{encodng: utf-8}"))
    with pytest.raises(SpecError) as info:
        load_docs(spec, sources)
    assert "tp.data.options.encodng: unknown option for format 'jsonl' (did you mean encoding?)" in str(
        info.value
    )


def test_load_docs_malformed_row_keeps_file_and_line(
    tmp_path: Path, sources: Registry[DataFormatDef]
) -> None:
    (tmp_path / "rows.jsonl").write_text('{"q": 1}\n{oops\n', encoding="utf-8")
    spec = load_spec(write_spec(tmp_path, files=["rows.jsonl"]))
    with pytest.raises(DataError, match=r"rows\.jsonl:2: expected a JSON object"):
        load_docs(spec, sources)


# ----------------------------------------------------------------------------------------------
# split_docs


def test_splits_are_disjoint_and_sized(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    spec = jsonl_spec(tmp_path, 20)
    docs = load_docs(spec, sources)
    splits = split_docs(spec, docs)
    assert list(splits) == ["optimize", "validation", "test"]
    assert [len(v) for v in splits.values()] == [3, 3, 4]
    ids = [d["q"] for split in splits.values() for d in split]
    assert len(set(ids)) == 10


def test_splits_are_deterministic_by_seed(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    spec = jsonl_spec(tmp_path, 50)
    docs = load_docs(spec, sources)
    assert split_docs(spec, docs) == split_docs(spec, list(docs))
    other = load_spec(
        write_spec(tmp_path, files=["rows.jsonl"], splits="{seed: 8, optimize: 3, validation: 3, test: 4}")
    )
    assert split_docs(other, docs) != split_docs(spec, docs)


def test_caps_give_prefixes(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    spec = jsonl_spec(tmp_path, 20)
    docs = load_docs(spec, sources)
    full = split_docs(spec, docs)
    small = split_docs(spec, docs, caps={"optimize": 2, "test": 1})
    assert small["optimize"] == full["optimize"][:2]
    assert small["validation"] == full["validation"]
    assert small["test"] == full["test"][:1]
    assert split_docs(spec, docs, caps={"optimize": 99}) == full


def test_caps_refuse_unknown_split(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    spec = jsonl_spec(tmp_path, 20)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        split_docs(spec, load_docs(spec, sources), caps={"dev": 1})


def test_too_few_docs_names_field_and_counts(tmp_path: Path, sources: Registry[DataFormatDef]) -> None:
    spec = jsonl_spec(tmp_path, 9)
    with pytest.raises(SpecError) as info:
        split_docs(spec, load_docs(spec, sources))
    assert str(info.value) == (
        f"{spec.path}:14: tp.splits: asks for 3 + 3 + 4 = 10 docs (optimize + validation + test) "
        "but the data has only 9; lower the split sizes"
    )
