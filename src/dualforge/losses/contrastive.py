"""InfoNCE with in-batch negatives and optional hard negatives: pure functions of representations.

Document layout: ``d`` holds ``n = 1 + K`` rows per query, grouped by query:
rows ``i*n .. i*n+n-1`` belong to query ``i``; row ``i*n`` is its positive, the rest its hard
negatives. Every document in the batch is a negative for every other query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal, get_args

import torch
import torch.nn.functional as F

Similarity = Literal["dot", "cos"]
"""Score functions of :func:`similarity` (the one list of them)."""
SIMILARITIES: tuple[str, ...] = get_args(Similarity)


def docs_per_query(q: torch.Tensor, d: torch.Tensor) -> int:
    """``n = 1 + K``: rows of ``d`` per query.

    Raises:
        ValueError: If ``d`` does not hold the same whole number of rows for every query.
    """
    if q.shape[0] == 0 or d.shape[0] % q.shape[0] != 0:
        raise ValueError(
            f"documents ({d.shape[0]}) must be a positive multiple of queries ({q.shape[0]})"
        )
    return d.shape[0] // q.shape[0]


def similarity(q: torch.Tensor, d: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """``(Q, N)`` score matrix: ``"dot"`` inner product or ``"cos"`` cosine."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; use one of {SIMILARITIES}")
    if kind == "cos":
        q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    return q @ d.T


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    false_negatives: torch.Tensor | None = None,
    sim: str = "dot",
    query_rows: slice | None = None,
) -> torch.Tensor:
    """Contrastive loss of each query against all documents in the batch.

    Args:
        q: ``(B, D)`` query representations.
        d: ``(B * n, D)`` document representations, grouped by query (see module doc).
        temperature: Scores are divided by it; a tensor may be a learned parameter.
        symmetric: Add the document-to-query loss of each positive against all queries, and
            average the two directions.
        false_negatives: ``(B, B * n)`` bool, True where a document must not count as a negative
            for a query (e.g. another query's copy of its positive). The target is never masked.
        sim: ``"dot"`` or ``"cos"``.
        query_rows: Compute only these queries' terms (and, when symmetric, their positives'
            terms), still divided by the full ``B``: one process's share of the full-batch loss
            under several processes, so the shares sum to the full loss. Scores are
            ``(b, B * n)`` (and ``(B, b)``) for ``b`` rows, never ``(B, B * n)``.

    Returns:
        Scalar mean cross-entropy (or this share of it).
    """
    return contrastive_loss(
        partial(similarity, kind=sim), q, d, temperature=temperature, symmetric=symmetric,
        false_negatives=false_negatives, query_rows=query_rows,
    )  # fmt: skip


Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``score(a, b) -> (len(a), len(b))``: every row of ``a`` against every row of ``b``."""


def contrastive_loss(
    score: Score,
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    false_negatives: torch.Tensor | None = None,
    query_rows: slice | None = None,
) -> torch.Tensor:
    """InfoNCE over any score function (dot / cosine for :func:`info_nce`, MaxSim for late
    interaction); the arguments are :func:`info_nce`'s, the scores come from ``score``."""
    n = docs_per_query(q, d)
    rows = query_rows if query_rows is not None else slice(0, q.shape[0])
    mine = torch.arange(q.shape[0], device=q.device)[rows]  # (b,) query indices
    target = mine * n  # (b,) their positives' rows in d
    scores = score(q[rows], d) / temperature  # (b, B*n)
    if false_negatives is not None:
        scores = scores.masked_fill(_keep_target(false_negatives[rows], target), float("-inf"))
    loss = F.cross_entropy(scores, target, reduction="sum") / q.shape[0]
    if not symmetric:
        return loss
    d2q = score(q, d[target]).T / temperature  # (b, B): positive j against every query
    if false_negatives is not None:
        back_mask = _keep_target(false_negatives[:, target].T, mine)  # (b, B)
        d2q = d2q.masked_fill(back_mask, float("-inf"))
    back = F.cross_entropy(d2q, mine, reduction="sum") / q.shape[0]
    return (loss + back) / 2


def _keep_target(false_negatives: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mask with row ``i``'s target column ``target[i]`` cleared (a target is never masked)."""
    mask = false_negatives.clone().bool()
    mask[torch.arange(mask.shape[0], device=mask.device), target.to(mask.device)] = False
    return mask.to(target.device)


def false_negative_mask(
    doc_ids: Sequence[str | None],
    positives: Sequence[Sequence[str]],
) -> torch.Tensor:
    """Mask documents that are known positives of a query but sit elsewhere in the batch.

    Args:
        doc_ids: Id of every document row (``B * n``), in the grouped layout; None if unknown.
        positives: For each of the ``B`` queries, all ids known to be relevant to it (qrels).

    Returns:
        ``(B, B * n)`` bool mask for :func:`info_nce` ``false_negatives``; a query's own target
        row is left to :func:`info_nce`, which never masks it.
    """
    mask = torch.zeros(len(positives), len(doc_ids), dtype=torch.bool)
    for i, pos in enumerate(positives):
        wanted = set(pos)
        for j, doc in enumerate(doc_ids):
            if doc is not None and doc in wanted:
                mask[i, j] = True
    return mask
