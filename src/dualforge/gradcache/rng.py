"""Capture and restore random-number-generator state so a replayed forward sees the same dropout."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RngState:
    """RNG state of the CPU generator and of every CUDA device a chunk touches."""

    cpu: torch.Tensor
    cuda: tuple[tuple[int, torch.Tensor], ...]

    @classmethod
    def capture(cls, devices: Iterable[int] = ()) -> RngState:
        """Snapshot the CPU generator and the generators of ``devices`` (CUDA indices)."""
        cuda = tuple((d, torch.cuda.get_rng_state(d)) for d in sorted(set(devices)))
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    def restore(self) -> None:
        """Set the generators back to this snapshot."""
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda:
            torch.cuda.set_rng_state(state, device)


def cuda_devices(inputs: Mapping[str, object]) -> list[int]:
    """CUDA device indices used by a batch's tensors, plus the current device when CUDA is live."""
    devices = {
        value.device.index or 0
        for value in inputs.values()
        if isinstance(value, torch.Tensor) and value.device.type == "cuda"
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        devices.add(torch.cuda.current_device())
    return sorted(devices)


@contextmanager
def replay_rng(state: RngState) -> Iterator[None]:
    """Run the block from ``state`` and leave the generators as they were before the block."""
    outer = RngState.capture(d for d, _ in state.cuda)
    state.restore()
    try:
        yield
    finally:
        outer.restore()
