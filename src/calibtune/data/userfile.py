"""User question files: multiple choice or open-ended questions in JSONL or CSV.

Pass the file's path wherever a dataset name is accepted. The file must be UTF-8
(a byte-order mark is allowed); its questions keep the file's order.

JSONL (``.jsonl``): one JSON object per line; blank lines are skipped.

- ``question`` (string, required): the question as a reader sees it, context included,
  without a "Question:" prefix.
- ``choices`` (list of strings, required): the options' texts, at least 2, none empty.
- ``answer`` (required): the right option, as a 0-based index (``2``), an upper-case
  letter (``"C"``), or the exact text of one of the options (``"Paris"``). A string of
  digits (``"2"``) is read as an index too. An answer that reads two ways naming
  different options (texts ``"1"``, ``"2"``, ... and answer ``"2"``) is refused.
- ``id`` (string or integer, optional): unique within the file; defaults to the line
  number.
- ``subject`` (string, optional): lets ``subjects=[...]`` select questions.

Other fields are ignored. Example::

    {"id": "q1", "question": "Capital of France?", "choices": ["Lyon", "Paris"], "answer": "B"}

An open-ended question has no ``choices``; its reference answers are ``answers`` (a list
of strings: the answer and its aliases) or ``answer`` (one string)::

    {"id": "q2", "question": "Capital of France?", "answers": ["Paris", "Paris, France"]}

CSV (``.csv``), with a header row (column names are case-insensitive):

- ``question`` (required).
- ``choice1``, ``choice2``, ... (at least two columns): the options in column-number
  order. A row may leave trailing choice cells empty (fewer options), but needs at
  least two and may not leave a gap before a filled one.
- ``answer`` (required): the same forms as in JSONL. The index is 0-based even though
  the columns are numbered from 1: ``0`` or ``A`` means ``choice1``.
- ``id`` and ``subject`` (optional); an empty ``id`` defaults to the row's line number.

A CSV file with no choice columns holds open-ended questions: ``answer`` is the
reference, and an optional ``aliases`` column adds more, separated by ``|``.

Rows whose cells are all empty are skipped. Quote cells that contain commas or line
breaks, as any spreadsheet's CSV export does. Example::

    id,question,choice1,choice2,choice3,answer,subject
    q1,What is the capital of France?,Lyon,Paris,Nice,B,geography

Each question's ``dataset`` is the file name without its extension (its stem), its
``split`` is ``"file"`` and its ``id`` is ``"<stem>/<id>"``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from calibtune.data.answer_key import AnswerError, letter, resolve_answer
from calibtune.data.errors import UnknownSplitError, UserFileError, show
from calibtune.data.spec import MIN_CHOICES, check_subjects, normalise_subjects
from calibtune.records import Question

FILE_SPLIT = "file"
SUFFIXES = (".jsonl", ".csv")
Record = dict[str, object]
_CHOICE_COLUMN = re.compile(r"choice(\d+)")


def read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (BOM dropped); raise naming the first bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserFileError(
            path, None, f"cannot read the file ({exc.strerror})"
        ) from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserFileError(
            path,
            line,
            f"not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
        ) from None


def jsonl_records(path: Path, text: str) -> Iterator[tuple[int, Record]]:
    """``(line number, object)`` for each non-blank line of a JSONL file."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserFileError(
                path, number, f"malformed JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            raise UserFileError(
                path,
                number,
                f"expected a JSON object {{...}}, got {type(value).__name__}",
            )
        yield number, value


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, cells)`` for each non-empty row of a CSV text."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    end = 0
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UserFileError(
                path, start, f"malformed CSV ({exc}); check the quotes in this row"
            ) from None
        end = reader.line_num
        if any(cell.strip() for cell in row):
            yield start, row


def _csv_header(
    path: Path, line: int, header: list[str]
) -> tuple[dict[str, int], list[int]]:
    """Column positions by lower-cased name, and the choice columns' positions in order."""
    names = [name.strip().lower() for name in header]
    columns: dict[str, int] = {}
    for position, name in enumerate(names):
        if name and name in columns:
            raise UserFileError(path, line, f"the header names column {name!r} twice")
        columns[name] = position
    missing = [name for name in ("question", "answer") if name not in columns]
    if missing:
        raise UserFileError(
            path,
            line,
            f"the header lacks column(s) {', '.join(missing)} (found: {', '.join(names)})",
        )
    numbered = sorted(
        (int(m.group(1)), position)
        for position, name in enumerate(names)
        if (m := _CHOICE_COLUMN.fullmatch(name))
    )
    if 0 < len(numbered) < MIN_CHOICES:
        raise UserFileError(
            path,
            line,
            "the header needs at least two choice columns: choice1, choice2, ...",
        )
    return columns, [position for _, position in numbered]


def csv_records(path: Path, text: str) -> Iterator[tuple[int, Record]]:
    """``(line number, record)`` for each data row of a CSV file with a header.

    Empty cells count as absent; choices come as a list (possibly short).
    """
    rows = _csv_rows(path, text)
    first = next(rows, None)
    if first is None:
        return
    header_line, header = first
    columns, choice_positions = _csv_header(path, header_line, header)
    for line, row in rows:
        extra = [cell for cell in row[len(header) :] if cell.strip()]
        if extra:
            raise UserFileError(
                path,
                line,
                f"{len(row)} cells but the header has {len(header)} "
                "(quote cells that contain commas)",
            )
        cells = [cell.strip() for cell in row] + [""] * (len(header) - len(row))
        record: Record = {
            name: cells[position]
            for name, position in columns.items()
            if name in ("question", "answer", "id", "subject") and cells[position]
        }
        if not choice_positions:
            aliases = cells[columns["aliases"]].split("|") if "aliases" in columns else []
            record["answers"] = [record.get("answer", ""), *aliases]
            record.pop("answer", None)
            yield line, record
            continue
        choices = [cells[position] for position in choice_positions]
        while choices and not choices[-1]:
            choices.pop()
        if "" in choices:
            gap = choices.index("")
            raise UserFileError(
                path,
                line,
                f"{header[choice_positions[gap]].strip()} is empty but a later "
                "choice is not; fill the choices from the first column on",
            )
        record["choices"] = choices
        yield line, record


def _text_field(path: Path, line: int, record: Record, name: str) -> str:
    """The required, non-empty string field ``name``."""
    value = record.get(name)
    if value is None:
        raise UserFileError(path, line, f"missing {name!r}")
    if not isinstance(value, str):
        raise UserFileError(path, line, f"{name!r} must be a string, got {show(value)}")
    if not value.strip():
        raise UserFileError(path, line, f"{name!r} is empty")
    return value.strip()


def _choices(path: Path, line: int, record: Record) -> tuple[str, ...]:
    """The options: a list of at least two non-empty strings."""
    value = record.get("choices")
    if value is None:
        raise UserFileError(
            path, line, "missing 'choices' (a list of at least 2 option texts)"
        )
    if not isinstance(value, list):
        raise UserFileError(
            path, line, f"'choices' must be a list of strings, got {show(value)}"
        )
    for index, choice in enumerate(value):
        if not isinstance(choice, str):
            raise UserFileError(
                path,
                line,
                f"option {letter(index)} must be a string, got {show(choice)}",
            )
        if not choice.strip():
            raise UserFileError(path, line, f"option {letter(index)} is empty")
    if len(value) < MIN_CHOICES:
        raise UserFileError(
            path, line, f"needs at least {MIN_CHOICES} choices, got {len(value)}"
        )
    return tuple(choice.strip() for choice in value)


def _local_id(path: Path, line: int, record: Record) -> str:
    """The question's id within the file: ``id`` as a string, or the line number."""
    value = record.get("id")
    if value is None:
        return str(line)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserFileError(
            path, line, f"'id' must be a string or an integer, got {show(value)}"
        )
    text = str(value).strip()
    if not text:
        raise UserFileError(path, line, "'id' is empty")
    return text


def _subject(path: Path, line: int, record: Record) -> str:
    """The optional subject, "" when absent."""
    value = record.get("subject")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserFileError(
            path, line, f"'subject' must be a string, got {show(value)}"
        )
    return value.strip()


def _references(path: Path, line: int, record: Record) -> tuple[str, ...]:
    """An open-ended question's reference answers, from ``answers`` (a list) or ``answer`` (a string)."""
    value = record.get("answers", record.get("answer"))
    if value is None:
        raise UserFileError(path, line, "missing 'answers' (the reference answers of an open-ended question)")
    values = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise UserFileError(path, line, f"'answers' must be a list of strings, got {show(value)}")
    refs = tuple(dict.fromkeys(str(v).strip() for v in values if str(v).strip()))
    if not refs:
        raise UserFileError(path, line, "the reference answer is empty")
    return refs


def to_question(path: Path, line: int, record: Record) -> Question:
    """Check one record and turn it into a ``Question`` of the file's set."""
    text = _text_field(path, line, record, "question")
    if "choices" not in record:
        return Question(id=f"{path.stem}/{_local_id(path, line, record)}", dataset=path.stem, split=FILE_SPLIT,
                        text=text, subject=_subject(path, line, record), references=_references(path, line, record))
    choices = _choices(path, line, record)
    if record.get("answer") is None:
        raise UserFileError(path, line, "missing 'answer'")
    try:
        gold = resolve_answer(record["answer"], choices)
    except AnswerError as exc:
        raise UserFileError(path, line, str(exc)) from None
    return Question(
        id=f"{path.stem}/{_local_id(path, line, record)}",
        dataset=path.stem,
        split=FILE_SPLIT,
        text=text,
        choices=choices,
        gold=gold,
        subject=_subject(path, line, record),
    )


def read_user_file(path: Path) -> list[Question]:
    """Every question of a ``.jsonl`` or ``.csv`` file, in file order, checked."""
    text = read_text(path)
    if path.suffix.lower() == ".csv":
        records = csv_records(path, text)
    else:
        records = jsonl_records(path, text)
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for line, record in records:
        question = to_question(path, line, record)
        if question.id in first_line:
            local = question.id[len(path.stem) + 1 :]
            raise UserFileError(
                path,
                line,
                f"duplicate id {show(local)} (first used on line {first_line[question.id]})",
            )
        first_line[question.id] = line
        if questions and question.is_multiple_choice != questions[0].is_multiple_choice:
            kinds = {True: "multiple choice (it has 'choices')", False: "open-ended (no 'choices')"}
            raise UserFileError(path, line, f"the question is {kinds[question.is_multiple_choice]} but the "
                                f"first question is {kinds[questions[0].is_multiple_choice]}; a file holds one kind")
        questions.append(question)
    if not questions:
        raise UserFileError(path, None, "no questions in the file (it is empty)")
    return questions


def load_user_file(
    path: Path, split: str | None = None, subjects: Sequence[str] | None = None
) -> list[Question]:
    """The questions of a user file; ``split`` must be None or "file"; ``subjects`` filters."""
    if split not in (None, FILE_SPLIT):
        raise UnknownSplitError(
            f"{path} is a user file with the single split {FILE_SPLIT!r}, not {show(split)}"
        )
    questions = read_user_file(path)
    wanted = normalise_subjects(subjects)
    if wanted is None:
        return questions
    present = list(dict.fromkeys(q.subject for q in questions if q.subject))
    check_subjects(path.name, wanted, present)
    keep = set(wanted)
    return [q for q in questions if q.subject in keep]
