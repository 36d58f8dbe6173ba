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
processes form groups (``cell_processes``); otherwise every process trains its own cells. Then, when
the estimator models divide evenly among the processes, each process takes whole rows of the matrix
(``row_owners``: every cell whose estimator is its model, adapter cells and the others), so that a
model's reads shared between its cells (the base pass, the states kept below the adapters, the
zero-shot query) are made once, by one process, and for its cells a process loads only its rows' models.
With ``adapter_sharding: fsdp`` a group also shards the model's weights: PyTorch's FSDP
(``fully_shard``) splits every decoder layer's weights over the members, gathers a layer
while it runs, and reduce-scatters the adapters' gradients, so a member holds 1/N of the
layers; the embeddings, final norm and LM head stay whole on each member.

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


def row_owners(models: Sequence[str], processes: int) -> dict[str, int] | None:
    """The process that computes each estimator model's row of cells, when ``processes`` (one per cell, no groups)
    can take the same number of whole rows each: model ``i`` goes to process ``i % processes``. ``None`` when they
    cannot (fewer models than processes, or a remainder): the cells are then dealt by their position."""
    if processes < 2 or len(models) % processes:
        return None
    return {model: i % processes for i, model in enumerate(models)}


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

    def groups(self, size: int, sharded: bool = False) -> tuple[int, DataParallel]:
        """Split the processes into groups of ``size`` consecutive ranks (ranks left over join none): the
        number of groups, and this process's group (``index`` -1 when it is in none); with ``sharded``, a group
        of several shards the model's weights (FSDP). Every process must call this, with the same ``size``:
        making a group is itself a collective."""
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
                mine = DataParallel(members.index(self.index), size, handle, g, sharded)
        return n_groups, mine

    def tag(self) -> str:
        """``rank r/N: `` in logs of a run with several processes."""
        return f"rank {self.index}/{self.count}: " if self.count > 1 else ""


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a group of processes that trains one estimator together (one process by default).

    ``shard`` gives a member its share of a training batch (positions ``index``, ``index + size``, ...);
    ``reduce`` sums gradients and loss values over the group. Passes without gradients (validation,
    scoring) take ``share`` of their items, add up with ``total`` and put per-item results back in
    order with ``gather``. ``group_index`` numbers the study's groups (-1: in none).

    With ``sharded`` weights (FSDP, ``shard_decoder``) every member must run the same passes, since
    each layer's forward gathers its weights from all members: ``share`` is then every item, and
    ``total`` and ``gather`` have nothing to combine.
    """

    index: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed process group, None for one process
    group_index: int = 0
    sharded: bool = False  # the model's decoder layers are sharded over the group (FSDP)

    @property
    def leader(self) -> bool:
        """The member that writes what the group computes (the store's artifact, training checkpoints)."""
        return self.index == 0

    def shard(self, items: np.ndarray) -> np.ndarray:
        """This member's share of ``items``."""
        return np.asarray(items)[self.index::self.size]

    def share(self, items: np.ndarray) -> np.ndarray:
        """This member's share of a pass without gradients: ``shard``, or every item when the weights are
        sharded (every member runs every pass)."""
        return np.asarray(items) if self.sharded else self.shard(items)

    def reduce(self, params: Sequence, values: Sequence[float] = ()) -> list[float]:
        """Sum the gradients of ``params`` (a missing gradient counts as zero) and ``values`` over the group, in
        one all-reduce; returns the summed values. Gradients of sharded parameters (FSDP's, DTensors) are
        summed by FSDP itself and left alone. A no-op for one process."""
        if self.size == 1:
            return list(values)
        import torch
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        params = [p for p in params if not isinstance(p, DTensor)]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        device = grads[0].device if grads else None
        flat = torch.cat([g.reshape(-1).float() for g in grads]
                         + [torch.tensor(list(values), dtype=torch.float32, device=device)])
        dist.all_reduce(flat, group=self.group)
        at = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[at:at + n].view_as(g).to(g.dtype)
            at += n
        return flat[at:].tolist()

    def total(self, *values: float) -> list[float]:
        """``values`` computed on each member's ``share`` summed over the group."""
        if self.size == 1 or self.sharded:
            return list(values)
        import torch
        import torch.distributed as dist

        flat = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(flat, group=self.group)
        return flat.tolist()

    def gather(self, positions: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
        """Every member's ``values`` (at ``positions`` of ``n`` items, its ``share``) put together, on every
        member."""
        if self.size == 1 or self.sharded:
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


    def shard_decoder(self, model) -> None:
        """Shard the decoder's weights over the group with FSDP (``fully_shard``): each layer a unit, the decoder
        (embeddings, final norm) the root; gradients summed, not averaged. Put adapters on first: FSDP manages
        the parameters present when it wraps. The LM head stays outside, whole on every member (where the
        embeddings are tied to it, it keeps its own copy; both are frozen). The model is marked ``sharded``:
        it is spent for passes outside this group."""
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        mesh = DeviceMesh.from_group(self.group, next(model.parameters()).device.type)
        decoder = model.get_decoder()
        units = [*decoder.layers, decoder]
        for unit in units:
            fully_shard(unit, mesh=mesh)
        for unit in units:
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
            unit.set_gradient_divide_factor(1.0)  # each member's loss is its share of the whole batch's
        model.calibtune_sharded = True


def full_tensor(value):
    """A whole tensor from a sharded one (a DTensor: a collective every member calls); others as they are."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def like(value, param):
    """A whole ``value`` as ``param`` holds it: this member's shard when ``param`` is sharded (no communication:
    every member has the whole value)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return value
    return distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)


def clip_grad_norm(params: Sequence, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` over parameters some of which FSDP shards (DTensors) and some not (a
    head beside the adapters): the total norm of both kinds, each kind scaled by it."""
    import torch
    from torch.distributed.tensor import DTensor

    sharded = [p for p in params if isinstance(p, DTensor) and p.grad is not None]
    if not sharded:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    plain = [p for p in params if not isinstance(p, DTensor) and p.grad is not None]
    norms = [full_tensor(torch.nn.utils.get_total_norm([p.grad for p in sharded]))]
    if plain:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in plain]))
    total = torch.linalg.vector_norm(torch.stack([n.float().cpu() for n in norms]))
    for kind in (sharded, plain):
        if kind:
            torch.nn.utils.clip_grads_with_norm_(kind, max_norm, total.to(kind[0].grad.device))


def is_spent(model) -> bool:
    """Whether ``model``'s weights were sharded over a group (``DataParallel.shard_decoder``): usable by it only."""
    return bool(getattr(model, "calibtune_sharded", False))


ONE_PROCESS = DataParallel()


def relaunch(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``calibtune`` with the same arguments in ``num_processes`` processes on this machine (torchrun)."""
    import subprocess

    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
            "-m", "calibtune", *argv]
    return subprocess.run(args).returncode
