"""The sampler's adaptive frontier: bound masses per (query, node), refined until tight enough.

A frontier node ``n`` (``count`` points, per-point score bounds ``lb <= q·t <= ub``, each the
tighter of its own ball bound and its parent's) has mass bounds
``L = count·exp(lb/τ) <= Σ_t exp(q·t/τ) <= U = count·exp(ub/τ)``; an expanded leaf gives its
points' exact weights (excluded ids, and points above the query's ceiling, are dropped; a node
above the ceiling has no mass, one straddling it ``U = count·exp(ceiling/τ)`` and ``L = 0``). With ``E`` the exact mass and ``M = E + ΣU``
the proposal mass, the rejection sampler's acceptance rate is at least ``(E + ΣL) / M``. While
``Σ(U - L) > eta·M``, every node with ``U - L > eta·M / (2·frontier size)`` is expanded (all of
them in one vectorised round).

Two tiers keep the rounds cheap: the frontier starts at a cut of the tree (a partition of the
points into at most ``size`` nodes), scored for all queries by one matmul and held as dense
``(Q, C)`` matrices; the descendants of expanded cut nodes are held as flat, query-sorted chunks
(one per round). Closed entries are set to ``-inf`` rather than removed, and per-query totals are
kept up to date by log-space subtraction (summed again exactly for a query whose total fell by
more than ``1e6`` since its last exact sum), so that a round costs one comparison per open entry
plus the work on the entries it expands. The totals only steer the refinement; the draws use
the entries' own masses.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dualforge.mining._flat import (
    expand_ranges,
    log1mexp,
    membership,
    merge,
    row_dots,
    segment_logsumexp,
)
from dualforge.mining.build import TreeArrays
from dualforge.mining.search import node_bounds

Tensor = torch.Tensor


@dataclass
class SampleStats:
    """Work done by one ``sample`` call (totals over its queries).

    Both backends fill every field; two differ in meaning with ``backend="numba"``, which refines
    each query on its own: ``rounds`` is the largest number of expansions of one query, and
    ``accepted`` equals ``samples`` (a query stops drawing once it has its samples).

    Attributes:
        queries: Queries sampled for.
        samples: Samples returned (queries x num_samples).
        rounds: Frontier refinement rounds.
        cut_nodes: Nodes of the starting cut (scored for every query by one matmul).
        nodes_expanded: Internal (query, node) expansions.
        leaves_expanded: (query, leaf) expansions.
        centres_scored: Node centres scored (the cut for each query, children of expansions).
        points_scored: Leaf points scored exactly while expanding.
        proposals: Draws from the proposal.
        node_proposals: Draws that landed in an unexpanded node (one point scored each).
        accepted: Accepted draws (>= samples; extra ones beyond a query's need are dropped).
    """

    queries: int = 0
    samples: int = 0
    rounds: int = 0
    cut_nodes: int = 0
    nodes_expanded: int = 0
    leaves_expanded: int = 0
    centres_scored: int = 0
    points_scored: int = 0
    proposals: int = 0
    node_proposals: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draws."""
        return self.accepted / max(1, self.proposals)

    @property
    def scored_per_sample(self) -> float:
        """Vectors scored (centres, leaf points and tested points) per returned sample."""
        work = self.centres_scored + self.points_scored + self.node_proposals
        return work / max(1, self.samples)


@dataclass(frozen=True)
class Context:
    """What every step needs: the tree, the queries and the sampling parameters."""

    tree: TreeArrays
    queries: Tensor  # (Q, d)
    qnorm: Tensor  # (Q,)
    radii: Tensor  # (M,) radii padded for rounding
    log_count: Tensor  # (M,) float64
    tau: float
    excluded: Tensor  # (X,) sorted keys q * N + id
    ceiling: Tensor  # (Q,) float32 highest kept score (+inf: no filter)

    @property
    def n(self) -> int:
        return int(self.queries.shape[0])

    def is_excluded(self, qrow: Tensor, pos: Tensor) -> Tensor:
        keys = qrow * self.tree.ids.shape[0] + self.tree.ids[pos]
        return membership(keys, self.excluded)

    def log_masses(
        self, node: Tensor, ub: Tensor, lb: Tensor, cap: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(log U, log (U - L))``, float64, of the points scoring at most ``cap`` (the
        positive-aware filter), for any shape of node / bound / cap tensors: an entry above the
        cap holds nothing; one straddling it has bounds ``(cap, -inf)``."""
        top = torch.minimum(ub, cap)
        low = torch.where(ub > cap, -math.inf, lb)
        log_u = self.log_count[node] + top.double() / self.tau
        log_gap = log_u + log1mexp((low - top) / self.tau).double()
        gone = lb > cap
        return log_u.masked_fill(gone, -math.inf), log_gap.masked_fill(gone, -math.inf)


@dataclass
class Front:
    """Flat frontier entries, segment-sorted by query; bounds on the score scale."""

    q: Tensor
    node: Tensor
    ub: Tensor
    lb: Tensor

    def take(self, mask: Tensor) -> Front:
        """The entries where ``mask`` is True (order kept)."""
        at = torch.nonzero(mask).view(-1)
        cols = (self.q, self.node, self.ub, self.lb)
        return Front(*(c.index_select(0, at) for c in cols))


@dataclass
class Points:
    """Exactly scored, non-excluded points, segment-sorted by query."""

    q: Tensor
    pos: Tensor
    score: Tensor


# A total is summed again once it fell by this much (log-space) since its last exact sum.
LOSS = 6.0 * math.log(10.0)


def _subtract(
    total: Tensor, gone: Tensor, exact: Tensor, recompute: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """``log(exp(total) - exp(gone))`` per query; queries that lost too much are summed again.

    ``recompute(rows)`` must return the exact totals of the masked rows.
    """
    out = torch.where(torch.isfinite(gone), total + log1mexp((gone - total).clamp(max=0.0)), total)
    again = torch.isnan(out) | (out < exact - LOSS)
    if bool(again.any()):
        fresh = recompute(again)
        out[again], exact = fresh, exact.clone()
        exact[again] = fresh
    return out, exact


class Dense:
    """The cut tier: every query against the same ``C`` cut nodes, as ``(Q, C)`` matrices.

    Args:
        ctx: Tree, queries and temperature.
        nodes: ``(C,)`` cut nodes.
        stats: Counters, updated.
    """

    def __init__(self, ctx: Context, nodes: Tensor, stats: SampleStats) -> None:
        centre = ctx.queries @ ctx.tree.centres[nodes].T  # (Q, C)
        spread = ctx.qnorm.unsqueeze(1) * ctx.radii[nodes].unsqueeze(0)  # (Q, C)
        self.nodes, self.ub = nodes, centre + spread
        self.log_u, self.log_gap = ctx.log_masses(
            nodes.unsqueeze(0), self.ub, centre - spread, ctx.ceiling.unsqueeze(1)
        )
        self.total_u, self.total_gap = self.log_u.logsumexp(1), self.log_gap.logsumexp(1)
        self.exact_u, self.exact_gap = self.total_u.clone(), self.total_gap.clone()
        self.open = torch.full((ctx.n,), len(nodes), dtype=torch.int64)
        stats.cut_nodes = len(nodes)
        stats.centres_scored += ctx.n * len(nodes)

    def remove(self, cut: Tensor) -> Front:
        """Close the entries whose gap exceeds their query's ``cut``; return them, query-sorted."""
        gq, gc = torch.nonzero(self.log_gap > cut.unsqueeze(1), as_tuple=True)
        n = self.log_u.shape[0]
        gone_u = segment_logsumexp(self.log_u[gq, gc], gq, n)
        gone_gap = segment_logsumexp(self.log_gap[gq, gc], gq, n)
        self.log_u[gq, gc], self.log_gap[gq, gc] = -math.inf, -math.inf
        self.open -= torch.bincount(gq, minlength=n)
        self.total_u, self.exact_u = _subtract(
            self.total_u, gone_u, self.exact_u, lambda rows: self.log_u[rows].logsumexp(1)
        )
        self.total_gap, self.exact_gap = _subtract(
            self.total_gap, gone_gap, self.exact_gap, lambda rows: self.log_gap[rows].logsumexp(1)
        )
        return Front(gq, self.nodes[gc], self.ub[gq, gc], torch.full((len(gq),), -math.inf))


@dataclass
class _Chunk:
    front: Front
    log_u: Tensor  # float64, -inf once closed
    log_gap: Tensor


class Flat:
    """The flat tier: query-sorted chunks of (query, node) entries, one chunk per round.

    Args:
        n: Number of queries.
    """

    def __init__(self, n: int) -> None:
        self.n, self.chunks = n, list[_Chunk]()
        self.total_u = torch.full((n,), -math.inf, dtype=torch.float64)
        self.total_gap = self.total_u.clone()
        self.exact_u, self.exact_gap = self.total_u.clone(), self.total_u.clone()
        self.open = torch.zeros(n, dtype=torch.int64)

    def add(self, ctx: Context, front: Front) -> None:
        """Append query-sorted entries."""
        log_u, log_gap = ctx.log_masses(front.node, front.ub, front.lb, ctx.ceiling[front.q])
        self.chunks.append(_Chunk(front, log_u, log_gap))
        self.total_u = torch.logaddexp(self.total_u, segment_logsumexp(log_u, front.q, self.n))
        self.total_gap = torch.logaddexp(
            self.total_gap, segment_logsumexp(log_gap, front.q, self.n)
        )
        self.exact_u = torch.maximum(self.exact_u, self.total_u)
        self.exact_gap = torch.maximum(self.exact_gap, self.total_gap)
        self.open += torch.bincount(front.q, minlength=self.n)

    def _sum(self, rows: Tensor, gap: bool) -> Tensor:
        qs = torch.cat([c.front.q for c in self.chunks])
        vals = torch.cat([c.log_gap if gap else c.log_u for c in self.chunks])
        keep = rows[qs]
        return segment_logsumexp(vals[keep], qs[keep], self.n)[rows]

    def remove(self, cut: Tensor) -> Front:
        """Close the entries whose gap exceeds their query's ``cut``; return them, query-sorted."""
        parts, gone = [], []
        for c in self.chunks:
            hit = torch.nonzero(c.log_gap > cut[c.front.q]).view(-1)
            if len(hit):
                f = c.front
                parts.append([f.q[hit], f.node[hit], f.ub[hit], f.lb[hit]])
                gone.append((f.q[hit], c.log_u[hit], c.log_gap[hit]))
                c.log_u[hit], c.log_gap[hit] = -math.inf, -math.inf
        if not parts:
            return Front(
                *(torch.zeros(0, dtype=t) for t in (torch.int64,) * 2 + (torch.float32,) * 2)
            )
        gq = torch.cat([g[0] for g in gone])
        self.open -= torch.bincount(gq, minlength=self.n)
        gone_u = segment_logsumexp(torch.cat([g[1] for g in gone]), gq, self.n)
        gone_gap = segment_logsumexp(torch.cat([g[2] for g in gone]), gq, self.n)
        self.total_u, self.exact_u = _subtract(
            self.total_u, gone_u, self.exact_u, lambda rows: self._sum(rows, False)
        )
        self.total_gap, self.exact_gap = _subtract(
            self.total_gap, gone_gap, self.exact_gap, lambda rows: self._sum(rows, True)
        )
        return Front(*merge(parts, self.n))

    def parts(self) -> list[tuple[Front, Tensor]]:
        """The open entries of each chunk (query-sorted) and their log masses."""
        out = []
        for c in self.chunks:
            ok = torch.isfinite(c.log_u)
            out.append((c.front.take(ok), c.log_u[ok]))
        return out


def cut_nodes(tree: TreeArrays, size: int) -> Tensor:
    """A partition of the points into at most ``size`` tight nodes, widest split first.

    Starting from the root, the node with the largest radius is replaced by its children while
    that keeps the cut within ``size`` nodes (a node whose children do not fit stays). This
    descends through the wide nodes that mix clusters and stops at cluster-sized ones. A loop
    over at most ``size`` nodes; ``TreeIndex`` caches the result until the next update.

    Args:
        tree: The tree.
        size: Most cut nodes wanted (>= 1).

    Returns:
        ``(C,)`` int64 node indices, ascending.
    """
    radii, kids, first = tree.radii.tolist(), tree.child_count.tolist(), tree.child_start.tolist()
    heap, kept, room = [(-radii[0], 0)], [], size - 1
    while heap:
        _, node = heapq.heappop(heap)
        if kids[node] == 0 or kids[node] - 1 > room:
            kept.append(node)
            continue
        room -= kids[node] - 1
        for child in range(first[node], first[node] + kids[node]):
            heapq.heappush(heap, (-radii[child], child))
    return torch.sort(torch.tensor(kept, dtype=torch.int64)).values


def _score_leaves(ctx: Context, q: Tensor, nodes: Tensor, stats: SampleStats) -> Points:
    """Score every point of the (query, leaf) pairs exactly; drop excluded ids and points above
    their query's ceiling."""
    tree = ctx.tree
    pos, seg = expand_ranges(tree.starts[nodes], tree.counts[nodes])
    pq = q[seg]
    stats.leaves_expanded += len(nodes)
    stats.points_scored += len(pos)
    score = row_dots(ctx.queries, pq, tree.vectors, pos)
    kept = score <= ctx.ceiling[pq]
    if len(ctx.excluded):
        kept &= ~ctx.is_excluded(pq, pos)
    keep = torch.nonzero(kept).view(-1)
    return Points(pq[keep], pos[keep], score[keep])


def _children(ctx: Context, parents: Front, stats: SampleStats) -> Front:
    """The children of the (query, node) pairs, with bounds tightened by their parents'."""
    tree = ctx.tree
    cn, seg = expand_ranges(tree.child_start[parents.node], tree.child_count[parents.node])
    cq = parents.q[seg]
    stats.nodes_expanded += len(parents.q)
    stats.centres_scored += len(cn)
    ub, lb = node_bounds(tree, ctx.radii, ctx.queries, ctx.qnorm, cq, cn)
    return Front(cq, cn, torch.minimum(ub, parents.ub[seg]), torch.maximum(lb, parents.lb[seg]))


def refine(
    ctx: Context,
    cut: Tensor,
    eta: float,
    max_rounds: int,
    max_points: int | None,
    stats: SampleStats,
) -> tuple[Dense, Flat, list[Points]]:
    """Refine the frontier until its bound gap is at most ``eta`` of the proposal mass.

    Args:
        ctx: Tree, queries and temperature.
        cut: ``(C,)`` cut nodes to start from (see ``cut_nodes``).
        eta: Target gap fraction.
        max_rounds: Most rounds.
        max_points: Most leaf points scored per query (None: no cap).
        stats: Counters, updated.

    Returns:
        The two frontier tiers (expanded entries closed) and the scored points.
    """
    n = ctx.n
    dense, flat, points = Dense(ctx, cut, stats), Flat(n), []
    log_exact = torch.full((n,), -math.inf, dtype=torch.float64)
    scored = torch.zeros(n, dtype=torch.int64)
    for _ in range(max_rounds):
        log_total = torch.logaddexp(log_exact, torch.logaddexp(dense.total_u, flat.total_u))
        active = torch.logaddexp(dense.total_gap, flat.total_gap) > math.log(eta) + log_total
        if max_points is not None:
            active &= scored < max_points
        if not bool(active.any()):
            break
        stats.rounds += 1
        size_q = (dense.open + flat.open).clamp(min=1)
        bar = torch.where(active, math.log(eta) + log_total - torch.log(2.0 * size_q), math.inf)
        a, b = dense.remove(bar), flat.remove(bar)
        grow = Front(*merge([[a.q, a.node, a.ub, a.lb], [b.q, b.node, b.ub, b.lb]], n))
        leaf = ctx.tree.child_count[grow.node] == 0
        new = _score_leaves(ctx, grow.q[leaf], grow.node[leaf], stats)
        flat.add(ctx, _children(ctx, grow.take(~leaf), stats))
        scored += torch.bincount(new.q, minlength=n)
        log_exact = torch.logaddexp(
            log_exact, segment_logsumexp(new.score.double() / ctx.tau, new.q, n)
        )
        points.append(new)
    return dense, flat, points
