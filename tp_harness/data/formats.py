"""Data formats: read one data file into row dicts (the seeded splits are :mod:`tp_harness.data.splits`).

Owns the built-in data formats (``jsonl``, ``csv``, ``tsv``, ``logiqa``, ``phrasebank``, ``json``,
``bbh``, and ``ai2_arc``, ``mmlu``, ``medmcqa``, ``medqa``, which give the rows of the Hugging Face dataset
that lm-eval's upstream task reads, so a spec can use lm-eval's own templates), registered through the ``tp_register_data_formats`` hook exactly as a third-party format would be. It renders no prompt and builds no lm-eval task: rows go to the
evaluator as plain dicts that the spec's lm-eval templates (``doc_to_text`` ...) read.

Every loader has the shape ``load(path, **options) -> Iterator[(line_number, row)]`` with 1-based line
numbers (for a JSON document, which has no row lines: the record's 1-based position), and raises
:class:`~tp_harness.errors.DataError` naming the file and line (or record) of a malformed row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_harness.errors import DataError
from tp_harness.plugin.hookspecs import DataFormatDef, Registry, hookimpl

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

PHRASEBANK_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

_LOGIQA_OPTION = re.compile(r"^\s*([A-D])(?:\s*[.?)\uff0e]\s*|\s+)(.*)$")
_SPLIT_SUFFIX = re.compile(r"_(test|val|dev|train)$")


# ----------------------------------------------------------------------------------------------
# Reading text


def _read_text(path: Path, encoding: str) -> str:
    """Return the whole file decoded with ``encoding``; undecodable bytes raise DataError with the line."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            path,
            f"expected text in encoding {encoding!r}, got undecodable bytes ({err.reason}); "
            "set tp.data.options.encoding (e.g. latin-1)",
            line=line,
        ) from None
    except LookupError:
        raise DataError(path, f"expected a known text encoding, got {encoding!r}") from None


def _lines(path: Path, encoding: str) -> list[str]:
    """The file's lines, split on ``\\n`` only (``\\r`` stripped; Unicode line separators stay text)."""
    text = _read_text(path, encoding)
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _short(value: object, limit: int = 60) -> str:
    """``repr`` of ``value`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Built-in formats


def load_jsonl(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield one JSON object per non-blank line.

    :param path: a JSON Lines file.
    :param encoding: text encoding of the file.
    :raises DataError: a line is not valid JSON, or is JSON but not an object.
    """
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                path,
                f"expected a JSON object, got invalid JSON ({err.msg} at column {err.colno})",
                line=number,
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                path, f"expected a JSON object, got {type(row).__name__} {_short(row)}", line=number
            )
        yield number, row


def _load_delimited(
    path: Path,
    *,
    delimiter: str,
    columns: Sequence[str] | None,
    header: bool | None,
    source_field: str | None,
    encoding: str,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Shared reader of ``csv`` and ``tsv``: named columns, strict column count, optional source field."""
    if columns is not None and (
        isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns)
    ):
        raise DataError(path, f"expected option columns to be a list of names, got {_short(columns)}")
    has_header = columns is None if header is None else bool(header)
    names: list[str] | None = list(columns) if columns is not None else None
    if names is None and not has_header:
        raise DataError(path, "expected column names: set option columns: [...] or header: true")
    source = _SPLIT_SUFFIX.sub("", path.stem) if source_field else None
    reader = csv.reader(
        io.StringIO(_read_text(path, encoding).removeprefix("\ufeff"), newline=""), delimiter=delimiter
    )
    first = True
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(
                path, f"expected a well-formed {_fmt(delimiter)} row, got {err}", line=start
            ) from None
        if not record or record == [""]:
            continue
        if first and has_header:
            first = False
            if names is None:
                names = [name.strip() for name in record]
                if len(set(names)) != len(names) or not all(names):
                    raise DataError(
                        path, f"expected distinct, non-empty column names, got {record}", line=start
                    )
            continue
        first = False
        assert names is not None
        if len(record) != len(names):
            raise DataError(
                path,
                f"expected {len(names)} columns ({', '.join(names)}), got {len(record)}: {_short(record)}",
                line=start,
            )
        row: dict[str, Any] = dict(zip(names, record, strict=True))
        if source_field:
            row[source_field] = source
        yield start, row


def _fmt(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def load_csv(
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    header: bool | None = None,
    source_field: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield one dict per CSV record (RFC 4180 quoting; a quoted field may span lines).

    :param columns: column names, for header-less files such as MMLU's
        (``[question, A, B, C, D, answer]``); with ``header: true`` they replace the file's header.
    :param header: whether the first record is a header; default: true unless ``columns`` is given.
    :param source_field: if set, add this field holding the file's stem without a ``_test``, ``_val``,
        ``_dev`` or ``_train`` suffix (``high_school_geography_test.csv`` -> ``high_school_geography``).
    :param encoding: text encoding of the file.
    :raises DataError: a record has the wrong number of columns, or the file cannot be parsed.
    """
    return _load_delimited(
        path, delimiter=",", columns=columns, header=header, source_field=source_field, encoding=encoding
    )


def load_tsv(
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    header: bool | None = None,
    source_field: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield one dict per tab-separated record; the options are those of :func:`load_csv`."""
    return _load_delimited(
        path, delimiter="\t", columns=columns, header=header, source_field=source_field, encoding=encoding
    )


def _logiqa_options(lines: Sequence[str]) -> dict[str, str]:
    """Map four option lines to ``{"A": text, ..., "D": text}``, the letter prefixes stripped.

    The released file is not uniform: most options read ``A.text``, some ``A text`` or ``A?text``, 19
    blocks list ``C.`` before ``B.``, and three option lines have no letter at all. When the four
    written letters are A-D in some order, each text goes to its written letter; otherwise options are
    taken by position and a prefix is stripped only where it is the positional letter.
    """
    matches = [_LOGIQA_OPTION.match(line) for line in lines]
    written = [m.group(1) if m else None for m in matches]
    if sorted(w or "" for w in written) == ["A", "B", "C", "D"]:
        return {m.group(1): m.group(2).strip() for m in matches if m}
    options = {}
    for expected, line, m in zip("ABCD", lines, matches, strict=True):
        options[expected] = m.group(2).strip() if m and m.group(1) == expected else line.strip()
    return options


def load_logiqa(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield LogiQA (v1) examples: blocks of answer letter, context, question and four options.

    Each block is 8 lines: a blank line, the answer letter (``a``-``d``), the context, the question,
    and options ``A.xxx`` .. ``D.xxx``. Rows are ``{"context", "question", "A", "B", "C", "D",
    "answer", "options", "label"}`` with the ``A.`` prefixes stripped, ``answer`` in ``"A"``..``"D"``, and
    ``options`` (the four texts) and ``label`` (``"a"``..``"d"``) as the Hugging Face ``EleutherAI/logiqa`` rows
    that lm-eval's ``logiqa`` task reads. The line number of
    a row is that of its answer letter. Irregular option lines are handled as :func:`_logiqa_options` says.

    :raises DataError: a block is cut short or its answer is not a letter a-d.
    """
    lines = _lines(path, encoding)
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        start = i + 1
        letter = lines[i].strip()
        if letter.lower() not in ("a", "b", "c", "d"):
            raise DataError(
                path, f"expected an answer letter a-d opening a block, got {_short(letter)}", line=start
            )
        if i + 7 > len(lines):
            raise DataError(
                path,
                f"expected 7 lines per block (answer, context, question, 4 options), got {len(lines) - i} "
                "before the end of the file",
                line=start,
            )
        row: dict[str, Any] = {"context": lines[i + 1].strip(), "question": lines[i + 2].strip()}
        row.update(_logiqa_options(lines[i + 3 : i + 7]))
        row["answer"] = letter.upper()
        row["options"] = [row[k] for k in "ABCD"]  # EleutherAI/logiqa's fields, read by lm-eval's logiqa task
        row["label"] = letter.lower()
        yield start, row
        i += 7


def load_phrasebank(
    path: Path, *, encoding: str = "utf-8", labels: Sequence[str] = PHRASEBANK_LABELS
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield Financial PhraseBank rows ``{"sentence", "label"}`` from ``sentence@label`` lines.

    :param encoding: ``utf-8`` for ``Sentences_AllAgree.txt``, ``latin-1`` for the other files as
        released.
    :param labels: the allowed labels.
    :raises DataError: a line has no ``@label`` or its label is not one of ``labels``.
    """
    allowed = list(labels)
    for number, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("@")
        label = label.strip()
        if not sep:
            raise DataError(path, f"expected 'sentence@label', got {_short(line)}", line=number)
        if label not in allowed:
            raise DataError(path, f"expected label {' | '.join(allowed)}, got {_short(label)}", line=number)
        yield number, {"sentence": sentence.strip(), "label": label}


def load_json(
    path: Path, *, records: str | None = None, key_field: str | None = None, encoding: str = "utf-8"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield the records of one JSON document: a list of objects, or a mapping of id -> object.

    A JSON document has no row lines, so the number yielded with each row is its 1-based position in
    the records, and a malformed record is named by its index (list) or key (mapping).

    :param records: dotted key of the records inside the document (``examples`` for BBH's
        ``{"canary": ..., "examples": [...]}``); default: the document itself.
    :param key_field: for a mapping of id -> object (PubMedQA's ``{"<pmid>": {...}}``), store each id
        under this field; required for a mapping, refused for a list.
    :param encoding: text encoding of the file.
    :raises DataError: the JSON is invalid (with its line), ``records`` is missing, or a record is not an
        object.
    """
    text = _read_text(path, encoding).removeprefix("\ufeff")
    try:
        found: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            path, f"expected a JSON document, got invalid JSON ({err.msg} at column {err.colno})", line=err.lineno
        ) from None
    for part in records.split(".") if records else []:
        if not isinstance(found, dict) or part not in found:
            raise DataError(path, f"expected the records under key {records!r}, found no {part!r}")
        found = found[part]
    if isinstance(found, dict):
        if not key_field:
            raise DataError(path, "expected a list of records, got a mapping of id -> record; set option key_field")
        items: list[tuple[str, Any]] = [(str(k), v) for k, v in found.items()]
    elif isinstance(found, list):
        if key_field:
            raise DataError(path, "option key_field applies to a mapping of id -> record, got a list")
        items = [(str(i), v) for i, v in enumerate(found)]
    else:
        raise DataError(path, f"expected a list or mapping of records, got {type(found).__name__} {_short(found)}")
    for number, (key, value) in enumerate(items, start=1):
        if not isinstance(value, dict):
            raise DataError(path, f"record {key}: expected a JSON object, got {type(value).__name__} {_short(value)}")
        row = dict(value)
        if key_field:
            row[key_field] = key
        yield number, row


_BBH_OPTIONS = "\nOptions:\n"
_BBH_OPTION = re.compile(r"^\(([A-Z])\)\s?(.*)$")


def load_bbh(
    path: Path, *, source_field: str | None = None, encoding: str = "utf-8"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield BIG-Bench Hard multiple-choice examples from a ``{"canary", "examples": [...]}`` file.

    Each example's ``input`` ends with ``Options:`` and lines ``(A) text``; ``target`` is ``(X)``. Rows are
    ``{"input", "target", "question", "choices", "answer", "answer_index"}``: ``question`` is the input
    before ``Options:``, ``choices`` the option texts in order, ``answer`` the letter and ``answer_index``
    its position. Only BBH's multiple-choice tasks have this shape (date_understanding, snarks, ...).
    The number yielded with a row is its 1-based index in ``examples``.

    :param source_field: if set, add this field holding the file's stem (the BBH task name).
    :param encoding: text encoding of the file.
    :raises DataError: an example has no options block, letters that are not A, B, C... in order, or a
        target that is not one of its option letters (names the file and the example's index).
    """
    for number, row in load_json(path, records="examples", encoding=encoding):
        where = f"example {number - 1}"
        text, target = row.get("input"), row.get("target")
        if not isinstance(text, str) or not isinstance(target, str):
            raise DataError(path, f"{where}: expected string fields input and target, got {_short(row)}")
        question, sep, block = text.rpartition(_BBH_OPTIONS)
        matches = [_BBH_OPTION.match(line) for line in block.splitlines() if line.strip()]
        letters = [m.group(1) if m else None for m in matches]
        if not sep or not letters or letters != [chr(ord("A") + i) for i in range(len(letters))]:
            raise DataError(
                path, f"{where}: expected the input to end with 'Options:' and lines (A) .. in order, "
                f"got {_short(block or text)}"
            )
        answer = target.strip().removeprefix("(").removesuffix(")")
        if answer not in letters:
            raise DataError(path, f"{where}: expected target (A)..({letters[-1]}), got {_short(target)}")
        out: dict[str, Any] = {
            "input": text,
            "target": target,
            "question": question.strip(),
            "choices": [m.group(2).strip() for m in matches if m],
            "answer": answer,
            "answer_index": letters.index(answer),
        }
        if source_field:
            out[source_field] = path.stem
        yield number, out


# ----------------------------------------------------------------------------------------------
# Formats that give lm-eval's upstream rows (the Hugging Face dataset its task YAML reads)


def _letter_index(path: Path, number: int, value: Any, letters: str = "ABCD") -> int:
    if not isinstance(value, str) or value.strip().upper() not in letters:
        raise DataError(path, f"expected an answer letter {'/'.join(letters)}, got {_short(value)}", line=number)
    return letters.index(value.strip().upper())


def load_ai2_arc(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield AI2 ARC rows (the released JSONL: ``question.stem``, ``question.choices``) as the Hugging Face
    ``allenai/ai2_arc`` rows lm-eval's ``arc_easy`` / ``arc_challenge`` read: ``{"id", "question", "choices":
    {"text": [...], "label": [...]}, "answerKey"}``.

    :raises DataError: a row lacks the stem, the choices or the answer key.
    """
    for number, row in load_jsonl(path, encoding=encoding):
        q = row.get("question")
        if not isinstance(q, dict) or not isinstance(q.get("choices"), list) or "answerKey" not in row:
            raise DataError(path, f"expected an ARC row with question.stem, question.choices and answerKey, "
                            f"got {_short(row)}", line=number)
        yield number, {"id": row.get("id"), "question": q.get("stem"),
                       "choices": {"text": [c["text"] for c in q["choices"]],
                                   "label": [c["label"] for c in q["choices"]]},
                       "answerKey": row["answerKey"]}


def load_mmlu(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield MMLU rows (the released header-less CSV ``question,A,B,C,D,answer``) as the Hugging Face
    ``cais/mmlu`` rows lm-eval's ``mmlu_*`` tasks read: ``{"question", "subject", "choices": [4 texts],
    "answer": 0-3}``; ``subject`` is the file's stem without ``_test`` (``college_medicine``).

    :raises DataError: a record has the wrong number of columns or an answer that is not A-D.
    """
    columns = ["question", "A", "B", "C", "D", "answer"]
    for number, row in load_csv(path, columns=columns, header=False, source_field="subject", encoding=encoding):
        yield number, {"question": row["question"], "subject": row["subject"],
                       "choices": [row[k] for k in "ABCD"], "answer": _letter_index(path, number, row["answer"])}


def _medagents_rows(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any], list[str], int]]:
    """MedAgents-benchmark JSONL rows: ``(line, row, the four option texts A-D, gold index 0-3)``."""
    for number, row in load_jsonl(path, encoding=encoding):
        options = row.get("options")
        if not isinstance(options, dict) or any(k not in options for k in "ABCD") or "question" not in row:
            raise DataError(path, f"expected a row with question, options A-D and answer_idx, got {_short(row)}",
                            line=number)
        yield number, row, [options[k] for k in "ABCD"], _letter_index(path, number, row.get("answer_idx"))


def load_medmcqa(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield MedMCQA rows (MedAgents-benchmark JSONL: ``question``, ``options`` A-D, ``answer_idx``) as the Hugging
    Face ``openlifescienceai/medmcqa`` rows lm-eval's ``medmcqa`` reads: ``{"id", "question", "opa", "opb", "opc",
    "opd", "cop": 0-3}``.

    :raises DataError: a row lacks the question, an option or a letter answer.
    """
    for number, row, options, gold in _medagents_rows(path, encoding):
        yield number, {"id": row.get("realidx"), "question": row["question"], "opa": options[0], "opb": options[1],
                       "opc": options[2], "opd": options[3], "cop": gold}


def load_medqa(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield MedQA-USMLE rows (MedAgents-benchmark JSONL: ``question``, ``options`` A-D, ``answer_idx``) as the
    Hugging Face ``GBaker/MedQA-USMLE-4-options-hf`` rows lm-eval's ``medqa_4options`` reads: ``{"id", "sent1",
    "sent2", "ending0", .., "ending3", "label": 0-3}``.

    :raises DataError: a row lacks the question, an option or a letter answer.
    """
    for number, row, options, gold in _medagents_rows(path, encoding):
        yield number, {"id": str(row.get("realidx")), "sent1": row["question"], "sent2": "",
                       **{f"ending{i}": text for i, text in enumerate(options)}, "label": gold}


@hookimpl
def tp_register_data_formats(registry: Registry[DataFormatDef]) -> None:
    """Register the built-in data formats."""
    registry.add(
        "jsonl",
        DataFormatDef(load=load_jsonl, description="JSON Lines, one object per line", suffixes=(".jsonl",)),
    )
    registry.add(
        "csv",
        DataFormatDef(load=load_csv, description="CSV with a header or named columns", suffixes=(".csv",)),
    )
    registry.add(
        "tsv",
        DataFormatDef(
            load=load_tsv,
            description="tab-separated values with a header or named columns",
            suffixes=(".tsv",),
        ),
    )
    registry.add(
        "logiqa", DataFormatDef(load=load_logiqa, description="LogiQA v1 8-line blocks", suffixes=(".txt",))
    )
    registry.add(
        "phrasebank",
        DataFormatDef(
            load=load_phrasebank,
            description="Financial PhraseBank 'sentence@label' lines",
            suffixes=(".txt",),
        ),
    )
    registry.add(
        "json",
        DataFormatDef(
            load=load_json,
            description="one JSON document: a list of objects, or a mapping of id -> object",
            suffixes=(".json",),
        ),
    )
    for name, load, what in (
        ("ai2_arc", load_ai2_arc, "AI2 ARC JSONL as allenai/ai2_arc rows (lm-eval's arc_* read them)"),
        ("mmlu", load_mmlu, "MMLU header-less CSV as cais/mmlu rows (lm-eval's mmlu_* read them)"),
        ("medmcqa", load_medmcqa, "MedAgents MedMCQA JSONL as openlifescienceai/medmcqa rows (lm-eval's medmcqa)"),
        ("medqa", load_medqa, "MedAgents MedQA JSONL as GBaker/MedQA-USMLE-4-options-hf rows (lm-eval's medqa_4options)"),
    ):
        registry.add(name, DataFormatDef(load=load, description=what,
                                         suffixes=(".csv",) if name == "mmlu" else (".jsonl",)))
    registry.add(
        "bbh",
        DataFormatDef(
            load=load_bbh,
            description="BIG-Bench Hard multiple-choice examples, options parsed from the input",
            suffixes=(".json",),
        ),
    )
