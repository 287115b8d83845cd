"""Pick negatives for a batch of queries: softmax draws or top-k with skip, positives excluded.

Two sources of target vectors: a :class:`TreeIndex` (exact sampling / exact top-k over the
index's current vectors) or a dense ``(N, d)`` matrix scored by brute force (the oracle). Both
return target ids (row numbers); excluded ids (known positives) never come back.

    ids = mine_negatives(index, q, 8, mode="softmax", temperature=0.05, exclude=rows, generator=g)
    ids = mine_negatives(vectors, q, 8, mode="topk", skip_first=3, exclude=rows)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from dualforge.mining._arrays import Array, as_matrix
from dualforge.mining.tree import TreeIndex

MiningMode = Literal["softmax", "topk"]
"""How negatives are picked: softmax draws or top-k with skip (the one list of modes)."""
MODES: tuple[str, ...] = get_args(MiningMode)


def exclusion_matrix(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """``(Q, m)`` int64 ids padded with ``-1`` from one id list per query (``m >= 1``)."""
    width = max([1, *(len(r) for r in rows)])
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(list(r), dtype=np.int64)
    return out


def _excluded_mask(exclude: np.ndarray, n_points: int) -> torch.Tensor:
    """``(Q, N)`` bool, True where a query excludes a target."""
    mask = torch.zeros((exclude.shape[0], n_points), dtype=torch.bool)
    q, j = np.nonzero(exclude >= 0)
    mask[torch.as_tensor(q), torch.as_tensor(exclude[q, j])] = True
    return mask


def _check_room(exclude: np.ndarray, n_points: int, need: int) -> None:
    """Raise when some query has fewer than ``need`` targets left after exclusion."""
    left = n_points - (exclude >= 0).sum(axis=1) if exclude.size else np.full(1, n_points)
    if left.size and int(left.min()) < need:
        raise ValueError(
            f"a query keeps {int(left.min())} of {n_points} targets after excluding its "
            f"positives; {need} are needed (num_negatives + skip_first)"
        )


def brute_force_softmax(
    queries: Array,
    targets: Array,
    k: int,
    temperature: float,
    exclude: np.ndarray,
    generator: torch.Generator,
) -> np.ndarray:
    """``(Q, k)`` i.i.d. draws from ``softmax(q·t / τ)`` over the non-excluded targets."""
    q, t = as_matrix(queries, "queries"), as_matrix(targets, "targets")
    _check_room(exclude, t.shape[0], 1)
    logits = (q @ t.T).double() / temperature
    logits.masked_fill_(_excluded_mask(exclude, t.shape[0]), float("-inf"))
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, k, replacement=True, generator=generator).numpy()


def _rank(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, equal scores by id ascending."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def brute_force_topk(
    queries: Array, targets: Array, k: int, skip_first: int, exclude: np.ndarray
) -> np.ndarray:
    """``(Q, k)`` ids ranked ``skip_first`` .. ``skip_first + k - 1`` among non-excluded targets."""
    q, t = as_matrix(queries, "queries"), as_matrix(targets, "targets")
    _check_room(exclude, t.shape[0], skip_first + k)
    scores = q @ t.T
    scores.masked_fill_(_excluded_mask(exclude, t.shape[0]), float("-inf"))
    top_s, top_i = torch.topk(scores, skip_first + k, dim=1)
    _, ids = _rank(top_s.numpy(), top_i.numpy())
    return ids[:, skip_first:]


def tree_topk(
    index: TreeIndex, queries: Array, k: int, skip_first: int, exclude: np.ndarray
) -> np.ndarray:
    """Like :func:`brute_force_topk`, by exact tree search over the index's vectors."""
    _check_room(exclude, index.num_points, skip_first + k)
    width = int((exclude >= 0).sum(axis=1).max()) if exclude.size else 0
    _, ids = index.search(queries, skip_first + k + width)
    out = np.empty((ids.shape[0], k), dtype=np.int64)
    for row in range(ids.shape[0]):
        kept = ids[row][~np.isin(ids[row], exclude[row][exclude[row] >= 0])]
        out[row] = kept[skip_first : skip_first + k]
    return out


def mine_negatives(
    source: TreeIndex | Array,
    queries: Array,
    k: int,
    *,
    mode: str,
    exclude: np.ndarray,
    temperature: float = 0.05,
    skip_first: int = 0,
    generator: torch.Generator | None = None,
    eta: float = 0.25,
    backend: str = "auto",
) -> np.ndarray:
    """``(Q, k)`` negative target ids for each query.

    Args:
        source: A tree index, or ``(N, d)`` target vectors scored by brute force.
        queries: ``(Q, d)`` query vectors.
        k: Negatives per query.
        mode: ``"softmax"`` (i.i.d. draws, with replacement, from ``softmax(q·t / τ)``) or
            ``"topk"`` (ranks ``skip_first`` .. ``skip_first + k - 1``).
        exclude: ``(Q, m)`` ids never to return per query, padded with ``-1``.
        temperature: ``τ`` of softmax mode.
        skip_first: Top ranks skipped in top-k mode (likely unlabelled positives).
        generator: Random generator of softmax mode (a fresh seeded one when None).
        eta: Tree sampler refinement threshold (cost only; draws are exact for any value).
        backend: Tree sampler backend, ``"torch"``, ``"numba"`` or ``"auto"`` (numba when
            installed). Both draw from the exact softmax, but from different random streams:
            one seed gives different negatives on each.

    Returns:
        ``(Q, k)`` int64 target ids.

    Raises:
        ValueError: For an unknown mode, or a query left with too few targets.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if isinstance(source, TreeIndex):
        if mode == "topk":
            return tree_topk(source, queries, k, skip_first, exclude)
        _check_room(exclude, source.num_points, 1)
        _, ids, _ = source.sample(
            queries,
            k,
            temperature=temperature,
            exclude=exclude,
            eta=eta,
            generator=gen,
            backend=backend,
        )
        return ids
    if mode == "topk":
        return brute_force_topk(queries, source, k, skip_first, exclude)
    return brute_force_softmax(queries, source, k, temperature, exclude, gen)
