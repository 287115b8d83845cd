"""How the processes of a run hold the model: one process, DDP replicas, or FSDP2 shards.

Each strategy answers the same questions (:class:`Replicas`), so the loop never branches on its
name: what the engine calls (``module``), how gradient reduction is deferred until the step's last
backward (``no_sync``), and how full model and optimizer states are read and written for
checkpoints and exports (collectives under FSDP2: every rank must call them).

* :class:`Single` - one process; the model itself.
* :class:`Ddp` - ``DistributedDataParallel``: replicated weights; one all-reduce per step.
* :class:`Fsdp` - ``torch.distributed.fsdp.fully_shard`` on every transformer layer and tower:
  parameters, gradients and optimizer state sharded; each forward all-gathers a layer's
  parameters, the gradient reduce-scatter is deferred across replays with
  ``set_requires_gradient_sync(False)`` and runs once, in the last backward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dualforge.modeling import Model
from dualforge.train.checkpoint import ModelWeights


class Replicas(Protocol):
    """What the loop needs from a strategy (see the module docstring).

    Attributes:
        module: What the engine's tower callables run (``module(batch, side=...)``).
        sharded: Whether parameters are sharded (then exports rebuild a full model on rank 0).
        gathers_per_forward: Whether every forward runs a collective (FSDP's all-gather): then
            all ranks must run the same number of forwards, evaluation and mining included.
    """

    module: nn.Module
    sharded: bool
    gathers_per_forward: bool

    def no_sync(self) -> AbstractContextManager[Any]:
        """Suspend gradient reduction (every backward of a step but the last)."""
        ...

    def model_state(self) -> dict[str, torch.Tensor]:
        """The full model state (tied tensors once), on CPU; meaningful on rank 0."""
        ...

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a full model state on every rank."""
        ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state; meaningful on rank 0."""
        ...

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Any) -> None:
        """Load a full optimizer state on every rank."""
        ...


class Single:
    """One process: the model and optimizer as they are."""

    sharded = False
    gathers_per_forward = False

    def __init__(self, model: Model) -> None:
        self.module: nn.Module = model
        self._weights = ModelWeights(model)

    def no_sync(self) -> AbstractContextManager[Any]:
        """Nothing to suspend."""
        return nullcontext()

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's unique tensors."""
        return self._weights.state_dict()

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load (tied aliases count as present)."""
        self._weights.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()``."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Any) -> None:
        """``optimizer.load_state_dict(state)``."""
        optimizer.load_state_dict(state)


class Ddp(Single):
    """DDP replicas: buffers synced once at start, never per forward; unused parameters found
    (the step's one synchronised backward is one chunk of one tower, and a model may hold layers
    no tower uses, such as BERT's pooler). States are the local model's (all ranks agree)."""

    def __init__(self, model: Model, device: torch.device) -> None:
        super().__init__(model)
        ids = [device.index] if device.type == "cuda" else None
        params = inspect.signature(DistributedDataParallel).parameters
        no_forward_sync: dict[str, Any] = (
            {"forward_sync_buffers": False}  # torch >= 2.13: synced once at init, not per forward
            if "forward_sync_buffers" in params
            else {"broadcast_buffers": False}
        )
        self.ddp = DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=True, **no_forward_sync
        )
        self.module = self.ddp

    def no_sync(self) -> AbstractContextManager[Any]:
        """DDP's ``no_sync``."""
        return self.ddp.no_sync()


class Fsdp:
    """FSDP2 shards over every ``nn.ModuleList`` item (transformer layers) and every tower."""

    sharded = True
    gathers_per_forward = True

    def __init__(self, model: Model) -> None:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        towers = [model.query_encoder] if model.tied else [model.query_encoder, model.doc_encoder]
        for tower in towers:
            for sub in list(tower.modules()):
                if isinstance(sub, nn.ModuleList):
                    for layer in sub:
                        fully_shard(layer)
            fully_shard(tower)
        self.module: nn.Module = model
        self.towers = [t for t in towers if isinstance(t, FSDPModule)]

    @contextmanager
    def _sync(self, on: bool) -> Iterator[None]:
        for tower in self.towers:
            tower.set_requires_gradient_sync(on)
        try:
            yield
        finally:
            for tower in self.towers:
                tower.set_requires_gradient_sync(True)

    def no_sync(self) -> AbstractContextManager[Any]:
        """Defer the gradient reduce-scatter (``set_requires_gradient_sync(False)``)."""
        return self._sync(False)

    def _options(self, load: bool) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        if load:  # a LoRA model's checkpoint holds its trainable parameters alone
            strict = not ModelWeights(self.module).partial
            return StateDictOptions(full_state_dict=True, broadcast_from_rank0=False, strict=strict)
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def model_state(self) -> dict[str, torch.Tensor]:
        """Gathered full state (a collective), tied tensors once."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full: dict[str, Any] = get_model_state_dict(self.module, options=self._options(load=False))
        return _unique(self.module, full)

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Shard a full state into the model (every rank passes the same state)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        full: dict[str, Any] = _with_aliases(self.module, dict(state))
        set_model_state_dict(self.module, full, options=self._options(load=True))

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Gathered full optimizer state (a collective), keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        out: dict[str, Any] = get_optimizer_state_dict(
            self.module, optimizer, options=self._options(load=False)
        )
        return out

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Any) -> None:
        """Shard a full optimizer state into ``optimizer``."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.module, optimizer, state, options=self._options(load=True))


def _unique(model: nn.Module, full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``full`` without the second names of tied tensors (as :class:`ModelWeights` saves)."""
    keep = ModelWeights(model).names()
    return {k: v for k, v in full.items() if k in keep}


def _with_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every alias of a tied tensor filled in (set_model_state_dict wants all)."""
    for alias, name in ModelWeights(model).aliases().items():
        if name in state and alias not in state:
            state[alias] = state[name]
    return state


STRATEGIES: dict[str, Callable[[Model, torch.device], Replicas]] = {
    "ddp": Ddp,
    "fsdp": lambda model, device: Fsdp(model),
}
