"""Helpers shared by the tests and their torchrun workers: a separable toy question set, and a crash injected
after a training checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


def separable_toy(n: int = 64) -> tuple[list[str], list[str], np.ndarray]:
    """Prompts, proposed answers and labels of a separable toy set: the answer word decides the label."""
    prompts = [f"Question: What is the capital of France number {i}?\nAnswer:" for i in range(n)]
    labels = np.array([i % 2 for i in range(n)])
    answers = [" Paris" if y else " the lazy dog" for y in labels]
    return prompts, answers, labels


@contextlib.contextmanager
def crash_after_checkpoints(count: int) -> Iterator[None]:
    """Within the block, training dies (``KeyboardInterrupt``) right after writing its ``count``-th checkpoint."""
    from calibtune.estimators import adapters

    original, saves = adapters.save_checkpoint, []

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        saves.append(1)
        if len(saves) == count:
            raise KeyboardInterrupt

    adapters.save_checkpoint = save_then_crash
    try:
        yield
    finally:
        adapters.save_checkpoint = original
