"""Pick negatives for a batch of queries: softmax draws or top-k with skip, positives excluded,
and optionally every target scoring above a ceiling derived from the query's positive.

Sources of target vectors: a :class:`~dualforge.mining.stores.VectorStore` (``tree`` or
``flat``; a bare :class:`TreeIndex` is wrapped in a tree store), or a dense ``(N, d)`` matrix
scored by brute force in one block (the oracle the tests compare against). All return target
ids (row numbers); excluded ids (known positives) never come back.

Positive-aware filtering (NV-Retriever, Moreira et al. 2024): with ``s+`` the query's score for
its own positive, a target is removed when its score is above ``s+ - margin`` (``absolute``) or
``s+ - |s+| * margin`` (``relative``; the absolute value keeps the rule sign-safe when ``s+``
is negative). The ceiling is an upper bound on the score that every store applies inside its own search: the
tree caps its node bounds by it (a node above it holds no mass, one straddling it no lower
bound), the flat store masks scores above it; so softmax draws are exact draws from the softmax
restricted to the kept targets, at about the unfiltered cost, and top-k returns the top kept
ranks. A query left with too few kept targets (1 for softmax,
``skip_first + k`` for top-k) is mined without the filter and flagged in :class:`Mined`.

    ids = mine_negatives(index, q, 8, mode="softmax", temperature=0.05, exclude=rows, generator=g)
    ids = mine_negatives(vectors, q, 8, mode="topk", skip_first=3, exclude=rows)
    mined = mine(store, q, 8, mode="softmax", exclude=rows, ceiling=c, generator=g)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from dualforge.mining._arrays import Array, as_matrix
from dualforge.mining.sampler import exclusion_keys
from dualforge.mining.stores import StoreParams, TreeStore, VectorStore
from dualforge.mining.tree import TreeIndex

MiningMode = Literal["softmax", "topk"]
"""How negatives are picked: softmax draws or top-k with skip (the one list of modes)."""
MODES: tuple[str, ...] = get_args(MiningMode)
FilterRule = Literal["none", "absolute", "relative"]
"""Positive-aware filtering: off, ``s > s+ - m`` removed, or ``s > s+ - |s+| p`` removed."""
FILTERS: tuple[str, ...] = get_args(FilterRule)


def positive_ceiling(positive_scores: torch.Tensor, rule: str, margin: float) -> torch.Tensor:
    """``(Q,)`` highest score a kept negative may have (``+inf`` for ``none``).

    Args:
        positive_scores: ``(Q,)`` each query's score for its own positive (the same vectors as
            the candidates).
        rule: ``none``, ``absolute`` or ``relative``.
        margin: ``m`` (score units) or ``p`` (a fraction of ``|s+|``).

    Raises:
        ValueError: For an unknown rule.
    """
    s = positive_scores.double()
    if rule == "none":
        return torch.full_like(s, math.inf)
    if rule == "absolute":
        return s - margin
    if rule == "relative":
        return s - s.abs() * margin
    raise ValueError(f"filter rule {rule!r}; use one of {FILTERS}")


def exclusion_matrix(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """``(Q, m)`` int64 ids padded with ``-1`` from one id list per query (``m >= 1``)."""
    width = max([1, *(len(r) for r in rows)])
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(list(r), dtype=np.int64)
    return out


@dataclass(frozen=True)
class Mined:
    """Negatives of a batch of queries and what the filter did.

    Attributes:
        ids: ``(Q, k)`` int64 target ids.
        fallback: ``(Q,)`` bool: the query kept too few targets under its ceiling and was mined
            without it.
    """

    ids: np.ndarray
    fallback: np.ndarray


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


def _oracle_mask(
    scores: torch.Tensor, exclude: np.ndarray, ceiling: torch.Tensor | None, need: int
) -> torch.Tensor:
    """``(Q, N)`` removed pairs (excluded, or above a ceiling unless too few would stay)."""
    excluded = _excluded_mask(exclude, scores.shape[1])
    if ceiling is None:
        return excluded
    above = (scores > ceiling.float().unsqueeze(1)) & ~excluded
    fallback = (scores.shape[1] - excluded.sum(1) - above.sum(1)) < need  # (Q,)
    return excluded | (above & ~fallback.unsqueeze(1))


def brute_force_softmax(
    queries: Array,
    targets: Array,
    k: int,
    temperature: float,
    exclude: np.ndarray,
    generator: torch.Generator,
    ceiling: torch.Tensor | None = None,
) -> np.ndarray:
    """``(Q, k)`` i.i.d. draws from ``softmax(q·t / τ)`` over the kept targets (the oracle)."""
    q, t = as_matrix(queries, "queries"), as_matrix(targets, "targets")
    _check_room(exclude, t.shape[0], 1)
    scores = q @ t.T
    mask = _oracle_mask(scores, exclude, ceiling, 1)
    logits = scores.double() / temperature
    logits.masked_fill_(mask, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, k, replacement=True, generator=generator).numpy()


def _rank(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, equal scores by id ascending."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def brute_force_topk(
    queries: Array,
    targets: Array,
    k: int,
    skip_first: int,
    exclude: np.ndarray,
    ceiling: torch.Tensor | None = None,
) -> np.ndarray:
    """``(Q, k)`` ids ranked ``skip_first`` .. ``skip_first + k - 1`` among kept targets."""
    q, t = as_matrix(queries, "queries"), as_matrix(targets, "targets")
    _check_room(exclude, t.shape[0], skip_first + k)
    scores = q @ t.T
    mask = _oracle_mask(scores, exclude, ceiling, skip_first + k)
    scores.masked_fill_(mask, float("-inf"))
    top_s, top_i = torch.topk(scores, skip_first + k, dim=1)
    _, ids = _rank(top_s.numpy(), top_i.numpy())
    return ids[:, skip_first:]


def mine(
    store: VectorStore,
    queries: Array,
    k: int,
    *,
    mode: str,
    exclude: np.ndarray,
    ceiling: torch.Tensor | None = None,
    temperature: float = 0.05,
    skip_first: int = 0,
    generator: torch.Generator | None = None,
) -> Mined:
    """``k`` negatives per query from a store, filtered by ``ceiling`` (module docstring).

    Args:
        store: The target vectors.
        queries: ``(Q, d)`` query vectors.
        k: Negatives per query.
        mode: ``"softmax"`` or ``"topk"``.
        exclude: ``(Q, m)`` ids never to return per query, padded with ``-1``.
        ceiling: ``(Q,)`` highest score a kept target may have (None: no filter).
        temperature: ``τ`` of softmax mode.
        skip_first: Top kept ranks skipped in top-k mode.
        generator: Random generator of softmax mode, on the store's device (a fresh seeded one
            when None).

    Returns:
        The ids, and the filter's counts and fallbacks.

    Raises:
        ValueError: For an unknown mode, or a query left with too few targets even unfiltered.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    need = 1 if mode == "softmax" else skip_first + k
    _check_room(exclude, store.num_points, need)
    q = torch.as_tensor(queries).detach().to(store.device, torch.float32)
    keys = exclusion_keys(exclude, q.shape[0], store.num_points)
    gen = generator or torch.Generator(store.device).manual_seed(0)

    def draw(cap: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if mode == "topk":
            ids = store.topk(q, need, excluded=keys, ceiling=cap)[1]
            return ids[:, skip_first:], (ids < 0).any(1)
        return store.sample(
            q, k, temperature=temperature, excluded=keys, ceiling=cap, generator=gen
        )

    ids, short = draw(ceiling)
    fallback = short if ceiling is not None else torch.zeros_like(short)
    if ceiling is not None and bool(short.any()):  # too few kept: those rows go unfiltered
        cap = ceiling.to(torch.float64).cpu().masked_fill(short, math.inf)
        ids = draw(cap)[0]
    return Mined(ids.numpy(), fallback.numpy())


def mine_negatives(
    source: VectorStore | TreeIndex | Array,
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
    ceiling: torch.Tensor | None = None,
) -> np.ndarray:
    """``(Q, k)`` negative target ids for each query.

    Args:
        source: A vector store, a tree index, or ``(N, d)`` target vectors scored by brute
            force in one block (the oracle).
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
        ceiling: ``(Q,)`` positive-aware filter ceilings (see :func:`positive_ceiling`).

    Returns:
        ``(Q, k)`` int64 target ids.

    Raises:
        ValueError: For an unknown mode, or a query left with too few targets.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    if isinstance(source, TreeIndex):
        source = TreeStore(source, StoreParams(eta=eta, backend=backend))
    if not isinstance(source, (np.ndarray, torch.Tensor)):
        return mine(
            source, queries, k, mode=mode, exclude=exclude, ceiling=ceiling,
            temperature=temperature, skip_first=skip_first, generator=generator,
        ).ids  # fmt: skip
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if mode == "topk":
        return brute_force_topk(queries, source, k, skip_first, exclude, ceiling)
    return brute_force_softmax(queries, source, k, temperature, exclude, gen, ceiling)
