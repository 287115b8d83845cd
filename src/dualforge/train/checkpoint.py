"""Atomic, resumable checkpoints: weights as safetensors, optimizer/scheduler/RNG/data state.

A checkpoint is a folder ``step-000123/`` written under a temporary name and renamed only when
complete; ``latest`` (a text file, replaced atomically) names the newest one. A crash at any point
leaves the previous checkpoint intact. Nothing is unpickled: tensors load with
``weights_only=True`` and the rest is JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

LATEST = "latest"
WEIGHTS = "model.safetensors"
OPTIM = "optimizer.pt"
STATE = "trainer_state.json"


@dataclass(frozen=True)
class TrainerState:
    """Where training stands: step, data order, best dev score."""

    step: int
    sampler: dict[str, Any]
    best_score: float | None = None
    best_step: int | None = None
    mining: dict[str, Any] | None = None


def unique_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without duplicate names for shared (tied) tensors."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in module.state_dict(keep_vars=False).items():
        key = tensor.data_ptr() if tensor.numel() else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    keep: int = 2,
    add_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``step-<N>`` atomically under ``folder`` and keep the newest ``keep``.

    ``add_files(tmp_folder)`` may add files (e.g. the negative miner's index) before the rename.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(unique_state_dict(model), str(tmp / WEIGHTS))
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
    }
    torch.save(extra, tmp / OPTIM)
    fields = {k: v for k, v in state.__dict__.items() if k != "mining" or v is not None}
    (tmp / STATE).write_text(json.dumps(fields, indent=2), encoding="utf-8")
    if add_files is not None:
        add_files(tmp)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, final.name)
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[: max(len(steps) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint under ``folder``, or None."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / STATE).is_file() else None


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` of checkpoint ``path`` into ``model``, checking every name."""
    path = Path(path)
    weights = load_file(str(path / WEIGHTS))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if k not in _aliases(model, weights)]
    if real_missing or unexpected:
        raise ValueError(
            f"{path / WEIGHTS}: weights do not match the model "
            f"(missing {real_missing[:5]}, unexpected {unexpected[:5]})"
        )


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState:
    """Restore weights, optimizer, scheduler and RNG from ``path``; return the trainer state."""
    path = Path(path)
    load_weights(path, model)
    extra = torch.load(path / OPTIM, weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    data = json.loads((path / STATE).read_text(encoding="utf-8"))
    return TrainerState(**data)


def _aliases(model: nn.Module, saved: dict[str, torch.Tensor]) -> set[str]:
    """State-dict names that share storage with a saved name (tied weights)."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if any(x in saved for x in names) for n in names}
