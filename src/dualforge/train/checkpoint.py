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
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dualforge.errors import UserError
from dualforge.files import atomic_folder, fsync_dir, write_text_atomic
from dualforge.modeling.adapters import trainable_names

LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.json"


class CorruptCheckpointError(UserError):
    """A checkpoint file is missing or unreadable (a crash or a full disk cut it short)."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint does not fit what it is loaded into (another model or config)."""


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
    """Read a state written by :func:`write_component` (no pickle).

    Raises:
        CorruptCheckpointError: The file is missing, truncated or not what its name says.
    """
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        return torch.load(path, weights_only=True)
    except FileNotFoundError as err:
        raise CorruptCheckpointError(f"{path}: missing") from err
    except Exception as err:  # safetensors, torch and json each raise their own types
        raise CorruptCheckpointError(f"{path}: unreadable ({_first_line(err)})") from err


def save_checkpoint(
    folder: str | Path,
    state: TrainerState,
    components: Mapping[str, Stateful],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-<N>`` atomically under ``folder``; keep the newest ``keep`` (by
    step number; never the one just written).

    Args:
        folder: The run's checkpoints folder.
        state: Where training stands (names the checkpoint).
        components: Name -> object with ``state_dict()``; one file each.
        keep: How many checkpoints to keep.
    """
    root = Path(folder)
    final = root / step_name(state.step)
    with atomic_folder(final) as tmp:
        files = {name: write_component(tmp, name, c.state_dict()) for name, c in components.items()}
        record = {**asdict(state), "components": files}
        (tmp / STATE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    write_text_atomic(root / LATEST, final.name)
    fsync_dir(root)
    _prune(root, keep, final)
    return final


def step_name(step: int) -> str:
    """The folder name of the checkpoint at ``step``."""
    return f"step-{step:07d}"


def read_checkpoint(
    path: str | Path, names: Iterable[str] | None = None
) -> tuple[TrainerState, dict[str, Any]]:
    """Read checkpoint ``path``: where training stood and the states of the components
    ``names`` (default: every one) that it holds.

    Raises:
        CorruptCheckpointError: Its record or a component file read is missing or unreadable.
    """
    path = Path(path)
    record = read_component(path / STATE)
    try:
        files: dict[str, str] = record.pop("components")
        state = TrainerState(**record)
    except (AttributeError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"{path / STATE}: not a checkpoint record") from err
    wanted = files if names is None else {n: files[n] for n in names if n in files}
    return state, {name: read_component(path / file) for name, file in wanted.items()}


def load_checkpoint(path: str | Path, components: Mapping[str, Stateful]) -> TrainerState:
    """Restore every named component from checkpoint ``path``, in the mapping's order; their
    files are read before any component changes (the others are not read).

    Components the checkpoint holds but ``components`` does not name are left alone.

    Raises:
        CorruptCheckpointError: A file of the checkpoint is missing or unreadable.
        CheckpointMismatchError: A named component is not in the checkpoint, or does not
            accept its state (the message names the file).
    """
    path = Path(path)
    state, states = read_checkpoint(path, components)
    _restore(path, states, components)
    return state


def _restore(path: Path, states: Mapping[str, Any], components: Mapping[str, Stateful]) -> None:
    for name, component in components.items():
        if name not in states:
            has = sorted(component_files(path))
            raise CheckpointMismatchError(
                f"{path}: no {name!r} state in this checkpoint (has {has})"
            )
        try:
            component.load_state_dict(states[name])
        except (ValueError, KeyError) as err:
            file = component_files(path)[name]
            raise CheckpointMismatchError(f"{path / file}: {_first_line(err)}") from err


def component_files(path: str | Path) -> dict[str, str]:
    """Component name -> file name of checkpoint ``path``."""
    record = json.loads((Path(path) / STATE).read_text(encoding="utf-8"))
    files: dict[str, str] = record["components"]
    return files


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load the ``model`` component of checkpoint ``path`` into ``model``, checking every name."""
    load_checkpoint(path, {"model": ModelWeights(model)})


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint ``latest`` names under ``folder`` when its record is there, or None."""
    path = _named_latest(Path(folder))
    return path if path is not None and (path / STATE).is_file() else None


def checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint folders under ``folder``, newest step first."""
    found = [p for p in Path(folder).glob("step-*") if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=lambda p: _step_of(p) or 0, reverse=True)


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a run resumed from, and what was skipped on the way (newest first)."""

    state: TrainerState
    path: Path
    skipped: tuple[str, ...] = ()


def resume_from(folder: str | Path, components: Mapping[str, Stateful]) -> Resumed | None:
    """Restore ``components`` from the newest checkpoint under ``folder`` that reads whole.

    A ``latest`` that names a missing folder, and checkpoints with a missing or unreadable
    file, are skipped (and reported in :attr:`Resumed.skipped`).

    Returns:
        None when ``folder`` holds no checkpoint at all.

    Raises:
        CorruptCheckpointError: Checkpoints exist but none reads whole (names every file).
        CheckpointMismatchError: The newest whole checkpoint does not fit ``components``.
    """
    root = Path(folder)
    skipped = []
    named = _named_latest(root)
    if named is not None and not (named / STATE).is_file():
        skipped.append(f"{root / LATEST} names {named.name}, which is missing or incomplete")
    for path in checkpoints(root):
        try:
            state, states = read_checkpoint(path, components)
        except CorruptCheckpointError as err:
            skipped.append(str(err))
            continue
        _restore(path, states, components)
        return Resumed(state, path, tuple(skipped))
    if skipped:
        raise CorruptCheckpointError(f"no checkpoint under {root} loads: {'; '.join(skipped)}")
    return None


def _named_latest(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    return root / pointer.read_text(encoding="utf-8").strip()


def _step_of(path: Path) -> int | None:
    digits = path.name.removeprefix("step-")
    return int(digits) if digits.isdigit() else None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _prune(root: Path, keep: int, written: Path) -> None:
    """Remove all but the newest ``keep`` checkpoints by step number, ``written`` kept."""
    others = [p for p in checkpoints(root) if p != written]
    for old in others[max(keep - 1, 0) :]:
        shutil.rmtree(old, ignore_errors=True)
