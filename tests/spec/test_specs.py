"""Tests of tp_harness.spec.schema: the shipped specs and their data, the lm-eval view, and spec errors."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest
from lm_eval.config.task import TaskConfig
from lm_eval.utils import apply_template

from tp_harness.data.formats import tp_register_data_formats
from tp_harness.data.splits import load_docs, split_docs
from tp_harness.errors import SpecError
from tp_harness.plugin.hookspecs import Registry, TaskSourceDef
from tp_harness.spec.loader import BUILTIN_SPEC_DIR, discover_specs, load_spec
from tp_harness.spec.schema import LM_EVAL_LOADER
from tp_harness.spec.yaml_lines import FunctionRef

SHIPPED = {
    "logiqa": ("general", "source", (64, 64, 128)),
    "mmlu_general": ("general", "source", (64, 64, 128)),
    "mmlu_law": ("legal", "both", (64, 64, 128)),
    "mmlu_medicine": ("medical", "both", (64, 64, 128)),
    "mmlu_finance": ("financial", "both", (64, 64, 128)),
    "medqa_usmle": ("medical", "target", (64, 64, 128)),
    "medmcqa": ("medical", "target", (64, 64, 128)),
    "pubmedqa": ("medical", "target", (64, 64, 128)),
    "financial_phrasebank": ("financial", "target", (64, 64, 128)),
    "legalbench_hearsay": ("legal", "target", (25, 25, 50)),
    "legalbench_abercrombie": ("legal", "target", (25, 25, 50)),
    "legalbench_proa": ("legal", "target", (25, 25, 50)),
    "legalbench_diversity_1": ("legal", "target", (25, 25, 50)),
    "legalbench_personal_jurisdiction": ("legal", "target", (12, 12, 30)),
    "commonsenseqa": ("general", "source", (64, 64, 128)),
    "arc_challenge": ("general", "source", (64, 64, 128)),
    "bbh_mc": ("general", "source", (64, 64, 128)),
    "gsm8k": ("general", "source", (64, 64, 128)),
}
#: Tasks without a fixed set of choices: scored by generation only.
GENERATE_ONLY = {"gsm8k"}


@pytest.fixture(scope="module")
def sources() -> Registry[TaskSourceDef]:
    registry: Registry[TaskSourceDef] = Registry("task source", TaskSourceDef)
    tp_register_data_formats(registry)
    return registry


# ----------------------------------------------------------------------------------------------
# shipped specs


def test_discover_finds_the_shipped_tasks() -> None:
    found = discover_specs([BUILTIN_SPEC_DIR])
    assert set(found) == set(SHIPPED)
    assert all(path.parent == BUILTIN_SPEC_DIR for path in found.values())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_loads_and_its_docs_split(name: str, sources: Registry[TaskSourceDef]) -> None:
    domain, role, sizes = SHIPPED[name]
    spec = load_spec(BUILTIN_SPEC_DIR / f"{name}.yaml")
    assert (spec.name, spec.tp.domain, spec.tp.role) == (name, domain, role)
    generate_only = name in GENERATE_ONLY
    assert spec.modes == (["generate_until"] if generate_only else ["multiple_choice", "generate_until"])
    assert spec.tp.gates and spec.tp.description and spec.tp.instruction and spec.tp.license
    # runnable in stock lm-eval: the data come through tp-harness's custom_dataset, tp sits under metadata
    assert str(spec.lm_eval["custom_dataset"]) == f"!function {LM_EVAL_LOADER}"
    assert spec.lm_eval["test_split"] == "test" and "tp" not in spec.lm_eval["metadata"]
    docs = load_docs(spec, sources)
    splits = split_docs(spec, docs)
    assert tuple(len(splits[s]) for s in ("optimize", "validation", "test")) == sizes
    ids = {id(doc) for split in splits.values() for doc in split}
    assert len(ids) == sum(sizes)

    mc = None if generate_only else spec.lm_eval_config()
    gen = spec.lm_eval_config("generate_until")
    for config, mode in ((mc, "multiple_choice"), (gen, "generate_until")):
        if config is None:
            continue
        assert config["output_type"] == mode
        assert config["task"] == name
        assert "answer_format" not in config
        assert config["description"] == spec.tp.instruction + "\n\n"
        TaskConfig(**config)  # lm-eval accepts every field
    answer_format = spec.answer_format("generate_until")
    assert answer_format is not None
    if not generate_only:
        assert spec.answer_format() is None

    for doc in splits["test"][:16]:
        gold = apply_template(gen["doc_to_target"], doc)
        if mc is not None:
            # multiple_choice: the gold index points at a non-empty option text or label word
            choices = mc["doc_to_choice"]
            if isinstance(choices, str):
                choices = ast.literal_eval(apply_template(choices, doc))
            raw = mc["doc_to_target"]  # a template, or a field name as lm-eval allows (upstream: answerKey, cop)
            target = doc[raw] if isinstance(raw, str) and raw in doc else apply_template(raw, doc)
            if isinstance(target, str) and not target.isdigit():
                target = choices.index(target)
            assert 0 <= int(target) < len(choices)
            assert all(isinstance(c, str) and c.strip() for c in choices)
            assert apply_template(mc["doc_to_text"], doc).strip()
            # letters without fixed labels: A.. as many as the doc has choices (the evaluator's rule)
            letters = [chr(ord("A") + i) for i in range(len(choices))]
        # generate_until: the gold answer is one the parser can read; the prompt asks for the protocol
        if answer_format.parser == "number_confidence":
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?", gold), gold
        else:
            assert gold in (answer_format.labels or letters)
        prompt = apply_template(gen["doc_to_text"], doc)
        assert "Answer: <" in prompt and "Confidence: <0-100>%" in prompt


def test_multiple_choice_scores_option_text_not_letters(sources: Registry[TaskSourceDef]) -> None:
    spec = load_spec(BUILTIN_SPEC_DIR / "logiqa.yaml")
    doc = load_docs(spec, sources)[0]
    choices = ast.literal_eval(apply_template(spec.lm_eval_config()["doc_to_choice"], doc))
    assert choices == [doc["A"], doc["B"], doc["C"], doc["D"]]


def test_shipped_data_is_byte_identical_to_its_notice() -> None:
    """Every copied data file matches the size and sha256 its dataset's NOTICE.md lists."""
    data = BUILTIN_SPEC_DIR / "data"
    checked = 0
    for notice in data.glob("*/NOTICE.md"):
        listed = dict(
            (local, (int(size), sha))
            for local, size, sha in re.findall(
                r"-> `([^`]+)` \((\d+) B, sha256 ([0-9a-f]{64})\)", notice.read_text()
            )
        )
        for file in notice.parent.rglob("*"):
            if file.is_file() and file.name != "NOTICE.md":
                local = file.relative_to(notice.parent).as_posix()
                assert local in listed, f"{file} is not listed in {notice}"
                content = file.read_bytes()
                assert (len(content), hashlib.sha256(content).hexdigest()) == listed[local]
                checked += 1
    assert checked >= 45


# ----------------------------------------------------------------------------------------------
# the lm-eval view


def test_lm_eval_config_for_an_unknown_mode(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL.replace(GEN_MODE, "")))
    assert spec.modes == ["multiple_choice"]
    with pytest.raises(SpecError, match=r"tiny\.yaml:\d+: tp\.modes: mode 'generate_until' is not available"):
        spec.lm_eval_config("generate_until")


def test_lm_eval_config_applies_overrides_and_instruction(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL))
    gen = spec.lm_eval_config("generate_until", instruction="Think {{ carefully }}.")
    assert gen["doc_to_text"] == "Q: {{q}}\nAnswer: <yes or no>\nConfidence: <0-100>%"
    assert gen["doc_to_choice"] == ["no", "yes"]  # not overridden: kept
    assert gen["filter_list"] == [{"name": "none", "filter": [{"function": "take_first"}]}]
    assert gen["description"] == "Think {{ '{' }}{{ '{' }} carefully }}.\n\n"  # renders to the exact text
    assert apply_template(gen["description"], {}) == "Think {{ carefully }}.\n\n"
    assert "description" not in spec.lm_eval_config(instruction="")
    gen["doc_to_text"] = "changed"
    assert spec.lm_eval_config("generate_until")["doc_to_text"].startswith("Q: ")


def test_metric_weights_follow_the_registry_names(tmp_path: Path) -> None:
    path = write_spec(tmp_path, MINIMAL.replace("  gates:", "  metric_weights: {acc: 1, brier: 2}\n  gates:"))
    assert load_spec(path, metric_names={"acc", "brier"}).tp.metric_weights == {"acc": 1, "brier": 2}
    with pytest.raises(SpecError, match=r"tp\.metric_weights\.brier: unknown metric; registered: acc, acc_norm, auroc"):
        load_spec(path)


# ----------------------------------------------------------------------------------------------
# broken specs

GEN_MODE = (
    "  modes:\n"
    "    generate_until:\n"
    '      doc_to_text: "Q: {{q}}\\nAnswer: <yes or no>\\nConfidence: <0-100>%"\n'
    '      doc_to_target: "{{a}}"\n'
    "      filter_list: [{name: none, filter: [{function: take_first}]}]\n"
    '      answer_format: {parser: label_confidence, labels: ["yes", "no"]}\n'
)
MINIMAL = (
    "task: tiny\n"  # 1
    "output_type: multiple_choice\n"  # 2
    'doc_to_text: "Q: {{q}}\\nA:"\n'  # 3
    'doc_to_choice: ["no", "yes"]\n'  # 4
    "doc_to_target: \"{{['no', 'yes'].index(a)}}\"\n"  # 5
    "tp:\n"  # 6
    "  domain: general\n"  # 7
    "  role: target\n"  # 8
    "  description: A tiny yes/no task.\n"  # 9
    "  instruction: Answer yes or no.\n"  # 10
    "  data:\n"  # 11
    "    format: jsonl\n"  # 12
    "    files: [rows.jsonl]\n"  # 13
    "  splits: {seed: 1, optimize: 1, validation: 1, test: 1}\n"  # 14
    + GEN_MODE  # 15-20
    + '  gates: ["acc >= 0.2"]\n'  # 21
)


def write_spec(directory: Path, text: str, name: str = "tiny.yaml") -> Path:
    (directory / "rows.jsonl").write_text('{"q": "ok?", "a": "yes"}\n' * 3, encoding="utf-8")
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_spec_loads(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL))
    assert spec.name == "tiny" and spec.data_dir == tmp_path
    assert spec.line_of("tp.splits.test") == 14
    assert spec.line_of("tp.modes.generate_until.answer_format.parser") == 20


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # missing required fields
        (
            "  instruction: Answer yes or no.\n",
            "",
            "6: tp.instruction: missing required field: the original prompt",
        ),
        ("task: tiny\n", "", ": task: missing required field"),
        (
            "  splits: {seed: 1, optimize: 1, validation: 1, test: 1}\n",
            "",
            "6: tp.splits: missing required field",
        ),
        (
            '      answer_format: {parser: label_confidence, labels: ["yes", "no"]}\n',
            "",
            "16: tp.modes.generate_until.answer_format: missing required field",
        ),
        (
            'doc_to_choice: ["no", "yes"]\n',
            "",
            ": doc_to_choice: missing required field for output_type multiple_choice",
        ),
        # wrong types and values
        (
            'labels: ["yes", "no"]',
            "labels: [yes, no]",
            "20: tp.modes.generate_until.answer_format.labels[0]: "
            "expected a string, got boolean True (YAML reads unquoted yes/no/on/off as booleans: quote it)",
        ),
        ("test: 1}", "test: many}", "14: tp.splits.test: expected an integer, got string 'many'"),
        ("test: 1}", "test: 0}", "14: tp.splits.test: expected a number >= 1, got integer 0"),
        (
            "  instruction: Answer yes or no.",
            "  instruction:",
            "10: tp.instruction: expected a string, got null",
        ),
        (
            "files: [rows.jsonl]",
            "files: rows.jsonl",
            "13: tp.data.files: expected a list, got string 'rows.jsonl'",
        ),
        (
            'doc_to_choice: ["no", "yes"]',
            "doc_to_choice: 5",
            "4: doc_to_choice: expected a string or a list or a mapping, got integer 5",
        ),
        (
            "role: target",
            "role: targett",
            "8: tp.role: expected 'source', 'target' or 'both', got string 'targett' (did you mean target?)",
        ),
        (
            "parser: label_confidence",
            "parser: label_confidense",
            "20: tp.modes.generate_until.answer_format.parser: expected 'letter_confidence'",
        ),
        (
            'parser: label_confidence, labels: ["yes", "no"]',
            "parser: label_confidence",
            "20: tp.modes.generate_until.answer_format: required for parser label_confidence",
        ),
        ('  gates: ["acc >= 0.2"]', '  gates: ["acc"]', "21: tp.gates[0]: cannot parse gate 'acc'"),
        ('  gates: ["acc >= 0.2"]', '  gates: ["accuracy >= 0.2"]', "21: tp.gates[0]: gate 'accuracy >= 0.2' names unknown metric"),
        (
            '  gates: ["acc >= 0.2"]',
            "  metric_weights: {acc: 0}",
            "21: tp.metric_weights: weights must not all be 0",
        ),
        # unknown keys, with did-you-mean
        (
            "  gates:",
            "  gatez:",
            "21: tp.gatez: unknown key (did you mean gates?); expected one of: domain, role",
        ),
        (
            "doc_to_text:",
            "doc_to_txt:",
            "3: doc_to_txt: unknown key (did you mean doc_to_text?); "
            "expected an lm-eval TaskConfig field or tp",
        ),
        (
            '      doc_to_target: "{{a}}"',
            '      doc_to_targte: "{{a}}"',
            "18: tp.modes.generate_until.doc_to_targte: unknown key (did you mean doc_to_target?)",
        ),
        ("    format: jsonl", "    fromat: jsonl", "12: tp.data.fromat: unknown key (did you mean format?)"),
        (
            "    generate_until:",
            "    generate:",
            "16: tp.modes.generate: expected 'multiple_choice' or "
            "'generate_until', got string 'generate' (did you mean generate_until?)",
        ),
        (
            'doc_to_text: "Q: {{q}}\\nA:"',
            'description: "x"',
            "3: description: not allowed here: set tp.instruction",
        ),
        # missing data file
        ("files: [rows.jsonl]", "files: [rows.jsonl, nope.jsonl]", "13: tp.data.files[1]: file not found: "),
        # few-shot demonstrations: how they render is the spec's; which docs they are is tp-harness's
        ('      doc_to_target: "{{a}}"\n', '      doc_to_target: "{{a}}"\n      num_fewshot: 1\n',
         "19: tp.modes.generate_until.num_fewshot: 1 demonstrations leave no optimize doc to score"),
        ('      doc_to_target: "{{a}}"\n', '      doc_to_target: "{{a}}"\n      num_fewshot: -1\n',
         "19: tp.modes.generate_until.num_fewshot: expected a number >= 0, got integer -1"),
        ('      doc_to_target: "{{a}}"\n', '      doc_to_target: "{{a}}"\n      fewshot_config: {split: test}\n',
         "19: tp.modes.generate_until.fewshot_config.split: not allowed here: tp-harness draws the demonstrations"),
        ('      doc_to_target: "{{a}}"\n', '      doc_to_target: "{{a}}"\n      fewshot_config: {doc_to_targt: x}\n',
         "19: tp.modes.generate_until.fewshot_config.doc_to_targt: unknown key (did you mean doc_to_target?)"),
        ('      doc_to_target: "{{a}}"\n',
         '      doc_to_target: "{{a}}"\n      fewshot_config: {doc_to_target: "{{ a.__class__ }}"}\n',
         "19: tp.modes.generate_until.fewshot_config.doc_to_target: refused by the template sandbox"),
        ("output_type: multiple_choice\n", "output_type: multiple_choice\nfewshot_split: test\n",
         "3: fewshot_split: demonstrations never come from the 'test' split"),
        # bad YAML
        ("  role: target", "   role: target", "8: (yaml): invalid YAML: mapping values are not allowed here"),
        ("  role: target", "  role: target\n  role: source", "9: tp.role: duplicate key (first at line 8)"),
    ],
)
def test_broken_spec_names_file_line_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    path = write_spec(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    prefix = str(path) + (":" if expected[0].isdigit() else "")
    assert message.startswith(prefix + expected), message


def test_missing_data_file_names_the_full_path(tmp_path: Path) -> None:
    path = write_spec(tmp_path, MINIMAL.replace("[rows.jsonl]", "[data/none.jsonl]"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:13: tp.data.files[0]: file not found: {tmp_path / 'data/none.jsonl'}"


@pytest.mark.parametrize("text", ["", "- a\n- b\n"])
def test_spec_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(SpecError, match=r"tiny\.yaml:1: \(top level\): expected a mapping of lm-eval fields"):
        load_spec(write_spec(tmp_path, text))


# ----------------------------------------------------------------------------------------------
# discovery


def test_discover_skips_data_dir_and_reads_quoted_names(tmp_path: Path) -> None:
    write_spec(tmp_path, MINIMAL.replace("task: tiny", 'task: "tiny_quoted"  # a comment'))
    (tmp_path / "other.yml").write_text("{task: flow_style, tp: {}}\n", encoding="utf-8")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nested.yaml").write_text("task: nested\n", encoding="utf-8")
    assert discover_specs([tmp_path]) == {
        "flow_style": tmp_path / "other.yml",
        "tiny_quoted": tmp_path / "tiny.yaml",
    }


def test_discover_refuses_a_duplicate_task_naming_both_files(tmp_path: Path) -> None:
    first = write_spec(tmp_path, MINIMAL, name="a.yaml")
    second = write_spec(tmp_path, MINIMAL, name="b.yaml")
    with pytest.raises(SpecError) as info:
        discover_specs([tmp_path])
    assert str(info.value) == f"{second}:1: task: task 'tiny' is also defined in {first}; rename one of them"


def test_discover_across_directories_and_missing_directory(tmp_path: Path) -> None:
    write_spec(tmp_path, MINIMAL.replace("task: tiny", "task: logiqa"))
    with pytest.raises(SpecError, match="task 'logiqa' is also defined in"):
        discover_specs([BUILTIN_SPEC_DIR, tmp_path])
    with pytest.raises(SpecError, match="task spec directory not found"):
        discover_specs([tmp_path / "absent"])


# ----------------------------------------------------------------------------------------------
# the form stock lm-eval runs: tp under metadata, data through tp-harness's custom_dataset

LM_EVAL_HEAD = (
    "custom_dataset: !function tp_harness.lm_eval_dataset.load\n"
    "training_split: optimize\n"
    "validation_split: validation\n"
    "test_split: test\n"
)


def nested(text: str) -> str:
    """MINIMAL with its tp block moved under ``metadata:`` and lm-eval's dataset fields added."""
    head, tp = text.split("tp:\n", 1)
    body = "".join("  " + line if line.strip() else line for line in tp.splitlines(keepends=True))
    return head + LM_EVAL_HEAD + "metadata:\n  version: 1.0\n  tp:\n" + body


def test_tp_block_under_metadata_loads_like_the_top_level_one(tmp_path: Path) -> None:
    top = load_spec(write_spec(tmp_path, MINIMAL, name="top.yaml"))
    spec = load_spec(write_spec(tmp_path, nested(MINIMAL), name="nested.yaml"))
    assert spec.tp == top.tp
    assert spec.lm_eval["custom_dataset"] == FunctionRef(LM_EVAL_LOADER)
    assert spec.lm_eval["metadata"] == {"version": 1.0}  # the tp block is not an lm-eval field
    assert spec.line_of("tp.splits.test") == 20 and spec.line_of("metadata.tp.splits.test") == 20
    config = spec.lm_eval_config()
    assert config["test_split"] == "test" and "tp" not in config["metadata"]
    TaskConfig(**config)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("test: 1}", "test: 0}", "20: tp.splits.test: expected a number >= 1, got integer 0"),
        ("role: target", "role: targett", "14: tp.role: expected 'source', 'target' or 'both'"),
        # a missing split is named
        ("validation: 1, test: 1}", "validation: 1}", "20: tp.splits.test: missing required field"),
        ("test_split: test", "test_split: dev", "9: test_split: no split 'dev': tp_harness.lm_eval_dataset.load "
         "returns optimize, validation, test"),
        ("validation_split: validation\ntest_split: test\n", "",
         "6: custom_dataset: missing test_split: lm-eval scores no split"),
        ("metadata:\n", "tp: {}\nmetadata:\n", "13: metadata.tp: the tp block is given twice (also at the "
         "top level, line 10); keep one"),
    ],
)
def test_nested_spec_errors_name_line_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = nested(MINIMAL)
    assert old in text
    path = write_spec(tmp_path, text.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}:{expected}"), str(info.value)


def test_function_tag_is_kept_as_a_reference(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, MINIMAL.replace("tp:\n", "process_docs: !function utils.process\ntp:\n")))
    assert spec.lm_eval["process_docs"] == FunctionRef("utils.process")
    assert str(spec.lm_eval["process_docs"]) == "!function utils.process"
