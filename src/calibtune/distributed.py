"""Several processes on one study: which shards and cells this process computes, and when to wait.

Under ``accelerate launch`` or ``torchrun`` (``calibtune run --num-processes N`` starts
torchrun on one machine) every process runs the same study. A stage's missing shards,
and the study's cells, are dealt out by their position in the stage's plan: process
``r`` of ``N`` computes those at positions ``r``, ``r + N``, ... (its *global* index, so
processes on several machines never collide). Each artifact has one writer, is written
atomically, and is read by everyone after a barrier; the main process alone writes the
run folder. A crash loses at most the shards and cells in flight: a rerun, with any
number of processes, takes the rest from the store and gives the same scores.

A cell that trains adapters can also run across a *group* of processes, data-parallel
(``DataParallel``): every member holds the same adapters, takes its share of each batch,
and the gradients are summed over the group before each step (an all-reduce, as
DistributedDataParallel does), so every member takes the same step the single process
would. When a study has fewer training cells still to compute than processes, the
processes form groups (``cell_processes``); otherwise every process trains its own cells.

Processes, their indices, the barrier and the collectives come from accelerate and
torch.distributed (gloo on the CPU, NCCL between GPUs); nothing here is home-made.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

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

    def groups(self, size: int) -> tuple[int, DataParallel]:
        """Split the processes into groups of ``size`` consecutive ranks (ranks left over join none): the
        number of groups, and this process's group (``index`` -1 when it is in none). Every process must call
        this, with the same ``size``: making a group is itself a collective."""
        size = max(1, min(size, self.count))
        n_groups = self.count // size
        if size == 1:
            return n_groups, DataParallel(group_index=self.index if self.index < n_groups else -1)
        import torch.distributed as dist

        mine = DataParallel(group_index=-1)
        for g in range(n_groups):
            members = list(range(g * size, (g + 1) * size))
            handle = dist.new_group(members)
            if self.index in members:
                mine = DataParallel(members.index(self.index), size, handle, g)
        return n_groups, mine

    def tag(self) -> str:
        """``rank r/N: `` in logs of a run with several processes."""
        return f"rank {self.index}/{self.count}: " if self.count > 1 else ""


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a group of processes that trains one estimator together (one process by default).

    ``shard`` gives a member its share of a batch (positions ``index``, ``index + size``, ...);
    ``reduce`` sums gradients and loss values over the group; ``gather`` puts per-item results
    computed in shards back in order. ``group_index`` numbers the study's groups (-1: in none).
    """

    index: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed process group, None for one process
    group_index: int = 0

    @property
    def leader(self) -> bool:
        """The member that writes what the group computes (the store's artifact, training checkpoints)."""
        return self.index == 0

    def shard(self, items: np.ndarray) -> np.ndarray:
        """This member's share of ``items``."""
        return np.asarray(items)[self.index::self.size]

    def reduce(self, params: Sequence, values: Sequence[float] = ()) -> list[float]:
        """Sum the gradients of ``params`` (a missing gradient counts as zero) and ``values`` over the group, in
        one all-reduce; returns the summed values. A no-op for one process."""
        if self.size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]
                         + [torch.tensor(list(values), dtype=torch.float32, device=grads[0].device)])
        dist.all_reduce(flat, group=self.group)
        at = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[at:at + n].view_as(g).to(g.dtype)
            at += n
        return flat[at:].tolist()

    def total(self, *values: float) -> list[float]:
        """``values`` summed over the group."""
        if self.size == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        flat = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(flat, group=self.group)
        return flat.tolist()

    def gather(self, positions: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
        """Every member's ``values`` (at ``positions`` of ``n`` items) put together, on every member."""
        if self.size == 1:
            out = np.zeros(n, dtype=np.asarray(values).dtype)
            out[positions] = values
            return out
        import torch.distributed as dist

        parts: list = [None] * self.size
        dist.all_gather_object(parts, (np.asarray(positions), np.asarray(values)), group=self.group)
        out = np.zeros(n, dtype=np.asarray(values).dtype)
        for where, got in parts:
            out[where] = got
        return out


ONE_PROCESS = DataParallel()


def relaunch(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``calibtune`` with the same arguments in ``num_processes`` processes on this machine (torchrun)."""
    import subprocess

    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
            "-m", "calibtune", *argv]
    return subprocess.run(args).returncode
