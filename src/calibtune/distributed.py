"""Several processes on one study: which shards and cells this process computes, and when to wait.

Under ``accelerate launch`` or ``torchrun`` (``calibtune run --num-processes N`` starts
torchrun on one machine) every process runs the same study. A stage's missing shards,
and the study's cells, are dealt out by their position in the stage's plan: process
``r`` of ``N`` computes those at positions ``r``, ``r + N``, ... (its *global* index, so
processes on several machines never collide). Each artifact has one writer, is written
atomically, and is read by everyone after a barrier; the main process alone writes the
run folder. A crash loses at most the shards and cells in flight: a rerun, with any
number of processes, takes the rest from the store and gives the same scores.

Processes, their indices and the barrier come from accelerate (torch.distributed
underneath: gloo on the CPU, NCCL between GPUs); nothing here is home-made.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by a distributed launcher (several processes may run)."""
    return "WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Ranks:
    """This process's place among the study's processes: one process unless launched as several."""

    index: int = 0
    count: int = 1
    local_count: int = 1
    _state: object = None

    @classmethod
    def current(cls) -> Ranks:
        """The processes of this run, as the launcher set them up (a single process when not launched)."""
        if not launched():
            return cls()
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        if not torch.cuda.is_available():  # processes on one machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        return cls(state.process_index, state.num_processes, local, state)

    @property
    def main(self) -> bool:
        """The process that writes the run folder."""
        return self.index == 0

    def mine(self, items: Sequence[T]) -> list[T]:
        """The items this process computes: those at positions ``index``, ``index + count``, ..."""
        return [item for position, item in enumerate(items) if position % self.count == self.index]

    def owns(self, position: int) -> bool:
        """Whether the item at ``position`` of a plan is this process's."""
        return position % self.count == self.index

    def wait(self) -> None:
        """Wait until every process gets here (a no-op for one process)."""
        if self.count > 1:
            self._state.wait_for_everyone()

    def tag(self) -> str:
        """``rank r/N: `` in logs of a run with several processes."""
        return f"rank {self.index}/{self.count}: " if self.count > 1 else ""


def relaunch(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``calibtune`` with the same arguments in ``num_processes`` processes on this machine (torchrun)."""
    import subprocess

    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
            "-m", "calibtune", *argv]
    return subprocess.run(args).returncode
