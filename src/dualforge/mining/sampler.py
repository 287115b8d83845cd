"""Exact sampling from ``p(t | q) ∝ exp(q·t / τ)`` over all targets, by adaptive-frontier rejection.

For every query the sampler builds a proposal that dominates the target weights, then draws from
it and accepts by rejection; the accepted draws are i.i.d. from the exact softmax (conditioned on
not being an excluded id), whatever the tree's shape or looseness, which only affect the cost.

1. Frontier (``frontier.py``). Start from a cut of the tree, scored by one matmul; repeatedly
   expand the (query, node) pairs with the largest bound gap ``U - L`` (mass bounds
   ``count·exp(lb/τ) <= Σ exp(q·t/τ) <= count·exp(ub/τ)``), a leaf giving its points' exact
   weights, until the total gap is at most ``eta`` of the proposal mass ``M`` (exact points plus
   ``ΣU``); the acceptance rate is then at least ``1 - eta``.
2. Draw. Pick a component with probability mass / M: a scored point is accepted as is; for a node,
   pick one of its points uniformly, score it exactly and accept it with probability
   ``exp((q·t - ub)/τ)``, rejecting excluded ids. Repeat until each query has ``num_samples``
   (the accepted draws of a query are taken in proposal order, so they stay i.i.d.).

Masses are float64: log-space while refining, per-part linear CDFs when drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dualforge.mining._flat import rank_in_segment, row_dots, segment_bounds, segment_logsumexp
from dualforge.mining.build import TreeArrays
from dualforge.mining.frontier import Context, Dense, Flat, Points, SampleStats, refine
from dualforge.mining.search import bound_radii

Tensor = torch.Tensor
Exclude = np.ndarray | torch.Tensor | Sequence[Sequence[int]]
MAX_DRAW_ROUNDS = 1000
MAX_PROPOSALS_PER_ROUND = 1 << 22
# The refinement starts from a cut of about CUT_FACTOR * sqrt(N) nodes (at most CUT_MAX).
CUT_FACTOR = 4.0
CUT_MAX = 1 << 15
__all__ = ["Exclude", "SampleStats", "cut_size", "exclusion_keys", "sample_softmax"]


def exclusion_keys(exclude: Exclude | None, n_queries: int, n_points: int) -> Tensor:
    """Sorted unique keys ``q * N + id`` of the (query, excluded id) pairs.

    Args:
        exclude: ``None``; a ``(Q, m)`` integer array padded with ``-1``; or one sequence of ids
            per query.
        n_queries: ``Q``.
        n_points: ``N``.

    Returns:
        ``(X,)`` int64 sorted keys.

    Raises:
        ValueError: For a wrong number of rows, an id outside ``-1..N-1``, or a query that
            excludes every target.
    """
    if exclude is None:
        return torch.zeros(0, dtype=torch.int64)
    if isinstance(exclude, (np.ndarray, torch.Tensor)):
        arr = torch.as_tensor(np.asarray(exclude), dtype=torch.int64)
        if arr.ndim != 2:
            raise ValueError(f"exclude must be a (Q, m) array, got shape {tuple(arr.shape)}")
        rows = [arr[i] for i in range(arr.shape[0])]
    else:
        rows = [torch.as_tensor(list(r), dtype=torch.int64) for r in exclude]
    if len(rows) != n_queries:
        raise ValueError(f"exclude has {len(rows)} rows for {n_queries} queries")
    qrow = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rows)] + [torch.zeros(0)])
    ids = torch.cat([*rows, torch.zeros(0, dtype=torch.int64)])
    if len(ids) and (int(ids.min()) < -1 or int(ids.max()) >= n_points):
        raise ValueError(f"excluded ids must be in 0..{n_points - 1} (or -1 for padding)")
    keys: Tensor = torch.unique(qrow.long()[ids >= 0] * n_points + ids[ids >= 0])  # sorted
    per_query = torch.bincount(keys // n_points, minlength=n_queries)
    if len(keys) and int(per_query.max()) >= n_points:
        raise ValueError(f"query {int(per_query.argmax())} excludes all {n_points} targets")
    return keys


@dataclass
class _Proposal:
    """Per-query inverse CDFs of the proposal.

    Its parts are the scored points of each round and the open flat entries of each chunk (each
    query-sorted, concatenated: segment ``part * Q + q``), and the open cut nodes (a ``(Q, C)``
    log-cumulative mass matrix). A draw picks a part by its mass, then an entry inside it.
    """

    is_node: Tensor  # (F,) bool
    ref: Tensor  # (F,) position (point) or node (node)
    val: Tensor  # (F,) float32 exact score (point) or per-point upper bound (node)
    cums: Tensor  # (F,) float64 running sum of within-segment probabilities
    first: Tensor  # (S,) first entry of each segment
    count: Tensor  # (S,) entries of each segment
    part_cdf: Tensor  # (Q, P + 1) float64 cumulative part probabilities, dense part last
    dense_cum: Tensor  # (Q, C) float64 cumulative mass of the open cut nodes, row max = 1
    dense: Dense
    ceiling: Tensor  # (Q,) highest kept score
    empty: Tensor  # (Q,) bool: no mass at all (every target excluded or above the ceiling)

    @staticmethod
    def build(ctx: Context, dense: Dense, flat: Flat, points: list[Points]) -> _Proposal:
        n = ctx.n
        parts = [(p.q, False, p.pos, p.score, p.score.double() / ctx.tau) for p in points]
        parts += [
            (f.q, True, f.node, torch.minimum(f.ub, ctx.ceiling[f.q]), log_u)
            for f, log_u in flat.parts()
        ]
        seg = torch.cat(
            [q + j * n for j, (q, *_) in enumerate(parts)] + [torch.zeros(0, dtype=torch.int64)]
        )
        is_node = torch.cat(
            [torch.full((len(p[0]),), p[1]) for p in parts] + [torch.zeros(0, dtype=torch.bool)]
        )
        ref = torch.cat([p[2] for p in parts] + [torch.zeros(0, dtype=torch.int64)])
        val = torch.cat([p[3] for p in parts] + [torch.zeros(0)])
        logm = torch.cat([p[4] for p in parts] + [torch.zeros(0, dtype=torch.float64)])
        n_seg = len(parts) * n
        first, count = segment_bounds(seg, n_seg)
        log_seg = segment_logsumexp(logm, seg, n_seg)  # (S,)
        cums = torch.cumsum(torch.exp(logm - log_seg[seg]), 0)  # (F,) segment s spans ~(s, s+1]
        top = dense.log_u.max(1, keepdim=True).values  # (Q, 1)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        dense_cum = torch.cumsum(torch.exp(dense.log_u - top), 1)  # (Q, C) linear, float64
        log_dense = torch.log(dense_cum[:, -1:]) + top  # (Q, 1)
        mass = torch.cat([log_seg.view(len(parts), n).T, log_dense], 1)  # (Q, P + 1)
        empty = ~torch.isfinite(mass.max(1).values)  # (Q,) nothing to draw (all filtered out)
        mass[empty] = 0.0  # any valid table: such a row is never drawn from
        part_cdf = torch.cumsum(torch.softmax(mass, 1), 1)
        part_cdf = part_cdf / part_cdf[:, -1:]  # ends at exactly 1: a zero-mass part is never hit
        return _Proposal(
            is_node, ref, val, cums, first, count, part_cdf, dense_cum, dense, ctx.ceiling, empty
        )

    def pick(self, qrow: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One component per query row: ``(is_node, ref, val)``."""
        n, n_parts = len(qrow), self.part_cdf.shape[1] - 1
        u_part = torch.rand(n, 1, dtype=torch.float64, generator=gen)
        part = (self.part_cdf[qrow] <= u_part).sum(1).clamp(max=n_parts)  # (n,)
        u = torch.rand(n, dtype=torch.float64, generator=gen)
        is_node = torch.ones(n, dtype=torch.bool)
        ref, val = torch.empty(n, dtype=torch.int64), torch.empty(n)
        in_dense = part == n_parts
        dq = qrow[in_dense]
        if len(dq):
            rank = rank_in_segment(dq, self.part_cdf.shape[0])
            target = torch.full(
                (self.part_cdf.shape[0], int(rank.max()) + 1), math.inf, dtype=torch.float64
            )
            target[dq, rank] = self.dense_cum[dq, -1] * u[in_dense]
            col = torch.searchsorted(self.dense_cum, target, right=True)[dq, rank]
            col = col.clamp(max=self.dense_cum.shape[1] - 1)
            ref[in_dense] = self.dense.nodes[col]
            val[in_dense] = torch.minimum(self.dense.ub[dq, col], self.ceiling[dq])
        flat = ~in_dense
        if bool(flat.any()):
            s = part[flat] * self.part_cdf.shape[0] + qrow[flat]  # segments
            lo = torch.where(self.first[s] > 0, self.cums[(self.first[s] - 1).clamp(min=0)], 0.0)
            hi = self.cums[self.first[s] + self.count[s] - 1]
            at = torch.searchsorted(self.cums, lo + u[flat] * (hi - lo), right=True)
            at = torch.minimum(torch.maximum(at, self.first[s]), self.first[s] + self.count[s] - 1)
            is_node[flat], ref[flat], val[flat] = self.is_node[at], self.ref[at], self.val[at]
        return is_node, ref, val


def _propose(
    ctx: Context, prop: _Proposal, qrow: Tensor, gen: torch.Generator, stats: SampleStats
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw and test one proposal per query row; returns ``(scores, positions, accepted)``."""
    tree = ctx.tree
    is_node, ref, val = prop.pick(qrow, gen)
    pos, score = ref.clone(), val.clone()
    ok = torch.ones(len(qrow), dtype=torch.bool)
    at = torch.nonzero(is_node).view(-1)
    if len(at):
        node = ref[at]
        size = tree.counts[node]
        off = (torch.rand(len(at), dtype=torch.float64, generator=gen) * size).long()
        p = tree.starts[node] + torch.minimum(off, size - 1)
        s = row_dots(ctx.queries, qrow[at], tree.vectors, p)
        log_u = torch.log(torch.rand(len(at), dtype=torch.float64, generator=gen))
        keep = (log_u < (s.double() - val[at].double()) / ctx.tau) & (s <= ctx.ceiling[qrow[at]])
        pos[at], score[at], ok[at] = p, s, keep & ~ctx.is_excluded(qrow[at], p)
        stats.node_proposals += len(at)
    stats.proposals += len(qrow)
    return score, pos, ok


def _draw(
    ctx: Context, prop: _Proposal, num: int, gen: torch.Generator, stats: SampleStats
) -> tuple[Tensor, Tensor, Tensor]:
    """``num`` accepted draws per query: ``(scores, positions, empty)``, ``(Q, num)`` and
    ``(Q,)``; ``empty`` rows (no kept target found) hold no draws."""
    n = ctx.n
    out_s, out_p = torch.zeros((n, num)), torch.zeros((n, num), dtype=torch.int64)
    got, tried, hits = (torch.zeros(n, dtype=torch.int64) for _ in range(3))
    got[prop.empty] = num  # nothing to draw: the caller redraws these rows unfiltered
    for _ in range(MAX_DRAW_ROUNDS):
        need = num - got  # (Q,)
        if int(need.sum()) == 0:
            return out_s, out_p, prop.empty
        rate = (hits + 1).double() / (tried + 1).double()
        draws = torch.where(need > 0, torch.ceil(1.2 * need / rate).long() + 1, 0)
        draws = draws.clamp(max=max(1, MAX_PROPOSALS_PER_ROUND // n))
        qrow = torch.repeat_interleave(torch.arange(n), draws)  # (P,) segment-sorted
        score, pos, ok = _propose(ctx, prop, qrow, gen, stats)
        tried += draws
        aq = qrow[ok]
        hits += torch.bincount(aq, minlength=n)
        rank = rank_in_segment(aq, n)
        use = rank < need[aq]
        slot = (got[aq] + rank)[use]
        out_s[aq[use], slot], out_p[aq[use], slot] = score[ok][use], pos[ok][use]
        got += torch.bincount(aq[use], minlength=n)
        stats.accepted += len(aq)
    short = got < num
    if bool(torch.isfinite(ctx.ceiling[short]).all()):  # filtered rows that found nothing kept
        return out_s, out_p, prop.empty | short
    raise RuntimeError(
        f"sampler accepted too few proposals in {MAX_DRAW_ROUNDS} rounds (rate "
        f"{stats.acceptance_rate:.2e}); raise max_rounds / max_points or lower eta"
    )


def cut_size(n_points: int) -> int:
    """How many cut nodes the refinement starts from: ``4 sqrt(N)``, at most 32768."""
    return min(CUT_MAX, max(1, int(CUT_FACTOR * math.sqrt(n_points))))


def sample_softmax(
    tree: TreeArrays,
    queries: Tensor,
    num_samples: int,
    *,
    temperature: float,
    excluded: Tensor,
    eta: float,
    max_rounds: int,
    max_points: int | None,
    generator: torch.Generator,
    cut: Tensor,
    ceiling: Tensor | None = None,
) -> tuple[Tensor, Tensor, SampleStats, Tensor]:
    """``num_samples`` i.i.d. draws per query from the exact softmax (module docstring),
    restricted to targets scoring at most ``ceiling`` when one is given.

    Args:
        tree: The tree.
        queries: ``(Q, d)`` float32 queries.
        num_samples: Draws per query.
        temperature: ``τ > 0``.
        excluded: Sorted keys ``q * N + id`` of excluded (query, id) pairs.
        eta: Target bound gap as a fraction of the proposal mass (0 < eta < 1).
        max_rounds: Most expansion rounds.
        max_points: Most leaf points scored per query while expanding (None: no cap).
        generator: Random generator.
        cut: ``(C,)`` nodes the refinement starts from (see ``cut_size`` and ``cut_nodes``).
        ceiling: ``(Q,)`` highest score a drawn target may have (None: no filter).

    Returns:
        ``(scores, positions, stats, empty)``: ``(Q, num_samples)`` float32 exact scores ``q·t``
        and int64 positions of the draws, the work done, and ``(Q,)`` bool: queries that found
        no target below their ceiling (their rows are not draws; none without a ceiling).
    """
    n = queries.shape[0]
    cap = torch.full((n,), math.inf) if ceiling is None else ceiling.float().cpu()
    ctx = Context(
        tree, queries, torch.linalg.vector_norm(queries, dim=1), bound_radii(tree),
        torch.log(tree.counts.double()), float(temperature), excluded, cap,
    )  # fmt: skip
    stats = SampleStats(queries=ctx.n, samples=ctx.n * num_samples)
    dense, flat, points = refine(ctx, cut, eta, max_rounds, max_points, stats)
    prop = _Proposal.build(ctx, dense, flat, points)
    scores, pos, empty = _draw(ctx, prop, num_samples, generator, stats)
    return scores, pos, stats, empty
