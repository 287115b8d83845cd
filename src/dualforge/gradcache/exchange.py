"""How representations and their gradients cross processes (Gradient Cache paper, section 3.4).

Each process encodes its own rows of the global batch. Before the loss, every process gathers
every process's representations, so each query meets every document of the global batch. Each
process then computes only its own queries' share of the loss (O(b x B) scores for b = B / W local
queries), takes the gradient with respect to ALL gathered rows, and a reduce-scatter (a sum)
hands each process the gradient of its own rows: one collective per tower per step. The shares
sum to the full-batch loss, so the parameter gradients summed over processes are exactly the
single-process full-batch gradient.

:class:`LocalExchange` is the one-process case (everything is an identity);
:class:`ProcessGroupExchange` runs on a ``torch.distributed`` process group.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist


class Exchange(Protocol):
    """What the engine needs from the processes it runs in.

    Attributes:
        rank: This process's index in the group.
        world: Number of processes.
        grad_scale: Factor on this process's gradient share so that the parameter-gradient
            reduction that follows yields the sum (``world`` for DDP / FSDP, which average).
    """

    rank: int
    world: int
    grad_scale: float

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """``(W * b, ...)`` every process's ``(b, ...)`` rows, in rank order; token-level
        ``(b, T_r, ...)`` rows are zero-padded at the end to the longest ``T`` of any process."""
        ...

    def scatter(self, full: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """This process's ``(b, ...)`` rows of the sum over processes of ``full`` (cut back to
        ``length`` columns for token-level rows)."""
        ...

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over processes."""
        ...

    def most(self, count: int) -> int:
        """The largest ``count`` of any process."""
        ...


class LocalExchange:
    """One process: nothing to exchange."""

    rank = 0
    world = 1
    grad_scale = 1.0

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """``local`` itself."""
        return local

    def scatter(self, full: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """``full`` itself."""
        return full

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` itself."""
        return values

    def most(self, count: int) -> int:
        """``count`` itself."""
        return count


class ProcessGroupExchange:
    """Exchange over a ``torch.distributed`` process group (initialised by the caller).

    Args:
        group: The process group (None: the default group).
        averaged: Whether the parameter-gradient reduction after the step averages over
            processes (DDP's and FSDP's default); then each share is scaled by the world size.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, averaged: bool = True) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ProcessGroupExchange needs torch.distributed initialised first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.grad_scale = float(self.world) if averaged else 1.0
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else None

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """All-gather ``(b, ...)`` rows into ``(W * b, ...)``; every process must send the same
        number of rows (the training loop checks that the global batch divides by the world
        size); token-level rows ``(b, T_r, ...)`` are zero-padded to the longest ``T``."""
        if local.dim() >= 3:
            longest = self.most(local.shape[1])
            local = torch.nn.functional.pad(
                local, (0, 0) * (local.dim() - 2) + (0, longest - local.shape[1])
            )
        local = local.contiguous()
        out = local.new_empty((self.world * local.shape[0], *local.shape[1:]))
        dist.all_gather_into_tensor(out, local, group=self.group)
        return out

    def scatter(self, full: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Reduce-scatter (sum) ``(W * b, ...)`` into this process's ``(b, ...)`` rows; token-level
        rows are cut back to this process's ``length`` columns."""
        full = full.contiguous()
        out = full.new_empty((full.shape[0] // self.world, *full.shape[1:]))
        dist.reduce_scatter_tensor(out, full, op=dist.ReduceOp.SUM, group=self.group)
        return out[:, :length] if length is not None and out.dim() >= 3 else out

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) a copy of ``values``."""
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def most(self, count: int) -> int:
        """All-reduce (max) of one integer."""
        value = torch.tensor([count], dtype=torch.long, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return int(value.item())
