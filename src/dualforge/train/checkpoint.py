"""Atomic, resumable checkpoints of a ``{component name: stateful object}`` mapping.

A checkpoint is a folder ``step-000123/`` written under a temporary name and renamed only when
complete; ``latest`` (a text file, replaced atomically) names the newest one. A crash at any point
leaves the previous checkpoint intact. Nothing is unpickled.

Each component (anything with ``state_dict()`` / ``load_state_dict(state)``: the model, the
optimizer, the scheduler, the sampler, the RNG, the negative miner, ...) is written to one file
by what its state holds: a flat ``{name: tensor}`` dict as ``<name>.safetensors``, a JSON value
as ``<name>.json``, anything else as ``<name>.pt`` (read back with ``weights_only=True``, so
only tensors and plain containers). ``trainer_state.json`` records where training stands and
which file holds which component.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dualforge.modeling.adapters import trainable_names

LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.json"


class Stateful(Protocol):
    """What a checkpoint component offers (torch modules, optimizers and schedulers do)."""

    def state_dict(self) -> Any:
        """The component's state."""
        ...

    def load_state_dict(self, state: Any) -> Any:
        """Restore a state from :meth:`state_dict`."""
        ...


@dataclass(frozen=True)
class TrainerState:
    """Where training stands: step and best dev score."""

    step: int
    best_score: float | None = None
    best_step: int | None = None


class ModelWeights:
    """A model as a checkpoint component: unique tensors (tied ones once), strict loading.

    A model with frozen parameters (LoRA's base weights, rebuilt from ``model.name`` on resume
    and export) is saved by its trainable parameters alone; loading then checks those.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def partial(self) -> bool:
        """Whether only the trainable parameters are saved (some parameters are frozen)."""
        return any(not p.requires_grad for p in self.model.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` without duplicate names for shared (tied) tensors, on CPU."""
        keep = self.names()
        return {k: v for k, v in unique_state_dict(self.model).items() if k in keep}

    def aliases(self) -> dict[str, str]:
        """Second names of shared parameters and buffers -> their first name (by identity, so
        it holds for sharded parameters too)."""
        first: dict[int, str] = {}
        out: dict[str, str] = {}
        named = [
            *self.model.named_parameters(remove_duplicate=False),
            *self.model.named_buffers(remove_duplicate=False),
        ]
        for name, tensor in named:
            if id(tensor) in first:
                out[name] = first[id(tensor)]
            else:
                first[id(tensor)] = name
        return out

    def names(self) -> set[str]:
        """State-dict names saved: without the aliases, and only trainable ones when
        :attr:`partial`."""
        aliases = self.aliases()
        names = {k for k in self.model.state_dict() if k not in aliases}
        if self.partial:
            names &= set(trainable_names(self.model))
        return names

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load ``state``, checking every name (tied aliases count as present).

        Raises:
            ValueError: Names missing or unexpected.
        """
        missing, unexpected = self.model.load_state_dict(dict(state), strict=False)
        expected = self.names()
        real_missing = [
            k for k in missing if k in expected and k not in _aliases(self.model, state)
        ]
        if real_missing or unexpected:
            raise ValueError(
                f"weights do not match the model (missing {real_missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )


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


def _aliases(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> set[str]:
    """State-dict names that share storage with a saved name (tied weights)."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if any(x in saved for x in names) for n in names}


def _is_tensor_dict(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    )


def _json_round_trips(state: Any) -> bool:
    try:
        return bool(json.loads(json.dumps(state)) == state)
    except (TypeError, ValueError):
        return False


def write_component(folder: Path, name: str, state: Any) -> str:
    """Write one component's state into ``folder``; return the file name chosen."""
    if _is_tensor_dict(state):
        file = f"{name}.safetensors"
        save_file(state, str(folder / file))
    elif _json_round_trips(state):
        file = f"{name}.json"
        (folder / file).write_text(json.dumps(state, indent=2), encoding="utf-8")
    else:
        file = f"{name}.pt"
        torch.save(state, folder / file)
    return file


def read_component(path: Path) -> Any:
    """Read a state written by :func:`write_component` (no pickle)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return torch.load(path, weights_only=True)


def save_checkpoint(
    folder: str | Path,
    state: TrainerState,
    components: Mapping[str, Stateful],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-<N>`` atomically under ``folder``; keep the newest ``keep``.

    Args:
        folder: The run's checkpoints folder.
        state: Where training stands (names the checkpoint).
        components: Name -> object with ``state_dict()``; one file each.
        keep: How many checkpoints to keep.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {name: write_component(tmp, name, c.state_dict()) for name, c in components.items()}
    record = {**asdict(state), "components": files}
    (tmp / STATE).write_text(json.dumps(record, indent=2), encoding="utf-8")
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


def load_checkpoint(path: str | Path, components: Mapping[str, Stateful]) -> TrainerState:
    """Restore every named component from checkpoint ``path``, in the mapping's order.

    Components the checkpoint holds but ``components`` does not name are left alone.

    Raises:
        ValueError: A named component is not in the checkpoint, or does not accept its state
            (the message names the file).
    """
    path = Path(path)
    record = json.loads((path / STATE).read_text(encoding="utf-8"))
    files: dict[str, str] = record.pop("components")
    for name, component in components.items():
        if name not in files:
            raise ValueError(f"{path}: no {name!r} state in this checkpoint (has {sorted(files)})")
        try:
            component.load_state_dict(read_component(path / files[name]))
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path / files[name]}: {err}") from err
    return TrainerState(**record)


def component_files(path: str | Path) -> dict[str, str]:
    """Component name -> file name of checkpoint ``path``."""
    record = json.loads((Path(path) / STATE).read_text(encoding="utf-8"))
    files: dict[str, str] = record["components"]
    return files


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load the ``model`` component of checkpoint ``path`` into ``model``, checking every name."""
    load_checkpoint(path, {"model": ModelWeights(model)})


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint under ``folder``, or None."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / STATE).is_file() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
