"""Checkpoint components the loop owns besides model, optimizer, scheduler and sampler.

* :class:`GlobalRng`: the Python, NumPy and torch random generators (a resumed run draws the
  same dropout masks and shuffles);
* :class:`RunClock`: seconds spent mining and training so far (the loop times each step).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


class GlobalRng:
    """The process-wide random generators as one checkpoint component."""

    def state_dict(self) -> dict[str, Any]:
        """Python, NumPy (MT19937) and torch CPU generator states."""
        np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
        py = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "python": list(py[1]),
            "python_pos": py[2],
            "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "numpy_pos": int(np_state[2]),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set every generator to ``state``."""
        torch.set_rng_state(state["torch"])
        random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))


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
