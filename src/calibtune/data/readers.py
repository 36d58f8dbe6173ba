"""Split readers for the two bundled file kinds: Arrow tables and oe-eval request files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibtune.data.bundle import (
    arrow_files,
    count_arrow_rows,
    read_arrow_rows,
    read_request_docs,
    requests_file,
)
from calibtune.data.spec import Item

Convert = Callable[[dict[str, Any], int], Item]
"""Turns one row (or doc) and its position in the split into an ``Item``."""


@dataclass(frozen=True)
class ArrowSplit:
    """A split stored as ``hf_datasets/<relpath>/data-*.arrow``."""

    relpath: str
    convert: Convert

    def count(self, root: Path) -> int:
        """Number of rows, from the Arrow batch headers."""
        return count_arrow_rows(arrow_files(root, self.relpath))

    def items(self, root: Path, subjects: Sequence[str] | None = None) -> list[Item]:
        """Every row converted, in file order (``subjects`` is ignored: no subjects here)."""
        rows = read_arrow_rows(arrow_files(root, self.relpath))
        return [self.convert(row, index) for index, row in enumerate(rows)]


@dataclass(frozen=True)
class RequestsSplit:
    """A split stored as ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``."""

    task: str
    variant: str
    convert: Convert

    def count(self, root: Path) -> int:
        """Number of distinct documents (decompresses and parses the file: about 0.1 s)."""
        return len(read_request_docs(requests_file(root, self.task, self.variant)))

    def items(self, root: Path, subjects: Sequence[str] | None = None) -> list[Item]:
        """Every distinct document converted, in first-seen order."""
        docs = read_request_docs(requests_file(root, self.task, self.variant))
        return [self.convert(doc, index) for index, doc in enumerate(docs)]
