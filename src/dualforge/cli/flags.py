"""Flags that several subcommands share (imports no other CLI module)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from dualforge.errors import UsageError
from dualforge.files import occupied
from dualforge.modeling.kinds import CROSS_ENCODER, ModelKind, kind_of_folder
from dualforge.modeling.names import resolve_model_path


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--overwrite`` (``run.resume`` / ``run.overwrite``)."""
    p.add_argument(
        "--resume", action="store_true", help="continue the run from its newest whole checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what an earlier run of this name wrote (checkpoints, final/, best/, report)",
    )


def overrides_with_flags(args: argparse.Namespace) -> list[str]:
    """The command's overrides, then ``run.resume=true`` / ``run.overwrite=true`` as flagged."""
    flags = [f"run.{name}=true" for name in ("resume", "overwrite") if getattr(args, name)]
    return [*args.overrides, *flags]


def check_new_folder(out: Path, flag: str) -> None:
    """``out`` does not exist, or is an empty folder (nothing of the user's is replaced).

    Raises:
        UsageError: Naming the flag and what is there.
    """
    problem = occupied(out)
    if problem is not None:
        raise UsageError(f"{flag} {out}: {problem} (give a new folder)")


def check_prefix_dims(flag: str, dims: Iterable[int], model_dim: int) -> None:
    """``dims`` (a ``--dim`` / ``--dims`` value) are prefix sizes of the model's vectors, checked
    before anything is encoded.

    Raises:
        UsageError: Naming the flag and the first dim outside ``1..model_dim``.
    """
    bad = [d for d in dims if not 1 <= d <= model_dim]
    if bad:
        raise UsageError(f"{flag} {bad[0]}: must be in 1..{model_dim} (the model's dim)")


def retrieval_kind(name: str, flag: str = "--model") -> ModelKind:
    """The kind of the model folder ``name`` (``minilm`` allowed), one that retrieves.

    Raises:
        UsageError: A cross-encoder (it scores pairs; it cannot index a corpus).
    """
    kind = kind_of_folder(resolve_model_path(name))
    if kind is CROSS_ENCODER:
        raise UsageError(
            f"{flag} {name}: a cross-encoder scores (query, document) pairs and cannot index a "
            "corpus; use it as a distillation teacher (loss.distill.teacher)"
        )
    return kind
