"""``load_questions``: one entry point for registered sets and user files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from calibtune.data.errors import DatasetPathError, show
from calibtune.data.registry import REGISTRY, get_dataset
from calibtune.data.userfile import SUFFIXES, load_user_file
from calibtune.records import Question


def looks_like_path(name: str) -> bool:
    """True when ``name`` has a folder part, a leading ``~`` or a question-file suffix."""
    return (
        "/" in name
        or "\\" in name
        or name.startswith("~")
        or Path(name).suffix.lower() in (*SUFFIXES, ".json")
    )


def _user_file(name: str) -> Path | None:
    """The user file ``name`` points to, None when nothing is there; raise if unusable."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DatasetPathError(
                f"{name}: unsupported file type {path.suffix or '(no extension)'!r}; "
                "question files must be .jsonl or .csv"
            )
        return path
    if path.exists():
        raise DatasetPathError(
            f"{name} is not a file; give a .jsonl or .csv question file"
        )
    return None


def load_questions(
    name: str | os.PathLike[str],
    split: str | None = None,
    subjects: Sequence[str] | None = None,
) -> list[Question]:
    """The questions of a registered set or of a user ``.jsonl`` / ``.csv`` file, in file order.

    ``name`` is a registry name (see ``dataset_names()``) or a file path; a registry
    name wins over a file of the same name in the working folder. ``split=None`` means
    the set's default split ("file" for user files). ``subjects`` keeps only questions
    of those subjects (MMLU subjects, or the ``subject`` field of a user file); None
    or an empty list keeps all. Raises a ``CalibtuneError`` subclass with a one-line
    message for an unknown name, split or subject and for any problem in a user file.
    """
    text = os.fspath(name)
    if text not in REGISTRY:
        path = _user_file(text)
        if path is not None:
            return load_user_file(path, split, subjects)
        if looks_like_path(text):
            raise DatasetPathError(
                f"{show(text)} is neither an existing file nor a dataset name; "
                f"valid names: {', '.join(REGISTRY)}"
            )
    return get_dataset(text).load(split, subjects)
