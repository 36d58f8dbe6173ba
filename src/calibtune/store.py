"""The artifact store: stage outputs kept under keys derived from their inputs and settings.

An artifact is a folder ``<root>/<stage>/<key>/`` holding data files and ``meta.json``.
It is written in a temporary folder and renamed into place, so an artifact that exists
is complete; a crash leaves at most a hidden temporary folder behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from calibtune.errors import CalibtuneError


def artifact_key(stage: str, version: int, settings: Mapping[str, Any], inputs: Mapping[str, str] = {}) -> str:
    """A stable key for a stage's output: a hash of the stage, its version, settings and input keys."""
    payload = json.dumps({"stage": stage, "version": version, "settings": settings, "inputs": dict(inputs)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ArtifactStore:
    """Stage outputs on disk, one folder per (stage, key)."""

    root: Path

    def path(self, stage: str, key: str) -> Path:
        """The folder of one artifact."""
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        """True when the artifact was written completely."""
        return (self.path(stage, key) / "meta.json").is_file()

    @contextmanager
    def writing(self, stage: str, key: str, meta: Mapping[str, Any]) -> Iterator[Path]:
        """Yield a temporary folder to fill; on success it becomes the artifact, atomically."""
        final = self.path(stage, key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        except OSError as exc:
            raise CalibtuneError(f"cannot write to the artifact store {self.root}: {exc.strerror or exc}") from exc
        try:
            yield tmp
            (tmp / "meta.json").write_text(json.dumps({"stage": stage, "key": key, **meta}, indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        """The artifact's ``meta.json``."""
        return json.loads((self.path(stage, key) / "meta.json").read_text())

    def put_table(self, stage: str, key: str, table: pd.DataFrame, meta: Mapping[str, Any] = {}) -> None:
        """Store a table as ``table.parquet``."""
        with self.writing(stage, key, meta) as folder:
            table.to_parquet(folder / "table.parquet", index=False)

    def get_table(self, stage: str, key: str) -> pd.DataFrame:
        """Read a stored table."""
        return pd.read_parquet(self.path(stage, key) / "table.parquet")

    def put_arrays(self, stage: str, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] = {}) -> None:
        """Store named arrays as ``arrays.safetensors``."""
        with self.writing(stage, key, meta) as folder:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "arrays.safetensors"))

    def get_arrays(self, stage: str, key: str) -> dict[str, np.ndarray]:
        """Read stored arrays."""
        return load_file(str(self.path(stage, key) / "arrays.safetensors"))
