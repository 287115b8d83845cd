"""Matryoshka nesting dims (Kusupati et al. 2022): the default dims, their checks, and prefixes.

The one place that says which prefixes of an embedding are "the Matryoshka dims" and how a
prefix is taken, shared by the loss (:mod:`dualforge.losses.matryoshka`), retrieval evaluation
(:mod:`dualforge.eval`), search (:mod:`dualforge.eval.retrieval`) and adaptive classification
(:mod:`dualforge.classify`). It imports nothing from dualforge, so each of them can use it
without importing the others.

**The default nesting dims** of a ``D``-dim embedding are the powers of two from
:data:`SMALLEST_DIM` (32) below ``D``, then ``D`` itself: ``(32, 64, 128, 256, 384)`` for 384,
``(32, 64, 128, 256, 512, 768)`` for 768, ``(16,)`` for 16. They are used wherever dims are not
given: ``loss.matryoshka.dims`` when the loss is enabled, and ``dualforge classify train``
without ``--dims``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

SMALLEST_DIM = 32
"""The smallest prefix of the default nesting dims (see :func:`nesting_dims`)."""


def nesting_dims(full: int, smallest: int = SMALLEST_DIM) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``full``, then ``full`` itself.

    Args:
        full: The embedding size (e.g. 384).
        smallest: The smallest prefix (default :data:`SMALLEST_DIM`).

    Returns:
        E.g. ``(32, 64, 128, 256, 384)`` for 384; ``(full,)`` when ``full <= smallest``.

    Raises:
        ValueError: If ``smallest`` or ``full`` is not positive.
    """
    if full < 1 or smallest < 1:
        raise ValueError(f"dims must be positive, got full={full}, smallest={smallest}")
    dims, m = [], smallest
    while m < full:
        dims.append(m)
        m *= 2
    return (*dims, full)


def check_dim(dim: int, full: int) -> int:
    """Check that ``dim`` is a prefix size of a ``full``-dim embedding.

    Args:
        dim: The prefix size.
        full: The embedding size.

    Returns:
        ``dim`` as an int.

    Raises:
        ValueError: Unless ``1 <= dim <= full``.
    """
    if not 0 < dim <= full:
        raise ValueError(f"dims={dim} is outside 1..{full} (the embedding size)")
    return int(dim)


def check_dims(
    dims: Sequence[int], weights: Sequence[float] | None = None, *, full: int | None = None
) -> tuple[int, ...]:
    """Validate nesting dims (non-empty, positive, strictly increasing) and their weights.

    Args:
        dims: The nesting dims.
        weights: One non-negative weight per dim, when there are weights.
        full: The embedding size, when known: the largest dim must not exceed it.

    Returns:
        ``dims`` as a tuple of ints.

    Raises:
        ValueError: Naming what is wrong.
    """
    out = tuple(int(m) for m in dims)
    if not out:
        raise ValueError("Matryoshka needs at least one dim")
    if out[0] < 1 or any(a >= b for a, b in pairwise(out)):
        raise ValueError(f"Matryoshka dims must be positive and strictly increasing, got {out}")
    if full is not None:
        check_dim(out[-1], full)
    if weights is not None and len(weights) != len(out):
        raise ValueError(f"{len(weights)} Matryoshka weights for {len(out)} dims {out}")
    if weights is not None and any(w < 0 for w in weights):
        raise ValueError(f"Matryoshka weights must be >= 0, got {tuple(weights)}")
    return out


def distinct_dims(dims: Sequence[int] | None, full: int) -> list[int]:
    """The distinct prefix sizes of ``dims`` in ascending order, each checked against ``full``.

    For evaluation, where dims are a set of sizes to score rather than a nesting: any order and
    repeats are accepted.

    Args:
        dims: Prefix sizes, or None for none.
        full: The embedding size.

    Returns:
        The sorted distinct sizes (empty for None or empty ``dims``).

    Raises:
        ValueError: For a size outside ``1..full``.
    """
    return [check_dim(m, full) for m in sorted(set(dims or ()))]


def prefix(x: torch.Tensor, dim: int, renormalize: bool) -> torch.Tensor:
    """The first ``dim`` columns of ``x``, L2-renormalised when asked.

    Args:
        x: ``(B, D)`` representations.
        dim: Prefix size, ``1 <= dim <= D``.
        renormalize: Rescale each prefix row to unit length (for normalised embeddings, whose
            short prefixes otherwise have small and varying norms).

    Returns:
        ``(B, dim)`` tensor.

    Raises:
        ValueError: If ``dim`` is outside ``1..D``.
    """
    check_dim(dim, x.shape[-1])
    part = x[..., :dim]  # (B, dim)
    return F.normalize(part, p=2.0, dim=-1) if renormalize else part
