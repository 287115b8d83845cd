"""Exact top-k inner-product search in the tree by best-first branch and bound, batched.

For a node with centre ``c`` and covering radius ``r``, Cauchy-Schwarz gives
``max_t q·t <= q·c + ||q|| r``. Each round expands, for every query, the ``per_round``
frontier nodes with the largest bound (children get the smaller of their own and their parent's
bound; leaves have their points scored exactly), then drops every node whose bound is below the
query's current k-th best score. When no node is left, the k best scored points are the exact
top-k: every unscored point lies in a dropped node, whose bound was below the k-th best score.
"""

from __future__ import annotations

import math

import torch

from dualforge.mining._flat import expand_ranges, merge, rank_in_segment, row_dots
from dualforge.mining.build import TreeArrays

Tensor = torch.Tensor
# Relative slack added to every covering radius at query time so that float32 rounding of the
# dot products can never make a true bound look smaller than a computed score.
RADIUS_SLACK = 1e-5


def bound_radii(tree: TreeArrays) -> Tensor:
    """Radii padded for float32 rounding: ``r + 1e-5 (||c|| + r)``.

    Args:
        tree: The tree.

    Returns:
        ``(M,)`` float32 radii to use in bounds.
    """
    norms: Tensor = torch.linalg.vector_norm(tree.centres, dim=1)  # (M,)
    return tree.radii + RADIUS_SLACK * (norms + tree.radii)


def node_bounds(
    tree: TreeArrays, radii: Tensor, queries: Tensor, qnorm: Tensor, qrow: Tensor, nodes: Tensor
) -> tuple[Tensor, Tensor]:
    """Upper and lower bounds of ``q·t`` over the points of each (query, node) pair.

    Args:
        tree: The tree.
        radii: ``(M,)`` radii to use (see ``bound_radii``).
        queries: ``(Q, d)`` float32 queries.
        qnorm: ``(Q,)`` their L2 norms.
        qrow: ``(P,)`` int64 query of each pair.
        nodes: ``(P,)`` int64 node of each pair.

    Returns:
        ``(upper, lower)``, both ``(P,)`` float32.
    """
    centre = row_dots(queries, qrow, tree.centres, nodes)  # (P,)
    spread = qnorm[qrow] * radii[nodes]  # (P,)
    return centre + spread, centre - spread


def _capped(bounds: tuple[Tensor, Tensor], cap: Tensor) -> Tensor:
    """Upper bounds of the points at most ``cap``: ``min(ub, cap)``, ``-inf`` when ``lb > cap``."""
    ub, lb = bounds
    return torch.minimum(ub, cap).masked_fill(lb > cap, -math.inf)


def top_per_segment(seg: Tensor, values: Tensor, n: int, r: int) -> Tensor:
    """Mask of the ``r`` largest values of each segment of a segment-sorted array.

    Args:
        seg: ``(E,)`` int64 segment ids, sorted ascending.
        values: ``(E,)`` float values.
        n: Number of segments.
        r: Entries to keep per segment.

    Returns:
        ``(E,)`` bool mask.
    """
    rank = rank_in_segment(seg, n)  # (E,)
    width = int(rank.max()) + 1
    pad = torch.full((n, width), -math.inf, dtype=values.dtype)
    pad[seg, rank] = values
    top = torch.topk(pad, min(r, width), dim=1).indices  # (n, r)
    chosen = torch.zeros((n, width), dtype=torch.bool)
    chosen.scatter_(1, top, True)
    return chosen[seg, rank]


def _merge_best(
    best: tuple[Tensor, Tensor], qrow: Tensor, scores: Tensor, pos: Tensor, n: int
) -> tuple[Tensor, Tensor]:
    """Fold newly scored points (segment-sorted by query) into the ``(Q, k)`` best lists."""
    rank = rank_in_segment(qrow, n)
    width = int(rank.max()) + 1
    new_s = torch.full((n, width), -math.inf)
    new_p = torch.full((n, width), -1, dtype=torch.int64)
    new_s[qrow, rank], new_p[qrow, rank] = scores, pos
    all_s = torch.cat([best[0], new_s], 1)  # (Q, k + width)
    top = torch.topk(all_s, best[0].shape[1], dim=1)
    return top.values, torch.gather(torch.cat([best[1], new_p], 1), 1, top.indices)


def tree_search(
    tree: TreeArrays, queries: Tensor, k: int, per_round: int, ceiling: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` positions of each query (see the module docstring), among the points
    scoring at most the query's ``ceiling`` when one is given (a node whose lower bound is above
    it is dropped, the others are bounded by ``min(ub, ceiling)``).

    Args:
        tree: The tree.
        queries: ``(Q, d)`` float32 queries.
        k: Results per query, ``1 <= k <= N``.
        per_round: Nodes expanded per query and round.
        ceiling: ``(Q,)`` highest kept score (None: no filter).

    Returns:
        ``(scores, positions)``: ``(Q, k)`` float32 and int64, unsorted; ``-inf`` / ``-1``
        where a query keeps fewer than ``k`` points.
    """
    n = queries.shape[0]
    cap = torch.full((n,), math.inf) if ceiling is None else ceiling.float()
    radii, qnorm = bound_radii(tree), torch.linalg.vector_norm(queries, dim=1)
    fq, fnode = torch.arange(n), torch.zeros(n, dtype=torch.int64)
    fub = _capped(node_bounds(tree, radii, queries, qnorm, fq, fnode), cap[fq])
    best = torch.full((n, k), -math.inf), torch.full((n, k), -1, dtype=torch.int64)
    while len(fq):
        keep = (fub >= best[0][:, -1][fq]) & (fub > -math.inf)  # nodes that cannot beat the
        # k-th best, or hold nothing below the ceiling, go
        fq, fnode, fub = fq[keep], fnode[keep], fub[keep]
        if not len(fq):
            break
        sel = top_per_segment(fq, fub, n, per_round)
        eq, en, eub = fq[sel], fnode[sel], fub[sel]
        leaf = tree.child_count[en] == 0
        if bool(leaf.any()):
            pos, seg = expand_ranges(tree.starts[en[leaf]], tree.counts[en[leaf]])
            pq = eq[leaf][seg]
            scores = row_dots(queries, pq, tree.vectors, pos)
            scores = scores.masked_fill(scores > cap[pq], -math.inf)  # filtered out
            best = _merge_best(best, pq, scores, pos, n)
        inner = ~leaf
        cn, seg = expand_ranges(tree.child_start[en[inner]], tree.child_count[en[inner]])
        cq = eq[inner][seg]
        own = _capped(node_bounds(tree, radii, queries, qnorm, cq, cn), cap[cq])
        cub = torch.minimum(eub[inner][seg], own)
        rest = ~sel
        fq, fnode, fub = merge([[fq[rest], fnode[rest], fub[rest]], [cq, cn, cub]], n)
    scores, positions = best
    return scores, positions.masked_fill(~torch.isfinite(scores), -1)
