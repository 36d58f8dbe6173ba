"""What a stage is, and the one way its cache key is made.

A stage is a step from records to records whose output the artifact store keeps. A
stage object's fields are its settings (every knob its output depends on); what it
reads (question content, another stage's output) is passed as ``inputs``, each a
content digest. ``Stage.key`` turns both into the artifact key; no stage builds a key
any other way, so a changed setting or a changed question can never be served from a
stale artifact.

Sharded stages (answers, features) split their items into shards of ``SHARD_SIZE``:
a shard is the unit of caching and of crash loss, and its key adds the digest of the
shard's own items, so editing one item recomputes only the shard that holds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from calibtune.distributed import Ranks
from calibtune.store import ArtifactStore, artifact_key

SHARD_SIZE = 256  # questions or texts per stored shard of a model pass


def digest(value: Any) -> str:
    """sha256 of a value's canonical JSON: the one way content becomes part of a key."""
    payload = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Stage:
    """A cached step; subclasses are frozen dataclasses whose fields are the stage's settings."""

    name: ClassVar[str]
    version: ClassVar[int]

    def settings(self) -> dict[str, Any]:
        """Every setting the stage's output depends on (its fields)."""
        return dataclasses.asdict(self)

    def key(self, inputs: Mapping[str, str]) -> str:
        """The artifact key of this stage's output for these inputs (content digests)."""
        return artifact_key(self.name, self.version, self.settings(), inputs)

    def shards(self, contents: Sequence[Any], inputs: Mapping[str, str] = {},
               size: int | None = None) -> list[tuple[str, slice]]:
        """Keys and index ranges of the shards of ``contents`` (the items as they affect the output)."""
        size = size or SHARD_SIZE
        plan = []
        for start in range(0, len(contents), size):
            part = slice(start, start + size)
            plan.append((self.key({**inputs, "shard": digest(list(contents[part]))}), part))
        return plan


@dataclass(frozen=True)
class ModelStage(Stage):
    """A stage that runs a model: the model's name, fingerprint (its weights) and the dtype it runs in."""

    model: str
    fingerprint: str
    dtype: str

    @classmethod
    def of(cls, model: str, dtype: str, device: str, **settings: Any):
        """The stage for ``model`` as a study with these dtype and device settings runs it."""
        from calibtune.models import choose_device, choose_dtype, model_fingerprint

        return cls(model=model, fingerprint=model_fingerprint(model),
                   dtype=str(choose_dtype(dtype, choose_device(device))), **settings)


@dataclass
class Runtime:
    """What every stage of a study shares: the store, the log, the clock, the model pool and the processes."""

    store: ArtifactStore
    log: Callable[[str], None]
    models: Any  # calibtune.study.ModelPool
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    ranks: Ranks = dataclasses.field(default_factory=Ranks)

    def my_missing(self, stage: str, plan: Sequence[tuple[str, slice]]) -> tuple[list, list]:
        """The shards of ``plan`` not in the store, and those of them this process computes (by their position
        in the plan, so that every process deals them out the same way)."""
        missing = [(k, part) for k, part in plan if not self.store.has(stage, k)]
        absent = {k for k, _ in missing}
        return missing, [(k, part) for i, (k, part) in enumerate(plan) if k in absent and self.ranks.owns(i)]

    @contextmanager
    def timed(self, label: str) -> Iterator[None]:
        """Add the time the body takes to ``timings[label]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - start

    def report_shards(self, what: str, plan: Sequence[tuple[str, slice]], missing: Sequence) -> None:
        """Say how much of a sharded stage comes from the cache."""
        if not missing:
            self.log(f"{what}: from the cache ({len(plan)} shards)")
        elif len(missing) < len(plan):
            self.log(f"{what}: resuming, {len(plan) - len(missing)} of {len(plan)} shards from the cache")
