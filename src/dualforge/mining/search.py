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


def tree_search(tree: TreeArrays, queries: Tensor, k: int, per_round: int) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` positions of each query (see the module docstring).

    Args:
        tree: The tree.
        queries: ``(Q, d)`` float32 queries.
        k: Results per query, ``1 <= k <= N``.
        per_round: Nodes expanded per query and round.

    Returns:
        ``(scores, positions)``: ``(Q, k)`` float32 and int64, unsorted.
    """
    n = queries.shape[0]
    radii, qnorm = bound_radii(tree), torch.linalg.vector_norm(queries, dim=1)
    fq, fnode = torch.arange(n), torch.zeros(n, dtype=torch.int64)
    fub = node_bounds(tree, radii, queries, qnorm, fq, fnode)[0]
    best = torch.full((n, k), -math.inf), torch.full((n, k), -1, dtype=torch.int64)
    while len(fq):
        keep = fub >= best[0][:, -1][fq]  # a node that cannot beat the k-th best goes
        fq, fnode, fub = fq[keep], fnode[keep], fub[keep]
        if not len(fq):
            break
        sel = top_per_segment(fq, fub, n, per_round)
        eq, en, eub = fq[sel], fnode[sel], fub[sel]
        leaf = tree.child_count[en] == 0
        if bool(leaf.any()):
            pos, seg = expand_ranges(tree.starts[en[leaf]], tree.counts[en[leaf]])
            pq = eq[leaf][seg]
            best = _merge_best(best, pq, row_dots(queries, pq, tree.vectors, pos), pos, n)
        inner = ~leaf
        cn, seg = expand_ranges(tree.child_start[en[inner]], tree.child_count[en[inner]])
        cq = eq[inner][seg]
        cub = torch.minimum(eub[inner][seg], node_bounds(tree, radii, queries, qnorm, cq, cn)[0])
        rest = ~sel
        fq, fnode, fub = merge([[fq[rest], fnode[rest], fub[rest]], [cq, cn, cub]], n)
    return best


def tree_above(tree: TreeArrays, queries: Tensor, ceiling: Tensor) -> tuple[Tensor, Tensor]:
    """Every (query, point) pair scoring strictly above the query's ceiling, by branch and bound.

    A node whose upper bound is at most the ceiling holds no such point and is dropped; the
    other leaves are scored exactly (points are tested on their own scores, never on a bound, so
    that the result agrees with brute force up to the rounding of one dot product). The cost
    grows with the number of points near or above the ceiling, not with N.

    Args:
        tree: The tree.
        queries: ``(Q, d)`` float32 queries.
        ceiling: ``(Q,)`` float32 scores; ``+inf`` selects nothing for that query.

    Returns:
        ``(qrow, positions)``: ``(P,)`` int64 each, sorted by query.
    """
    n = queries.shape[0]
    radii, qnorm = bound_radii(tree), torch.linalg.vector_norm(queries, dim=1)
    fq, fnode = torch.arange(n), torch.zeros(n, dtype=torch.int64)
    found_q, found_p = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)]
    while len(fq):
        ub, _ = node_bounds(tree, radii, queries, qnorm, fq, fnode)
        live = ub > ceiling[fq]
        leaf = live & (tree.child_count[fnode] == 0)
        pos, seg = expand_ranges(tree.starts[fnode[leaf]], tree.counts[fnode[leaf]])
        pq = fq[leaf][seg]
        hit = row_dots(queries, pq, tree.vectors, pos) > ceiling[pq]
        found_q.append(pq[hit])
        found_p.append(pos[hit])
        inner = live & ~leaf
        fnode, seg = expand_ranges(tree.child_start[fnode[inner]], tree.child_count[fnode[inner]])
        fq = fq[inner][seg]
    qrow, positions = torch.cat(found_q), torch.cat(found_p)
    order = torch.argsort(qrow, stable=True)
    return qrow[order], positions[order]
