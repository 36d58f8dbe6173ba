"""Question sets: the bundled ones (by registry name) and user JSONL / CSV files.

``load_questions(name, split, subjects)`` returns ``calibtune.records.Question`` objects;
``list_datasets()`` and ``dataset_names()`` describe the registry. See
``calibtune.data.userfile`` for the user file schema.
"""

from calibtune.data.errors import (
    BundleFormatError,
    BundleMissingError,
    DataError,
    DatasetPathError,
    UnknownDatasetError,
    UnknownSplitError,
    UnknownSubjectError,
    UserFileError,
)
from calibtune.data.loader import load_questions
from calibtune.data.mmlu import mmlu_subjects
from calibtune.data.registry import REGISTRY, dataset_names, list_datasets
from calibtune.data.spec import DatasetInfo

__all__ = [
    "REGISTRY",
    "BundleFormatError",
    "BundleMissingError",
    "DataError",
    "DatasetInfo",
    "DatasetPathError",
    "UnknownDatasetError",
    "UnknownSplitError",
    "UnknownSubjectError",
    "UserFileError",
    "dataset_names",
    "list_datasets",
    "load_questions",
    "mmlu_subjects",
]
