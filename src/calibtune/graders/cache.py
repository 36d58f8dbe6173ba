"""The judgement cache: an append-only JSONL file, so a judged run that stops halfway resumes without asking again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from calibtune.errors import CalibtuneError
from calibtune.graders.types import Grade, GradeItem


class JudgementCache:
    """Judgements on disk: an append-only JSONL file, one line per judgement, flushed and fsynced at once.

    Lines that do not parse (the fragment a crash left mid-write) are ignored on
    reading, and a fragment at the end is closed off with a newline before the next
    append. Unparseable replies are cached too (``correct`` null), so they are not
    asked again. Use ``JudgementCache.default()`` for ``<cache_dir>/judgements.jsonl``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._grades: dict[str, Grade] | None = None
        self.ignored_lines = 0

    def __repr__(self) -> str:
        return f"JudgementCache({str(self.path)!r})"

    @classmethod
    def default(cls) -> JudgementCache:
        """The cache at ``<calibtune cache dir>/judgements.jsonl``."""
        from calibtune.bundled import cache_dir

        return cls(cache_dir() / "judgements.jsonl")

    def _load(self) -> dict[str, Grade]:
        """Read the file once; later lookups use memory."""
        if self._grades is None:
            self._grades = {}
            if self.path.is_file():
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    self._read_line(line)
        return self._grades

    def _read_line(self, line: str) -> None:
        """Keep one record, or count the line as ignored."""
        if not line.strip():
            return
        try:
            row = json.loads(line)
            grade = Grade(correct=row["correct"], grader=str(row["grader"]), raw=str(row["raw"]))
            key = str(row["key"])
        except (ValueError, KeyError, TypeError):
            self.ignored_lines += 1
            return
        if grade.correct is not None and not isinstance(grade.correct, bool):
            self.ignored_lines += 1
            return
        assert self._grades is not None
        self._grades[key] = grade

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: str) -> bool:
        return key in self._load()

    def get(self, key: str) -> Grade | None:
        """The cached judgement for a key, if any."""
        return self._load().get(key)

    def put(self, key: str, grade: Grade, item: GradeItem | None = None,
            identity: dict[str, Any] | None = None) -> None:
        """Append one judgement (with the item and judge identity, for reading later) and fsync it."""
        grades = self._load()
        row: dict[str, Any] = {"key": key, "correct": grade.correct, "grader": grade.grader, "raw": grade.raw}
        if identity is not None:
            row["judge"] = identity
        if item is not None:
            row.update(question=item.question, references=list(item.references), answer=item.answer)
        line = json.dumps(row, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as handle:
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise CalibtuneError(f"cannot write the judgement cache {self.path}: {exc.strerror or exc}") from exc
        grades[key] = grade
