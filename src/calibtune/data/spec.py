"""What a registered question set is: its splits, how to count and read them, its summary."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from calibtune.data.bundle import bundle_root
from calibtune.data.errors import (
    BundleFormatError,
    UnknownSplitError,
    UnknownSubjectError,
    show,
    suggestion,
)
from calibtune.records import Question

MULTIPLE_CHOICE = "multiple_choice"
OPEN_ENDED = "open_ended"
MIN_CHOICES = 2


@dataclass(frozen=True)
class DatasetInfo:
    """A summary of one registered question set, as ``list_datasets`` reports it."""

    name: str
    kind: str
    splits: dict[str, int]
    default_split: str
    description: str


class Item(NamedTuple):
    """One question as a reader produces it, before it gets its full id.

    Multiple choice items carry ``choices`` and ``gold``; open-ended ones carry
    ``references`` (the answer and its aliases), no choices and gold -1.
    """

    key: str
    text: str
    choices: tuple[str, ...]
    gold: int
    subject: str = ""
    references: tuple[str, ...] = ()


class SplitReader(Protocol):
    """Counts and reads the questions of one split of a bundled set."""

    def count(self, root: Path) -> int:
        """Number of questions in the split (cheap: no question is converted)."""
        ...

    def items(self, root: Path, subjects: Sequence[str] | None) -> list[Item]:
        """The split's questions in file order (only ``subjects`` where the set has any)."""
        ...


def normalise_subjects(subjects: Sequence[str] | None) -> list[str] | None:
    """``subjects`` as a duplicate-free list; None (or empty) means "no filter"."""
    if subjects is None:
        return None
    if isinstance(subjects, str):
        subjects = [subjects]
    unique = list(dict.fromkeys(s.strip() for s in subjects))
    return unique or None


def check_subjects(dataset: str, wanted: list[str], known: Sequence[str]) -> None:
    """Raise ``UnknownSubjectError`` for the first of ``wanted`` not in ``known``."""
    for subject in wanted:
        if subject not in known:
            hint = suggestion(subject, known)
            listing = ", ".join(known) if known else "(none)"
            raise UnknownSubjectError(
                f"unknown {dataset} subject {show(subject)}{hint}; valid subjects: {listing}"
            )


@dataclass(frozen=True)
class DatasetSpec:
    """A registered question set: its splits and how to read them.

    ``subjects_of`` lists the set's subjects (given the bundle root) for sets that
    have them; for the others a subject filter is an error.
    """

    name: str
    description: str
    default_split: str
    splits: Mapping[str, SplitReader]
    subjects_of: Callable[[Path], list[str]] | None = None
    kind: str = MULTIPLE_CHOICE

    def resolve_split(self, split: str | None) -> str:
        """``split``, or the default split when None; raise if the set lacks it."""
        if split is None:
            return self.default_split
        if split not in self.splits:
            raise UnknownSplitError(
                f"dataset {self.name!r} has no split {show(split)}"
                f"{suggestion(split, self.splits)}; valid splits: {', '.join(self.splits)}"
            )
        return split

    def load(self, split: str | None, subjects: Sequence[str] | None) -> list[Question]:
        """The questions of ``split`` (default split when None), filtered to ``subjects``."""
        split = self.resolve_split(split)
        wanted = normalise_subjects(subjects)
        root = bundle_root()
        if wanted is not None:
            if self.subjects_of is None:
                raise UnknownSubjectError(
                    f"dataset {self.name!r} has no subjects; only a set with subjects "
                    "(mmlu, or a user file with a subject field) can be filtered by subject"
                )
            check_subjects(self.name, wanted, self.subjects_of(root))
        return [
            self._question(split, item)
            for item in self.splits[split].items(root, wanted)
        ]

    def _question(self, split: str, item: Item) -> Question:
        """Turn a reader's ``item`` into a ``Question``, checking it is well formed."""
        qid = f"{self.name}/{split}/{item.key}"
        if self.kind == OPEN_ENDED:
            if not any(r.strip() for r in item.references):
                raise BundleFormatError(f"bundled question {qid} has no reference answer")
            return Question(id=qid, dataset=self.name, split=split, text=item.text, subject=item.subject,
                            references=tuple(r.strip() for r in item.references if r.strip()))
        if len(item.choices) < MIN_CHOICES or not 0 <= item.gold < len(item.choices):
            raise BundleFormatError(
                f"bundled question {qid} has gold {item.gold} for {len(item.choices)} options"
            )
        return Question(
            id=qid,
            dataset=self.name,
            split=split,
            text=item.text,
            choices=item.choices,
            gold=item.gold,
            subject=item.subject,
        )

    def info(self) -> DatasetInfo:
        """Summary with the number of questions in each split (reads only row counts)."""
        root = bundle_root()
        counts = {split: reader.count(root) for split, reader in self.splits.items()}
        return DatasetInfo(
            name=self.name,
            kind=self.kind,
            splits=counts,
            default_split=self.default_split,
            description=self.description,
        )
