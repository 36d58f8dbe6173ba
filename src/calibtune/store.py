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
        except OSError as exc:  # a full disk, a vanished folder: nothing half-written is left marked complete
            raise CalibtuneError(f"cannot write {stage} artifact to {self.root}: {exc.strerror or exc}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder inside the store (so its files move into an artifact without copying)."""
        try:
            (self.root / ".scratch").mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(dir=self.root / ".scratch"))
        except OSError as exc:
            raise CalibtuneError(f"cannot write to the artifact store {self.root}: {exc.strerror or exc}") from exc
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Mark the store as used by a running study (a shared lock, with this process's id beside it);
        ``exclusive`` fails while any study holds it."""
        import fcntl

        users = self.root / ".users"
        try:
            users.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".in-use.lock", "a+")
        except OSError as exc:
            raise CalibtuneError(f"cannot write to the artifact store {self.root}: {exc.strerror or exc}") from exc
        mark = users / str(os.getpid())
        try:
            fcntl.flock(handle, fcntl.LOCK_SH)
            mark.touch()
            yield
        finally:
            mark.unlink(missing_ok=True)
            handle.close()

    @contextmanager
    def exclusive(self, action: str) -> Iterator[None]:
        """Hold the store alone (for removing artifacts); refused while a study is running on it."""
        import fcntl

        if not self.root.is_dir():
            yield
            return
        handle = open(self.root / ".in-use.lock", "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pids = sorted(p.name for p in (self.root / ".users").glob("*"))
                who = f"calibtune pid {', '.join(pids)}" if pids else "a running study"
                raise CalibtuneError(f"cannot {action}: the store {self.root} is in use by {who}; wait for it "
                                     "to finish") from None
            yield
        finally:
            handle.close()

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


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored artifact, for ``calibtune cache``."""

    stage: str
    key: str
    path: Path
    size: int
    modified: float
    complete: bool

    @property
    def summary(self) -> str:
        """The model(s) and method the artifact belongs to, from its meta.json."""
        if self.stage == "checkpoints":
            return "(training checkpoint of an unfinished cell)"
        if not self.complete:
            return "(incomplete: left by an interrupted write)"
        settings = json.loads((self.path / "meta.json").read_text()).get("settings", {})
        parts = [str(settings[k]) for k in ("method", "estimator_model", "model") if k in settings]
        return " ".join(parts)


def folder_size(path: Path) -> int:
    """Total bytes of the files under a folder (FileNotFoundError if the folder goes while it is read)."""
    total = 0
    for f in path.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:  # a file renamed or removed by a writer meanwhile
            continue
    return total


def list_artifacts(store: ArtifactStore) -> list[ArtifactInfo]:
    """Every artifact in the store, complete ones and leftovers of interrupted writes."""
    out = []
    if not store.root.is_dir():
        return out
    for stage_dir in sorted(p for p in store.root.iterdir() if p.is_dir() and p.name != ".users"):
        stage = stage_dir.name.lstrip(".")  # .scratch: what interrupted cells were computing
        for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            complete = stage != "scratch" and not folder.name.startswith(".") and (folder / "meta.json").is_file()
            key = folder.name.lstrip(".").split("-")[0] if not complete else folder.name
            try:
                out.append(ArtifactInfo(stage, key, folder, folder_size(folder), folder.stat().st_mtime, complete))
            except FileNotFoundError:  # a write in progress elsewhere renamed its staging folder into place
                continue
    return out


def remove_artifact(info: ArtifactInfo) -> None:
    """Delete one artifact folder."""
    shutil.rmtree(info.path, ignore_errors=True)


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder; a second process gets a clear error, not a corrupted folder."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".calibtune.lock"
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CalibtuneError(f"run folder {folder} is in use by {holder}: wait for it to finish or choose "
                                 "another --output-path") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"calibtune pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
