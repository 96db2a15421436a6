"""Bad inputs and faults, tried as a careful user and as an attacker would (issue 13).

Every case runs the real command line (``tp_harness.entrypoints.cli.main``, or ``python -m tp_harness`` in a subprocess where
the process boundary matters) and asserts exit code 2, no traceback, one ``tp-harness: error:`` line and a
message that names the thing: the file and line, the field, the flag, the plugin, the holder of a lock.
Cases are grouped by what the harness does with them:

- ``REFUSED``: an attack or an unsafe state is refused (templates that would run code, data outside the spec's
  directory, a second writer, another scorer on --resume); each also checks that nothing ran and nothing was read.
- ``CLEAR``: a mistake gives one clear error line instead of a traceback or silent acceptance.
- ``SURVIVED``: the input is accepted and handled safely (an adversarial prompt stays text; a cut samples file
  loses its intervals with a warning; an unreadable cache is cleared).

The validation cases fail before any model loads, so they take milliseconds. The fault cases at the end
(signals, kill -9 at several points, two concurrent resumes, a full disk) run the real embedded model on a tiny
task and compare each interrupted-then-resumed run with an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tp_harness.entrypoints.cli import main

REPO = Path(__file__).resolve().parent.parent
EXPLOIT = "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}"
MRO_EXPLOIT = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
ENDRAW_EXPLOIT = "{% endraw %}" + EXPLOIT + "{% raw %}"


def _env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout's code first, no external plugins."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "TP_HARNESS_PLUGINS": "", "HF_HUB_OFFLINE": "1", **extra}


# ----------------------------------------------------------------------------------------------
# a tiny task: yes/no questions, 24 rows, splits 8 / 4 / 8

ROWS = [{"q": f"Is {i} an even number?", "label": "yes" if i % 2 == 0 else "no"} for i in range(24)]


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": "tiny",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{q}}\nAnswer:",
        "doc_to_choice": ["no", "yes"],
        "doc_to_target": "{{['no', 'yes'].index(label)}}",
        "tp": {
            "domain": "general",
            "description": "Answer a yes/no question about numbers.",
            "instruction": "Answer the question with yes or no.",
            "data": {"format": "jsonl", "files": ["data/tiny.jsonl"]},
            "splits": {"seed": 1, "optimize": 8, "validation": 4, "test": 8},
        },
    }
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        if value is _DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


_DROP = object()


def make_task(root: Path, *, spec: dict[str, Any] | None = None, rows: list[dict] | None = None,
              name: str = "tiny.jsonl") -> Path:
    """Write ``root/tiny.yaml`` and ``root/data/<name>``; return ``root`` (a --specs directory)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "tiny.yaml").write_text(yaml.safe_dump(spec or _spec(), sort_keys=False, width=1000), encoding="utf-8")
    (root / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in (ROWS if rows is None else rows)),
                                      encoding="utf-8")
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_clear(code: int, err: str, *names: str) -> str:
    """Exit 2, no traceback, exactly one ``tp-harness: error:`` line, and every name in the message."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("tp-harness: error:")]
    assert len(lines) == 1, err
    for name in names:
        assert name in err, f"{name!r} not in: {err}"
    return err


def evaluate(capsys, specs: Path, *extra: str) -> tuple[int, str]:
    return run_cli(capsys, "evaluate", "--specs", str(specs), "--task", "tiny", *extra)


# ----------------------------------------------------------------------------------------------
# REFUSED: templates that would run code (the spec is data: nothing may execute)

TEMPLATE_ATTACKS = {
    "globals-via-cycler": ("doc_to_text", EXPLOIT + "{{q}}"),
    "subclasses-via-mro": ("doc_to_text", MRO_EXPLOIT + "{{q}}"),
    "attr-filter": ("doc_to_target", "{{ (q|attr('__class__')) }}"),
    "subscript-dunder": ("doc_to_text", "{{ q['__class__'] }}"),
    "globals-in-target": ("doc_to_target", "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}"),
    "lipsum-globals": ("doc_to_text", "{{ lipsum.__globals__['os'].popen('touch PWNED').read() }}"),
}


@pytest.mark.parametrize("field, template", TEMPLATE_ATTACKS.values(), ids=TEMPLATE_ATTACKS.keys())
def test_refused_template_that_reaches_python_internals(tmp_path, capsys, monkeypatch, field, template):
    monkeypatch.chdir(tmp_path)
    specs = make_task(tmp_path / "specs", spec=_spec(**{field: template}))
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.yaml:", f": {field}:", "sandbox")
    assert not list(tmp_path.rglob("PWNED")), "a spec template ran a shell command"


def test_refused_template_built_at_render_time_is_stopped_by_the_sandbox(tmp_path, capsys, monkeypatch):
    """A name the static check cannot see (built by string concatenation) is refused when it renders."""
    monkeypatch.chdir(tmp_path)
    template = "{{ (q ~ '')['_' ~ '_class__']['_' ~ '_mro__'] }}{{q}}"
    specs = make_task(tmp_path / "specs", spec=_spec(doc_to_text=template))
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.yaml:", "doc_to_text", "sandbox")


def test_refused_template_in_a_mode_override_names_the_mode_field(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(**{"tp.modes": {"generate_until": {
        "doc_to_text": "{{q}}", "doc_to_target": "{{label}}", "gen_prefix": EXPLOIT,
        "answer_format": {"parser": "label_confidence", "labels": ["no", "yes"]}}}})
    code, err = evaluate(capsys, make_task(tmp_path / "specs", spec=spec))
    assert_clear(code, err, "tiny.yaml:", "tp.modes.generate_until.gen_prefix", "sandbox")
    assert not list(tmp_path.rglob("PWNED"))


def test_refused_template_attack_in_a_subprocess_runs_nothing(tmp_path):
    """The same attack through ``python -m tp_harness``: exit 2, one line, no file created anywhere."""
    specs = make_task(tmp_path / "specs", spec=_spec(doc_to_text=EXPLOIT + "{{q}}"))
    proc = subprocess.run([sys.executable, "-m", "tp_harness", "evaluate", "--specs", str(specs), "--task", "tiny"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env())
    assert_clear(proc.returncode, proc.stderr, "tiny.yaml:", "doc_to_text", "__globals__")
    assert not list(tmp_path.rglob("PWNED"))


def test_refused_description_that_is_not_the_escaped_instruction(tmp_path, capsys):
    """A top-level ``description`` (what stock lm-eval renders) can only be the instruction's escaped copy."""
    code, err = evaluate(capsys, make_task(tmp_path / "specs", spec=_spec(description=EXPLOIT + "\n\n")))
    assert_clear(code, err, "tiny.yaml:", "description")


def test_clear_template_that_does_not_parse(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "specs", spec=_spec(doc_to_text="{% for x in %}{{q}}")))
    assert_clear(code, err, "tiny.yaml:", "doc_to_text", "not a valid Jinja template")


# ----------------------------------------------------------------------------------------------
# REFUSED: data paths outside the spec's directory (the content is never read or echoed)

def _passwd_like(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.jsonl"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"q": "TOP-SECRET-CONTENT", "label": "yes"}\n' * 30, encoding="utf-8")
    return secret


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "etc-passwd"])
def test_refused_data_file_outside_the_spec_directory(tmp_path, capsys, how):
    secret = _passwd_like(tmp_path)
    specs = tmp_path / "specs"
    if how == "dotdot":
        target = "../outside/secret.jsonl"
    elif how == "absolute":
        target = str(secret)
    elif how == "etc-passwd":
        target = "../../../../../../../../etc/passwd"
    else:
        (specs / "data").mkdir(parents=True)
        (specs / "data" / "link.jsonl").symlink_to(secret)
        target = "data/link.jsonl"
    make_task(specs, spec=_spec(**{"tp.data.files": [target]}))
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.yaml:", "tp.data.files[0]", "outside the spec's directory",
                 "--allow-data-outside-spec-dir")
    assert "TOP-SECRET-CONTENT" not in err and "root:" not in err


def test_survived_data_outside_the_spec_directory_with_the_opt_in_flag(tmp_path, capsys):
    """The flag lets a trusted spec read outside its directory; with a bad --limit it still stops before the
    model, which shows the spec and its data passed validation."""
    secret = _passwd_like(tmp_path)
    specs = make_task(tmp_path / "specs", spec=_spec(**{"tp.data.files": [str(secret)]}))
    code, err = evaluate(capsys, specs, "--allow-data-outside-spec-dir", "--model-args", "dtyp=bfloat16")
    assert_clear(code, err, "dtyp")  # got past the spec and its data; refused at the model args
    assert "TOP-SECRET-CONTENT" not in err


# ----------------------------------------------------------------------------------------------
# CLEAR: answers, labels, columns, duplicates, weights, empty files (all before any model loads)

def _rows_with(index: int, **row: Any) -> list[dict]:
    rows = [dict(r) for r in ROWS]
    rows[index] = {**rows[index], **row}
    return rows


def test_clear_label_outside_the_label_set(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "s", rows=_rows_with(5, label="Maybe")))
    assert_clear(code, err, "tiny.jsonl:6", "doc_to_target", "'Maybe' is not in list")


def test_clear_answer_not_among_the_choices(tmp_path, capsys):
    spec = _spec(doc_to_target="{{label}}")
    code, err = evaluate(capsys, make_task(tmp_path / "s", spec=spec, rows=_rows_with(3, label="Z")))
    assert_clear(code, err, "tiny.jsonl:4", "'Z' is not among the choices")


def test_clear_answer_index_out_of_range(tmp_path, capsys):
    rows = [{**r, "idx": 1 if r["label"] == "yes" else 0} for r in ROWS]
    rows[7]["idx"] = 5
    spec = _spec(doc_to_target="{{idx}}")
    code, err = evaluate(capsys, make_task(tmp_path / "s", spec=spec, rows=rows))
    assert_clear(code, err, "tiny.jsonl:8", "index 5 is outside the 2 choices")


def test_clear_bad_label_in_a_split_that_is_not_evaluated(tmp_path, capsys):
    """Every split is checked, whatever --split and --limit evaluate: one bad row anywhere is found."""
    from tp_harness.data.splits import split_indices
    from tp_harness.spec.loader import load_spec

    specs = make_task(tmp_path / "s")
    test_index = split_indices(load_spec(specs / "tiny.yaml"), len(ROWS))["test"][-1]
    make_task(specs, rows=_rows_with(test_index, label="Maybe"))
    code, err = evaluate(capsys, specs, "--split", "optimize", "--limit", "1")
    assert_clear(code, err, f"tiny.jsonl:{test_index + 1}", "test split", "'Maybe' is not in list")


def test_clear_label_column_missing(tmp_path, capsys):
    rows = [{"q": r["q"]} for r in ROWS]
    code, err = evaluate(capsys, make_task(tmp_path / "s", rows=rows))
    assert_clear(code, err, "tiny.jsonl:", "doc_to_target", "'label' is undefined", "the row's fields: q")


def test_clear_choices_template_that_gives_no_list(tmp_path, capsys):
    spec = _spec(doc_to_choice="{{q}}")
    code, err = evaluate(capsys, make_task(tmp_path / "s", spec=spec))
    assert_clear(code, err, "tiny.jsonl:", "doc_to_choice", "SyntaxError")


def test_clear_same_data_file_listed_twice(tmp_path, capsys):
    spec = _spec(**{"tp.data.files": ["data/tiny.jsonl", "data/./tiny.jsonl"]})
    code, err = evaluate(capsys, make_task(tmp_path / "s", spec=spec))
    assert_clear(code, err, "tiny.yaml:", "tp.data.files[1]", "the same file as tp.data.files[0]")


def test_clear_same_row_in_two_splits(tmp_path, capsys):
    from tp_harness.data.splits import split_indices
    from tp_harness.spec.loader import load_spec

    specs = make_task(tmp_path / "s")
    idx = split_indices(load_spec(specs / "tiny.yaml"), len(ROWS))
    rows = [dict(r) for r in ROWS]
    rows[idx["test"][0]] = dict(rows[idx["optimize"][0]])  # a test doc that is also an optimize doc
    make_task(specs, rows=rows)
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "duplicates", "tiny.jsonl:", "leaks the held-out data")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_clear_weight_that_is_not_finite(tmp_path, capsys, value):
    specs = make_task(tmp_path / "s")
    text = (specs / "tiny.yaml").read_text().replace("  splits:", f"  metric_weights:\n    acc: {value}\n  splits:")
    (specs / "tiny.yaml").write_text(text)
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.yaml:", "tp.metric_weights.acc", "finite")


def test_clear_empty_data_file_is_named_as_empty(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "s", rows=[]))
    assert_clear(code, err, "tiny.jsonl", "the file is empty")
    assert "asks for" not in err


def test_clear_second_data_file_empty(tmp_path, capsys):
    specs = make_task(tmp_path / "s", spec=_spec(**{"tp.data.files": ["data/tiny.jsonl", "data/more.jsonl"]}))
    (specs / "data" / "more.jsonl").write_text("\n\n")
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "more.jsonl", "the file is empty")


def test_clear_data_file_not_utf8(tmp_path, capsys):
    specs = make_task(tmp_path / "s")
    with (specs / "data" / "tiny.jsonl").open("ab") as f:
        f.write(b'{"q": "caf\xe9", "label": "yes"}\n')
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.jsonl:25", "undecodable")


def test_clear_data_row_that_is_not_an_object(tmp_path, capsys):
    specs = make_task(tmp_path / "s")
    with (specs / "data" / "tiny.jsonl").open("a") as f:
        f.write('["q", "label"]\n')
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.jsonl:25", "expected a JSON object")


def test_clear_spec_that_is_not_utf8(tmp_path, capsys):
    specs = make_task(tmp_path / "s")
    (specs / "tiny.yaml").write_bytes((specs / "tiny.yaml").read_bytes().replace(b"numbers", b"n\xffmbers"))
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.yaml", "UTF-8")


def test_clear_spec_with_invalid_yaml(tmp_path, capsys):
    specs = make_task(tmp_path / "s")
    (specs / "tiny.yaml").write_text((specs / "tiny.yaml").read_text() + "  bad: [unclosed\n")
    code, err = evaluate(capsys, specs)
    assert_clear(code, err, "tiny.yaml:", "invalid YAML")


def test_clear_spec_directory_that_does_not_exist(tmp_path, capsys):
    code, err = evaluate(capsys, tmp_path / "nowhere")
    assert_clear(code, err, "nowhere", "task spec directory not found")


def test_clear_unknown_task(capsys):
    code, err = run_cli(capsys, "evaluate", "--task", "financial_phrasebnak")
    assert_clear(code, err, "unknown task 'financial_phrasebnak'", "financial_phrasebank")


# ----------------------------------------------------------------------------------------------
# CLEAR: command-line values

@pytest.mark.parametrize("argv, names", [
    (["--limit", "-1"], ["--limit", "expected an integer >= 1"]),
    (["--limit", "0"], ["--limit", "expected an integer >= 1, got 0"]),
    (["--limit", "ten"], ["--limit", "'ten'"]),
    (["--batch-size", "abc"], ["--batch-size", "'abc'"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1 or auto"]),
    (["--show-samples", "-3"], ["--show-samples"]),
    (["--split", "train"], ["--split", "'train'"]),
], ids=["limit-negative", "limit-zero", "limit-text", "batch-size-text", "batch-size-zero", "show-samples",
        "split-name"])
def test_clear_bad_flag_value(capsys, argv, names):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--task", "financial_phrasebank", *argv])
    err = capsys.readouterr().err
    assert_clear(info.value.code, err, *names)
    assert "usage:" not in err


def test_clear_bad_reference_share(capsys):
    with pytest.raises(SystemExit) as info:
        main(["optimize", "--reference-share", "2"])
    assert_clear(info.value.code, capsys.readouterr().err, "--reference-share", "[0, 1]")


@pytest.mark.parametrize("args, names", [
    ("dtyp=bfloat16", ["'dtyp'", "did you mean dtype", "it accepts: name, dtype, batch_size, device"]),
    ("=x", ["'=x' is not one key=value pair"]),
    ("a=b=c", ["'a=b=c' is not one key=value pair"]),
    ("pretrained", ["'pretrained' is not one key=value pair"]),
    ("dtype=float32,dtype=bfloat16", ["'dtype' is given twice"]),
    ("trust_remote_code=True", ["does not accept 'trust_remote_code'"]),
], ids=["typo", "empty-key", "two-equals", "no-equals", "duplicate", "unknown-key"])
def test_clear_model_args_the_backend_does_not_accept(tmp_path, capsys, args, names):
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--model-args", args)
    assert_clear(code, err, "--model-args", *names)


def test_clear_hf_model_args_list_what_hf_accepts(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--model", "hf", "--model-args", "pretrianed=/x")
    assert_clear(code, err, "'pretrianed'", "did you mean pretrained", "pretrained, dtype, batch_size, device")


def test_clear_unknown_backend(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--model", "hff")
    assert_clear(code, err, "unknown backend 'hff'", "did you mean 'hf'")


def test_clear_prompt_file_with_binary_content(tmp_path, capsys):
    prompt = tmp_path / "prompt.bin"
    prompt.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--prompt-file", str(prompt))
    assert_clear(code, err, "--prompt-file", str(prompt), "not UTF-8 text")


def test_clear_prompt_file_missing(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--prompt-file", str(tmp_path / "nope.txt"))
    assert_clear(code, err, "--prompt-file", "nope.txt", "No such file")


def test_clear_prompt_file_that_is_a_directory(tmp_path, capsys):
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--prompt-file", str(tmp_path))
    assert_clear(code, err, "--prompt-file", str(tmp_path))


def test_clear_prompt_file_empty(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--prompt-file", str(tmp_path / "empty.txt"))
    assert_clear(code, err, "empty.txt", "the file is empty")


@pytest.mark.parametrize("command", ["optimize", "sweep"])
def test_clear_equal_budget_on_a_budget_that_races_on_evidence(tmp_path, capsys, command):
    """Racing on evidence costs what the scores decide, so no equal budget exists: refused before any model loads
    (a sweep before its first run), with the budget to use instead."""
    mode = ["--no-transfer"] if command == "optimize" else ["--modes", "no_transfer"]
    code, err = run_cli(capsys, command, *mode, "--equal-budget", "--budget", "light",
                        "--results-dir", str(tmp_path / "results"))
    assert_clear(code, err, "'light'", "races on evidence", "--budget evidence")
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------------------------
# CLEAR: locations (results folder, cache folder, cache file)

def test_clear_results_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("not a folder")
    code, err = run_cli(capsys, "optimize", "--budget", "smoke", "--results-dir", str(tmp_path / "results"))
    assert_clear(code, err, "--results-dir", str(tmp_path / "results"), "is a file")


def test_clear_results_dir_below_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, "optimize", "--budget", "smoke", "--results-dir", str(tmp_path / "file" / "res"))
    assert_clear(code, err, "--results-dir", str(tmp_path / "file"), "is a file")


def test_clear_cache_dir_that_is_a_file_fails_before_the_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("TP_CACHE_DIR", str(tmp_path / "cachefile"))
    t0 = time.monotonic()
    code, err = evaluate(capsys, make_task(tmp_path / "s"))
    assert_clear(code, err, "cachefile", "TP_CACHE_DIR", "cache clear", "--no-cache")
    assert time.monotonic() - t0 < 30  # no model was loaded or converted


def test_clear_cache_file_that_is_not_sqlite(tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "responses.sqlite").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("TP_CACHE_DIR", str(tmp_path / "cache"))
    code, err = evaluate(capsys, make_task(tmp_path / "s"))
    assert_clear(code, err, "responses.sqlite", "tp-harness cache clear", "--no-cache")


def test_clear_cache_stats_of_a_file_that_is_not_sqlite(tmp_path, capsys):
    (tmp_path / "responses.sqlite").write_bytes(b"garbage" * 100)
    code, err = run_cli(capsys, "cache", "stats", "--cache-dir", str(tmp_path))
    assert_clear(code, err, "responses.sqlite", "tp-harness cache clear")


def test_survived_cache_clear_deletes_an_unreadable_cache(tmp_path, capsys):
    (tmp_path / "responses.sqlite").write_bytes(b"garbage" * 100)
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "deleted the unreadable cache" in capsys.readouterr().out
    assert main(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0  # a fresh, empty cache
    assert "0 responses" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# CLEAR / REFUSED: run directories given to --resume (all refused before any model loads)

def _fake_run(tmp_path: Path, *, settings: dict | None = None, journal: bytes = b"") -> Path:
    from tp_harness.runs.runner import OptimizeSettings

    run = tmp_path / "results" / "runs" / "r1"
    (run / "samples").mkdir(parents=True)
    base = {**OptimizeSettings().__dict__, "results_dir": str(tmp_path / "results"), "budget": "smoke"}
    config = {"run_id": "r1", "settings": base if settings is None else settings}
    (run / "config.json").write_text(json.dumps(config))
    (run / "journal.jsonl").write_bytes(journal)
    return run


def test_clear_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, err = run_cli(capsys, "optimize", "--resume", str(tmp_path))
    assert_clear(code, err, str(tmp_path), "not a tp-harness run directory")


def test_clear_resume_with_an_unknown_key_in_config(tmp_path, capsys):
    from tp_harness.runs.runner import OptimizeSettings

    run = _fake_run(tmp_path, settings={**OptimizeSettings().__dict__, "modle": "x"})
    code, err = run_cli(capsys, "optimize", "--resume", str(run))
    assert_clear(code, err, "config.json", "unknown key(s) modle")


def test_clear_resume_with_config_that_is_not_json(tmp_path, capsys):
    run = _fake_run(tmp_path)
    (run / "config.json").write_bytes(b"\xff\xfe{not json")
    code, err = run_cli(capsys, "optimize", "--resume", str(run))
    assert_clear(code, err, "config.json", "cannot read the run config")


def test_clear_resume_with_a_journal_that_is_not_utf8(tmp_path, capsys):
    run = _fake_run(tmp_path, journal=b'{"stage": "source"}\n{"stage": "sou\xffrce"}\n{"a": 1}\n')
    before = (run / "journal.jsonl").read_bytes()
    code, err = run_cli(capsys, "optimize", "--resume", str(run))
    assert_clear(code, err, "journal.jsonl:2", "not UTF-8")
    assert (run / "journal.jsonl").read_bytes() == before


def test_clear_resume_with_a_damaged_journal_line(tmp_path, capsys):
    run = _fake_run(tmp_path, journal=b'{"stage": "source"}\n{torn\n{"a": 1}\n')
    code, err = run_cli(capsys, "optimize", "--resume", str(run))
    assert_clear(code, err, "journal.jsonl:2", "not valid JSON")


def test_refused_second_writer_names_the_holder_and_leaves_the_journal_alone(tmp_path, capsys):
    """A live holder of the run's lock (here: this process, through another open of the lock file)."""
    from tp_harness.store.journal import RunDir

    run = _fake_run(tmp_path, journal=b'{"stage": "source", "step": 0}\n{"stage": "source", "step": 1')
    before = (run / "journal.jsonl").read_bytes()
    holder = RunDir.open(run)
    holder.lock()
    try:
        proc = subprocess.run([sys.executable, "-m", "tp_harness", "optimize", "--resume", str(run)],
                              capture_output=True, text=True, timeout=120, env=_env())
    finally:
        holder.unlock()
    assert_clear(proc.returncode, proc.stderr, str(run), f"pid {os.getpid()}", "is in use by", "started")
    assert (run / "journal.jsonl").read_bytes() == before  # not even the torn tail was repaired


def test_survived_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    """A lock file left by a process that died (its flock gone with it) is taken over, with a warning."""
    from tp_harness.store.journal import LOCK, RunDir

    run = _fake_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started_utc": "then"}))
    rd = RunDir.open(run)
    with caplog.at_level("WARNING"):
        rd.lock()
    try:
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
        assert f"pid {dead.pid}" in caplog.text and "ended without releasing it" in caplog.text
    finally:
        rd.unlock()
    assert (run / LOCK).read_text() == ""  # a clean release leaves no record: the next writer does not warn
    with caplog.at_level("WARNING"):
        caplog.clear()
        rd.lock()
    try:
        assert "taking over" not in caplog.text
    finally:
        rd.unlock()


# ----------------------------------------------------------------------------------------------
# CLEAR: plugins (named with their distribution or origin)

@pytest.mark.parametrize("body, names", [
    ("import tp_harness_missing_dependency_xyz\n", ["failed to load", "ModuleNotFoundError",
                                                    "tp_harness_missing_dependency_xyz"]),
    ("def broken(:\n", ["failed to load", "SyntaxError"]),
    ("raise RuntimeError('config missing')\n", ["failed to load", "config missing"]),
    ("from tp_harness import hookimpl\n@hookimpl\ndef tp_register_metrics(registry):\n"
     "    raise KeyError('boom')\n", ["raised in its tp_register_metrics hook", "KeyError", "boom"]),
    ("from tp_harness import hookimpl\n@hookimpl\ndef tp_register_backends(registry):\n"
     "    registry.add('bad', None)\n", ["tp_register_backends"]),
], ids=["missing-module", "syntax-error", "raises-on-import", "hook-raises", "hook-registers-junk"])
def test_clear_broken_plugin_is_named(tmp_path, capsys, monkeypatch, request, body, names):
    module = f"tp_bad_plugin_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TP_HARNESS_PLUGINS", module)
    code, err = run_cli(capsys, "plugins")
    assert_clear(code, err, f"plugin {module!r}", "found on the Python path", *names)


def test_clear_broken_installed_plugin_names_its_distribution(tmp_path, monkeypatch, capsys):
    """An entry point of an installed distribution that fails on import is named with that distribution."""
    dist = tmp_path / "tp_broken_dist-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-broken-dist\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[tp_harness]\nbroken = tp_broken_mod\n")
    (tmp_path / "tp_broken_mod.py").write_text("import not_installed_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TP_HARNESS_PLUGINS", "broken")
    code, err = run_cli(capsys, "plugins")
    assert_clear(code, err, "plugin 'broken'", "tp-broken-dist 1.2.3", "not_installed_anywhere_xyz")


# ----------------------------------------------------------------------------------------------
# SURVIVED: the leaderboard and a cut samples file

def _stored_run(root: Path, n: int = 12, keep: int | None = None, garbage: bytes = b"") -> Path:
    run = root / "runs" / "r1"
    (run / "samples").mkdir(parents=True)
    rows = [{"doc_id": i, "prompt_sha": "s", "response": "yes", "parsed_answer": "yes", "gold": "yes" if i % 3 else "no",
             "confidence": 0.6 + 0.01 * i, "followed": None, "correct": bool(i % 3)} for i in range(n)]
    text = "".join(json.dumps(r) + "\n" for r in rows[: keep if keep is not None else n]).encode() + garbage
    (run / "samples" / "tiny.test.original.jsonl").write_bytes(text)
    acc = sum(r["correct"] for r in rows) / n
    ev = {"task": "tiny", "split": "test", "prompt_kind": "original", "prompt": "p", "prompt_sha": "s", "n": n,
          "output_type": "multiple_choice", "metrics": {"acc": acc, "composite": 0.5},
          "samples_file": "samples/tiny.test.original.jsonl"}
    tp = {"run_id": "r1", "model": "m", "mode": "two_stage", "targets": ["tiny"], "evaluations": [ev]}
    (run / "results.json").write_text(json.dumps({"results": {"tiny__tp_original": {"acc,none": acc}}, "tp": tp}))
    return run


def _leaderboard_json(root: Path, capsys) -> list[dict]:
    assert main(["leaderboard", str(root), "--format", "json"]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)
    return data, out.err


def test_survived_samples_file_cut_to_half_drops_intervals_with_a_warning(tmp_path, capsys, caplog):
    _stored_run(tmp_path / "whole")
    _stored_run(tmp_path / "cut", keep=6)
    whole, _ = _leaderboard_json(tmp_path / "whole", capsys)
    with caplog.at_level("WARNING"):
        cut, _ = _leaderboard_json(tmp_path / "cut", capsys)
    assert "holds 6 sample rows but results.json says n=12" in caplog.text
    assert whole["rows"][0]["acc_ci_low"] is not None and whole["rows"][0]["acc_ci_high"] is not None
    assert cut["rows"][0]["acc_ci_low"] is None and cut["rows"][0]["acc_ci_high"] is None
    assert cut["rows"][0]["acc"] == whole["rows"][0]["acc"]  # the stored metrics stay


def test_survived_samples_file_with_non_utf8_bytes(tmp_path, capsys, caplog):
    _stored_run(tmp_path, garbage=b'{"doc_id": 99, "gold": "\xff"}\n')
    with caplog.at_level("WARNING"):
        _leaderboard_json(tmp_path, capsys)
    assert "non-UTF-8 JSONL row skipped" in caplog.text


# ----------------------------------------------------------------------------------------------
# SURVIVED: an adversarial instruction stays text (export, stock lm-eval)

ADVERSARIAL = [
    ENDRAW_EXPLOIT,
    "{%- endraw -%}" + EXPLOIT,
    "{% endraw %}{% set x = cycler.__init__.__globals__.os.popen('touch PWNED') %}{% raw %}",
    "{{{{ '{' }}}} {# comment #} {%% raw %%} }}{{",
    "Answer carefully. {{ 7 * 7 }} {% if true %}yes{% endif %}",
    "plain text with {single braces} and %} and #} and }}",
]


@pytest.mark.parametrize("prompt", ADVERSARIAL, ids=[f"adversarial-{i}" for i in range(len(ADVERSARIAL))])
def test_survived_exported_instruction_renders_to_exactly_its_text_in_a_plain_jinja_env(tmp_path, monkeypatch,
                                                                                        prompt):
    """What lm-eval does with an exported ``description``, with lm-eval's own unsandboxed Environment."""
    import jinja2

    from tp_harness.spec.schema import lm_eval_description

    monkeypatch.chdir(tmp_path)
    plain = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                               keep_trailing_newline=True)
    assert plain.from_string(lm_eval_description(prompt)).render() == prompt + "\n\n"
    assert not list(tmp_path.rglob("PWNED"))


def test_survived_old_raw_wrapper_would_have_run_the_command(tmp_path, monkeypatch):
    """The check above is sensitive: the former ``{% raw %}`` wrapper runs the command in a plain Environment."""
    import jinja2

    monkeypatch.chdir(tmp_path)
    jinja2.Environment().from_string("{% raw %}" + ENDRAW_EXPLOIT + "{% endraw %}").render()
    assert (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_survived_stock_lm_eval_loads_and_runs_an_adversarial_export_and_nothing_executes(tmp_path, registries):
    """Export a task whose best prompt is the attack, then run it with stock ``lm-eval`` on the embedded model."""
    from tp_harness.backends.embedded import ZOO, ensure_checkpoint
    from tp_harness.evaluation.evaluator import prepare_task
    from tp_harness.runs.runner import export_prepared_task
    from tp_harness.spec.loader import load_spec

    specs = make_task(tmp_path / "specs")
    prep = prepare_task(load_spec(specs / "tiny.yaml"), data_formats=registries.data_formats)
    export = tmp_path / "export"
    best = "Answer yes or no. " + ENDRAW_EXPLOIT + " " + ADVERSARIAL[2]
    export_prepared_task(export, prep, {"original": prep.spec.tp.instruction, "best": best}, registries)
    out = tmp_path / "out"
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={ensure_checkpoint(ZOO['smollm2-135m'])},dtype=float32", "--device", "cpu",
         "--include_path", str(export), "--tasks", "tiny__tp_best", "--limit", "2", "--batch_size", "4",
         "--output_path", str(out), "--log_samples"],
        cwd=work, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("PWNED")) and not list(Path.cwd().glob("PWNED"))
    samples = [json.loads(line) for p in out.rglob("samples_tiny__tp_best*.jsonl") for line in p.open()]
    assert samples, "lm-eval logged no samples"
    context = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert best in context  # the instruction reached the model as its exact text


# ----------------------------------------------------------------------------------------------
# the pytest plugin: a spec from a pull request is data there too

def test_clear_pytest_plugin_reports_a_refused_template_without_running_it(pytester, monkeypatch):
    monkeypatch.chdir(pytester.path)
    make_task(pytester.path / "specs", spec=_spec(**{"doc_to_text": EXPLOIT + "{{q}}", "tp.gates": ["acc >= 0.1"]}))
    pytester.makeini("[pytest]\ntp_specs = specs\n")
    result = pytester.runpytest_subprocess("--tp-model=embedded:smollm2-135m", "-p", "no:cacheprovider", "--co")
    assert result.ret == 2  # a collection error
    result.stdout.fnmatch_lines(["*tp-harness: *tiny.yaml:*: doc_to_text: refused by the template sandbox*"])
    assert not list(pytester.path.rglob("PWNED"))


def test_clear_pytest_plugin_reports_data_outside_the_spec_directory(pytester):
    secret = _passwd_like(pytester.path)
    make_task(pytester.path / "specs", spec=_spec(**{"tp.data.files": [str(secret)], "tp.gates": ["acc >= 0.1"]}))
    pytester.makeini("[pytest]\ntp_specs = specs\n")
    result = pytester.runpytest_subprocess("--tp-model=embedded:smollm2-135m", "-p", "no:cacheprovider", "--co")
    assert result.ret == 2
    result.stdout.fnmatch_lines(["*tp-harness: *tiny.yaml:*: tp.data.files[[]0[]]: *outside the spec's directory*"])
    assert "TOP-SECRET-CONTENT" not in result.stdout.str()


# ----------------------------------------------------------------------------------------------
# Faults on real runs (the embedded model on the tiny task): signals, kill -9 at several points, two
# concurrent resumes, a full disk, another scorer on --resume. Each interrupted run is resumed to the end
# and must equal an uninterrupted run of the same settings: the same journal keys, prompts and metrics.

#: no reference-LLM sampling (--reference-share 0: evolutionary candidates only) keeps a run near 20 s;
#: --no-cache makes every resumed part compute again instead of replaying the cache
RUN_FLAGS = ["--target", "tiny", "--no-transfer", "--budget", "smoke", "--seed", "3", "--reference-share", "0",
             "--no-cache"]


def _rows(run: Path) -> list[dict]:
    path = run / "journal.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line while the writer runs
            pass
    return out


def _keys(rows: list[dict]) -> list[tuple]:
    return [(r["stage"], r["task"], r["step"], r.get("eval"), r.get("prompt_sha"), r.get("candidate_index"))
            for r in rows]


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action. A child inherits an ignored SIGINT (an earlier test's
    library, e.g. Ray's driver, may leave the test process ignoring it), and Python keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(specs: Path, results: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tp_harness", "optimize", "--specs", str(specs), *RUN_FLAGS,
                             "--results-dir", str(results), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=_default_sigint)


def _resume(run: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tp_harness", "optimize", "--resume", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=_default_sigint)


def _wait_until(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """Poll ``ready()`` every 20 ms while ``proc`` runs; True when it held before the process ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("timed out")


def _rounded(value):
    """``value`` with every float rounded to 6 decimals (dicts and lists walked)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _assert_same_result(run: Path, reference: Path) -> None:
    rows, ref = _rows(run), _rows(reference)
    keys = _keys(rows)
    assert max(Counter(keys).values()) == 1, "a candidate was scored twice"
    assert sorted(keys, key=str) == sorted(_keys(ref), key=str), "lost or extra journal rows"
    for name in ("best_prompts.json",):
        got, want = json.loads((run / name).read_text()), json.loads((reference / name).read_text())
        # the same prompts; scores equal up to fp32 rounding (a resumed step scores what is left in other batches)
        assert _rounded(got) == _rounded(want)
    got = json.loads((run / "results.json").read_text())["tp"]["evaluations"]
    want = json.loads((reference / "results.json").read_text())["tp"]["evaluations"]
    assert [(e["task"], e["prompt_kind"], e["prompt"], e["n"]) for e in got] == \
        [(e["task"], e["prompt_kind"], e["prompt"], e["n"]) for e in want]
    for a, b in zip(got, want):
        for metric, value in b["metrics"].items():
            assert a["metrics"][metric] == pytest.approx(value, abs=1e-9), metric


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """An uninterrupted run of the tiny task (the oracle of every fault case)."""
    root = tmp_path_factory.mktemp("faults")
    specs = make_task(root / "specs")
    proc = _start(specs, root / "reference", "--run-id", "ref")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return specs, root / "reference" / "runs" / "ref"


@pytest.mark.slow
def test_fault_signals_and_kill_9_at_several_points_then_resume_equal_an_uninterrupted_run(tiny_reference,
                                                                                             tmp_path):
    """One run interrupted five times: kill -9 before its first journal row, SIGTERM after one row, a second
    --resume while a resume holds the lock (refused, journal untouched), kill -9 mid-stage, SIGINT, kill -9 after
    the last row; each time resumed, and the end result equals the uninterrupted run's."""
    specs, reference = tiny_reference
    total = len(_rows(reference))
    run = tmp_path / "results" / "runs" / "chain"

    # 1. kill -9 after the run directory exists, before the first journal row
    proc = _start(specs, tmp_path / "results", "--run-id", "chain")
    assert _wait_until(proc, lambda: (run / "config.json").is_file())
    proc.kill()
    proc.wait()
    assert _rows(run) == []

    # 2. resume; while it holds the lock, a second --resume is refused and changes nothing; then SIGTERM after a row
    proc = _resume(run)
    holder = run / "run.lock"
    assert _wait_until(proc, lambda: holder.is_file() and f'"pid": {proc.pid}' in holder.read_text())
    journal_before = (run / "journal.jsonl").read_bytes()
    second = subprocess.run([sys.executable, "-m", "tp_harness", "optimize", "--resume", str(run)],
                            capture_output=True, text=True, timeout=120, env=_env())
    assert_clear(second.returncode, second.stderr, str(run), f"pid {proc.pid}", "is in use by")
    assert proc.poll() is None, "the first resume ended before the second was refused"
    assert (run / "journal.jsonl").read_bytes() == journal_before  # the refused one wrote nothing
    assert _wait_until(proc, lambda: len(_rows(run)) >= 1)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    after_term = _rows(run)
    assert 1 <= len(after_term) < total

    # 3. kill -9 mid-stage
    proc = _resume(run)
    assert _wait_until(proc, lambda: len(_rows(run)) >= min(total - 3, len(after_term) + 1))
    proc.kill()
    proc.wait()

    # 4. SIGINT (Ctrl-C) once the resumed run holds the lock (its work still ahead: a wait for a late journal row
    #    could land after the last one, when the run is already finishing): the CLI says how to continue, exits 130
    proc = _resume(run)
    assert _wait_until(proc, lambda: holder.is_file() and f'"pid": {proc.pid}' in holder.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "continue with --resume" in err and "Traceback" not in err

    # 5. kill -9 right after the last journal row, before results.json
    proc = _resume(run)
    if _wait_until(proc, lambda: len(_rows(run)) >= total):
        proc.kill()
    proc.wait()

    # 6. the last resume finishes the run
    proc = _resume(run)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert _rows(run)[: len(after_term)] == after_term  # append-only: nothing rewritten
    _assert_same_result(run, reference)


@pytest.mark.slow
def test_fault_disk_full_mid_run_is_one_error_line_then_resume_equals_an_uninterrupted_run(tiny_reference,
                                                                                             tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    specs, reference = tiny_reference
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = disk / "results" / "runs" / "full"
        proc = _start(specs, disk / "results", "--run-id", "full")
        assert _wait_until(proc, lambda: len(_rows(run)) >= 1)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the disk to the last byte, unbuffered
            for size in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)
        _, err = proc.communicate(timeout=600)
        assert_clear(proc.returncode, err, "No space left on device", "--resume")
        filler.unlink()
        proc = _resume(run)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        _assert_same_result(run, reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_refused_resume_with_another_scorer_shows_the_difference(tiny_reference, tmp_path):
    """config.json edited to another model after rows were scored: --resume is refused, nothing is appended."""
    import shutil

    from tp_harness.backends.embedded import ZOO, ensure_checkpoint

    _, reference = tiny_reference
    run = tmp_path / "results" / "runs" / "ref"
    shutil.copytree(reference, run)
    for name in ("results.json", "best_prompts.json"):
        (run / name).unlink()
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    (run / "journal.jsonl").write_text("".join(lines[:3]))  # interrupted after three rows
    config = json.loads((run / "config.json").read_text())
    config["settings"].update(model="hf", model_args=f"pretrained={ensure_checkpoint(ZOO['smollm2-135m'])}",
                              results_dir=str(tmp_path / "results"))
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "journal.jsonl").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "tp_harness", "optimize", "--resume", str(run)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert_clear(proc.returncode, proc.stderr, "--resume would score with another scorer",
                 "model: 'embedded:smollm2-135m' -> 'hf'", "backend: 'embedded:smollm2-135m' -> 'hf'")
    assert (run / "journal.jsonl").read_bytes() == before


def test_clear_instruction_longer_than_the_model_window_before_the_model_loads(tmp_path, capsys):
    """A 200 KB instruction (about 40k tokens, the window is 8,192) is refused in tokens from the checkpoint's
    tokenizer, before the weights load, and is not echoed."""
    from tp_harness.backends import hf
    from tp_harness.backends.embedded import ZOO, ensure_checkpoint

    ensure_checkpoint(ZOO["smollm2-135m"])  # converted once per machine (the session's model fixture does it too)
    prompt = tmp_path / "long.txt"
    prompt.write_text("Consider every word of this question with great care before answering. " * 2800)
    loads = hf.LOAD_COUNT["hflm"]
    code, err = evaluate(capsys, make_task(tmp_path / "s"), "--prompt-file", str(prompt), "--no-cache")
    assert_clear(code, err, "tokens", "context window is 8192 tokens", "it would be cut silently")
    assert len(err) < 1000
    assert hf.LOAD_COUNT["hflm"] == loads  # no model was loaded


def test_clear_pytest_plugin_refuses_model_args_the_backend_does_not_read(pytester):
    make_task(pytester.path / "specs", spec=_spec(**{"tp.gates": ["acc >= 0.1"]}))
    pytester.makeini("[pytest]\ntp_specs = specs\n")
    result = pytester.runpytest_subprocess("--tp-model=embedded:smollm2-135m", "--tp-model-args=dtyp=bfloat16",
                                           "-p", "no:cacheprovider", "-m", "tp")
    out = result.stdout.str()
    assert result.ret == 1
    assert "backend 'embedded' does not accept 'dtyp' (did you mean dtype?)" in out
    assert "Traceback" not in out


def test_clear_pytest_plugin_refuses_a_limit_below_one(pytester):
    make_task(pytester.path / "specs", spec=_spec(**{"tp.gates": ["acc >= 0.1"]}))
    pytester.makeini("[pytest]\ntp_specs = specs\n")
    result = pytester.runpytest_subprocess("--tp-model=embedded:smollm2-135m", "--tp-limit=0", "-p",
                                           "no:cacheprovider")
    assert result.ret == 4  # pytest's usage error
    assert "--tp-limit: expected at least 1 doc, got 0" in result.stderr.str()
