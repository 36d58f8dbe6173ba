"""The registry of bundled question sets, by name."""

from __future__ import annotations

from calibtune.data.builtin import BUILTIN
from calibtune.data.errors import UnknownDatasetError, show, suggestion
from calibtune.data.mmlu import MMLU
from calibtune.data.spec import DatasetInfo, DatasetSpec

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (MMLU, *BUILTIN)}


def dataset_names() -> list[str]:
    """Names of the registered question sets, in registry order (mmlu first)."""
    return list(REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """The registered set called ``name``; raise ``UnknownDatasetError`` naming the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {show(name)}{suggestion(name, REGISTRY)}; valid names: "
            f"{', '.join(REGISTRY)} (or the path of a .jsonl or .csv file)"
        ) from None


def list_datasets() -> list[DatasetInfo]:
    """A summary of every registered set with its splits' sizes (from row counts)."""
    return [spec.info() for spec in REGISTRY.values()]
