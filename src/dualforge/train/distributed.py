"""Several processes training one model, on torch.distributed (launched by ``torchrun``).

The rules a run follows (docs/distributed.md):

* ``optim.batch_size`` is the GLOBAL batch. Every process walks the same global batch order (the
  sampler is seeded, its position is one number) and encodes rows ``[r * b, (r + 1) * b)`` of
  each batch, ``b = B / W``; the Gradient Cache engine gathers representations across processes
  (:class:`~dualforge.gradcache.exchange.ProcessGroupExchange`).
* The model is held by DDP or FSDP2 (``train/replicas.py``); every backward but the last of a
  step runs with gradient reduction suspended, so it happens once per optimizer step.
* Rank 0 writes logs, checkpoints, exports and reports; the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dualforge.data import Batch
from dualforge.errors import UserError
from dualforge.hardware import resolve_device

TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the job (torchrun's environment; one process without it).

    Attributes:
        rank: Global rank.
        world: Number of processes.
        local_rank: Rank on this machine.
        local_world: Processes on this machine.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes logs, checkpoints and reports."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ProcessInfo:
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (set by torchrun).

        Raises:
            UserError: A variable that is not a number, or a rank outside the world.
        """
        env = dict(os.environ) if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError as err:
            raise UserError(f"torchrun environment: {err}") from None
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
            raise UserError(f"torchrun environment: rank {rank} of {world} is out of range")
        return cls(rank, world, local_rank, local_world)


def setup(device_spec: str, info: ProcessInfo) -> torch.device:
    """This process's device, with the process group started when there are several processes.

    CUDA runs take ``cuda:LOCAL_RANK`` (NCCL); CPU runs use gloo.

    Raises:
        UserError: Naming ``run.device`` when the device is not available.
    """
    device = resolve_device(device_spec)
    if device.type == "cuda" and info.world > 1:
        if torch.cuda.device_count() < info.local_world:
            raise UserError(
                f"run.device={device_spec!r}: {info.local_world} processes on this machine but "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def shard_batch(batch: Batch, rank: int, world: int) -> Batch:
    """This process's rows ``[r * b, (r + 1) * b)`` of a global batch, ``b = B / W``.

    Raises:
        UserError: The batch does not divide by the world size.
    """
    if len(batch) % world:
        raise UserError(
            f"optim.batch_size: a batch of {len(batch)} does not divide between {world} "
            "processes; make the global batch a multiple of the process count"
        )
    b = len(batch) // world
    return batch.take(slice(rank * b, (rank + 1) * b))


def barrier() -> None:
    """Wait for every process (nothing with one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_objects(value: Any, info: ProcessInfo) -> list[Any]:
    """Every process's ``value``, in rank order (``[value]`` with one process)."""
    if info.world == 1:
        return [value]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, value)
    return out


def gather_rows(rows: torch.Tensor, info: ProcessInfo) -> list[torch.Tensor]:
    """Every process's ``(n_r, ...)`` tensor (``n_r`` may differ), on the CPU in rank order.

    Tensors, not pickles: the sizes are gathered first, then one padded all-gather (on the
    current CUDA device under NCCL).
    """
    if info.world == 1:
        return [rows.cpu()]
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    size = torch.tensor([rows.shape[0]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(info.world)]
    dist.all_gather(sizes, size)
    padded = rows.new_zeros((max(int(n) for n in sizes), *rows.shape[1:]), device=device)
    padded[: rows.shape[0]] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in range(info.world)]
    dist.all_gather(parts, padded)
    return [part[: int(n)].cpu() for part, n in zip(parts, sizes)]


def broadcast_object(value: Any, info: ProcessInfo) -> Any:
    """Rank 0's ``value`` on every process."""
    if info.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    """End the process group if this module started one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
