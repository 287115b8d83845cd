"""Checkpoint components the loop owns besides model, optimizer, scheduler and sampler.

* :class:`GlobalRng`: the Python, NumPy, torch CPU and CUDA random generators (a resumed run
  draws the same dropout masks and shuffles);
* :class:`RankedRng`: every process's :class:`GlobalRng` state under several processes;
* :class:`RunClock`: seconds spent mining and training so far (the loop times each step);
* :class:`ReplicaModel`, :class:`ReplicaOptimizer`: model and optimizer states read through
  how the processes hold them (``train/replicas.py``), full even when sharded.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


class GlobalRng:
    """The process-wide random generators as one checkpoint component (CUDA ones included when
    CUDA is in use, so a resume on a GPU replays the same dropout masks)."""

    def state_dict(self) -> dict[str, Any]:
        """Python, NumPy (MT19937), torch CPU and (when initialised) every CUDA generator state."""
        np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
        py = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": list(py[1]),
            "python_pos": py[2],
            "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "numpy_pos": int(np_state[2]),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set every generator to ``state``.

        Raises:
            ValueError: The state holds CUDA generators this machine does not have.
        """
        torch.set_rng_state(state["torch"])
        random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
        cuda = state.get("cuda")
        if cuda is None:
            return
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(cuda):
            raise ValueError(
                f"the checkpoint holds the RNG state of {len(cuda)} CUDA device(s); this "
                "machine has fewer (resume on a GPU machine, or from a CPU checkpoint)"
            )
        torch.cuda.set_rng_state_all(cuda)


class RankedRng:
    """Every process's :class:`GlobalRng` state, for a run on several processes.

    Rank 0 saves the list gathered from all ranks (``states``); on resume each rank restores its
    own entry. A run resumed with a different number of processes restores the entries it has
    and seeds the others from ``(seed, rank)`` (its dropout masks depend on the rank layout
    anyway); a single-process checkpoint (a plain :class:`GlobalRng` state) counts as rank 0's.

    Args:
        rank: This process's rank.
        seed: The run seed (for ranks the checkpoint has no state for).
        states: The gathered states to save (None on a component built only to load).
    """

    def __init__(self, rank: int, seed: int, states: list[dict[str, Any]] | None = None) -> None:
        self.rank = rank
        self.seed = seed
        self.states = states

    def state_dict(self) -> dict[str, Any]:
        """``{"ranks": [state of rank 0, ...]}``."""
        if self.states is None:
            raise RuntimeError("RankedRng built without the gathered states cannot be saved")
        return {"ranks": self.states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore this rank's entry (see the class docstring)."""
        ranks = state.get("ranks", [state])
        if self.rank < len(ranks):
            GlobalRng().load_state_dict(ranks[self.rank])
            return
        random.seed(self.seed + self.rank)
        np.random.seed((self.seed + self.rank) % 2**32)
        torch.manual_seed(self.seed + self.rank)


class RunClock:
    """Wall time spent mining negatives and training, summed over steps (resumes keep it)."""

    def __init__(self) -> None:
        self.mining = 0.0
        self.training = 0.0

    def add(self, step_seconds: float, mining_seconds: float) -> None:
        """Count one step that took ``step_seconds``, ``mining_seconds`` of them mining."""
        self.mining += mining_seconds
        self.training += max(step_seconds - mining_seconds, 0.0)

    def fields(self) -> dict[str, float]:
        """``mining_seconds`` and ``training_seconds`` so far."""
        return {"mining_seconds": self.mining, "training_seconds": self.training}

    def state_dict(self) -> dict[str, float]:
        """The two totals."""
        return {"mining": self.mining, "training": self.training}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore the totals."""
        self.mining, self.training = float(state["mining"]), float(state["training"])


class ReplicaModel:
    """The model as a checkpoint component, read and written through its holder (a full state
    even when the processes hold shards; a collective then, so every rank calls it)."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full state (tied tensors once)."""
        out: dict[str, torch.Tensor] = self.holder.model_state()
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a full state (strictly)."""
        self.holder.load_model_state(state)


class ReplicaOptimizer:
    """The optimizer as a checkpoint component, through the model's holder (see
    :class:`ReplicaModel`)."""

    def __init__(self, holder: Any, optimizer: torch.optim.Optimizer) -> None:
        self.holder, self.optimizer = holder, optimizer

    def state_dict(self) -> dict[str, Any]:
        """The full optimizer state."""
        out: dict[str, Any] = self.holder.optimizer_state(self.optimizer)
        return out

    def load_state_dict(self, state: Any) -> None:
        """Load a full optimizer state."""
        self.holder.load_optimizer_state(self.optimizer, state)
