"""Numba kernels of the compiled sampler (``_compiled.py`` imports this module lazily).

One query at a time, in a tight loop (queries in parallel with ``prange``):

1. Refine. The frontier starts as the cut nodes (their centre scores come from one BLAS matmul
   outside). A max-heap orders the open (query, node) entries by their bound gap ``U - L`` per
   unit of expansion cost (a leaf's points, ``CENTRE_COST`` per child); the top entry is
   expanded, a leaf having its points scored exactly (excluded ids dropped; their weights go to
   ``E``), an internal node being replaced by its children, whose bounds are the tighter of their
   own ball bounds and their parent's. Refinement stops when the total gap is at most ``eta``
   times the proposal mass ``M = E + ΣU`` (acceptance rate >= 1 - eta), or earlier, when the
   top entry's expansion is not expected to pay for itself: it would save about
   ``num · PROPOSAL_COST · gap / Z`` in rejected proposals (``Z`` estimated as
   ``E + Σ sqrt(U L)``), less than it costs. With few samples per query, scoring a whole leaf
   is often dearer than a few rejections.
2. Draw. A component is picked with probability mass / M by binary search in a cumulative table:
   a scored point is accepted as is; for a node, a uniform point of it is scored and accepted
   with probability ``exp((q·t - ub)/τ) <= 1`` unless its id is excluded or it scores above the
   query's ceiling ``cap`` (the positive-aware filter: every bound is capped by it, a node
   straddling it gets ``L = 0``, one above it no mass, so the draws are exact draws from the
   softmax over the kept targets; a query with no mass left is flagged ``EMPTY``). So every target ``t``
   is accepted with probability proportional to ``exp(q·t/τ)`` and the accepted draws are i.i.d.
   from the exact softmax, whatever the frontier; the frontier only decides the cost.

Masses are float64, linear relative to ``exp(ref)`` (``ref``: the largest log mass of the cut,
so nothing overflows); the running totals, which only steer the refinement, are summed again
exactly once they fall by more than ``1e6``, and everything is re-based to a new ``ref`` should
the proposal mass fall below ``1e-100`` of ``exp(ref)`` (very low temperatures). Random numbers:
splitmix64, one stream per query row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])
# Counters per query, in this order (see ``_compiled.STAT_FIELDS``).
N_STATS = 10
EXPANSIONS, NODES, LEAVES, CENTRES, POINTS, PROPOSALS, NODE_PROPOSALS, ACCEPTED, FAILED, EMPTY = (
    range(10)
)
# Running totals are summed again once they fell by this factor since their last exact sum.
RESUM = 1e-6
# Masses are re-based once the proposal mass falls below this (linear, relative to exp(ref)).
TINY = 1e-100
# Columns of the entry matrix (open entries have LIN_U >= 0, closed ones -1) and point matrix.
UB, LB, LIN_U, LIN_GAP, LIN_MID, KEY = range(6)
N_COLS = 6
SCORE, WEIGHT = range(2)
# Running totals (linear): ΣU, Σgap, Σ sqrt(U L) over the open entries, and the exact mass E.
T_U, T_GAP, T_MID, T_EXACT = range(4)
# Relative costs (in leaf points scored) steering the refinement: a child centre, a proposal.
# Tuned on 1M x 64 clustered vectors (1.5 / 1.0 and 2.5 / 8.0 were slower); they change the
# cost only, never the distribution.
CENTRE_COST, PROPOSAL_COST = 2.5, 4.0
# Proposals per requested sample before the first proposal is replaced by an eta-refined one.
FIRST_PROPOSALS = 100
# The second proposal's gap target, relative to eta.
RETRY_ETA = 0.01
_MUL1, _MUL2, _GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def _jit(fn: F) -> F:
    return cast(F, numba.njit(cache=True)(fn))


def _jit_dot(fn: F) -> F:
    # Reassociation lets LLVM vectorise the float32 reduction; inputs are finite.
    return cast(F, numba.njit(cache=True, fastmath={"reassoc", "contract"})(fn))


@_jit_dot
def _dot(a: np.ndarray, i: int, b: np.ndarray, j: int) -> float:
    """``a[i] · b[j]`` in float32."""
    s = np.float32(0.0)
    for k in range(a.shape[1]):
        s += a[i, k] * b[j, k]
    return float(s)


@_jit
def _rand(state: np.ndarray) -> float:
    """Uniform in [0, 1) from a splitmix64 state (a 1-element uint64 array)."""
    state[0] += np.uint64(_GOLDEN)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MUL1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MUL2)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@_jit
def _excluded(ex: np.ndarray, target: int) -> bool:
    """Whether ``target`` is in the sorted id array ``ex``."""
    if len(ex) == 0:
        return False
    k = np.searchsorted(ex, target)
    return bool(k < len(ex) and ex[k] == target)


@_jit
def _sift_down(heap: np.ndarray, n: int, key: np.ndarray, i: int) -> None:
    """Restore the max-heap order below position ``i`` (heap of indices into ``key``)."""
    item = heap[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and key[heap[c + 1]] > key[heap[c]]:
            c += 1
        if key[heap[c]] <= key[item]:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = item


@_jit
def _push(heap: np.ndarray, n: int, key: np.ndarray, item: int) -> None:
    """Add ``item`` to a max-heap of ``n`` entries."""
    i = n
    while i > 0:
        parent = (i - 1) // 2
        if key[heap[parent]] >= key[item]:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = item


@_jit
def _grow1(a: np.ndarray, need: int) -> np.ndarray:
    """``a`` if it holds ``need`` rows, else a copy with room for at least twice as many."""
    if need <= len(a):
        return a
    out = np.empty(max(need, 2 * len(a)), dtype=a.dtype)
    out[: len(a)] = a
    return out


@_jit
def _grow2(a: np.ndarray, need: int) -> np.ndarray:
    """``_grow1`` for a 2-d array (rows grow, columns stay)."""
    if need <= a.shape[0]:
        return a
    out = np.empty((max(need, 2 * a.shape[0]), a.shape[1]), dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


@_jit
def _masses(
    ub: float, lb: float, log_count: float, inv_cost: float, tau: float, ref: float
) -> tuple[float, float, float, float]:
    """Linear ``U``, gap ``U - L``, estimate ``sqrt(U L)`` and heap key (gap per unit cost).

    Scalars in and out: numba then keeps the callers' loops tight.
    """
    half = math.exp(0.5 * (lb - ub) / tau)  # sqrt(L / U)
    u = math.exp(log_count + ub / tau - ref)
    gap = u * (1.0 - half * half)
    return u, gap, u * half, gap * inv_cost


@_jit
def _capped(
    ub: float, lb: float, cap: float, log_count: float, inv_cost: float, tau: float, ref: float
) -> tuple[float, float, float, float]:
    """:func:`_masses` of the points scoring at most ``cap`` (the positive-aware filter): none
    when ``lb > cap``; bounds ``(cap, -inf)`` when the node straddles it."""
    if lb > cap:
        return 0.0, 0.0, 0.0, 0.0
    if ub > cap:
        return _masses(cap, -math.inf, log_count, inv_cost, tau, ref)
    return _masses(ub, lb, log_count, inv_cost, tau, ref)


@_jit
def _log_top(ub: float, lb: float, cap: float, log_count: float, tau: float) -> float:
    """Log of an entry's capped mass bound (``-inf`` when it holds nothing below ``cap``)."""
    return -math.inf if lb > cap else log_count + min(ub, cap) / tau


@_jit
def _set_masses(
    ef: np.ndarray, e: int, node: int, tau: float, ref: float, tree: tuple[np.ndarray, ...],
    cap: float,
) -> None:  # fmt: skip
    """Fill the mass columns of entry ``e`` (node ``node``) from its bounds."""
    u, gap, mid, key = _capped(ef[e, UB], ef[e, LB], cap, tree[3][node], tree[8][node], tau, ref)
    ef[e, LIN_U], ef[e, LIN_GAP], ef[e, LIN_MID], ef[e, KEY] = u, gap, mid, key


@_jit
def _init_cut(
    scores: np.ndarray, qn: float, tau: float, cut: np.ndarray, tree: tuple[np.ndarray, ...],
    ent: np.ndarray, ef: np.ndarray, cap: float,
) -> float:  # fmt: skip
    """Fill the cut entries from their centre scores; returns ``ref`` (their largest log U)."""
    radii, log_count = tree[2], tree[3]
    ref = -math.inf
    for c in range(len(cut)):
        spread = qn * radii[cut[c]]
        ent[c], ef[c, UB], ef[c, LB] = cut[c], scores[c] + spread, scores[c] - spread
        ref = max(ref, _log_top(ef[c, UB], ef[c, LB], cap, log_count[cut[c]], tau))
    ref = 0.0 if ref == -math.inf else ref
    for c in range(len(cut)):
        _set_masses(ef, c, cut[c], tau, ref, tree, cap)
    return ref


@_jit
def _sums(ef: np.ndarray, n_ent: int, pf: np.ndarray, n_pts: int, tot: np.ndarray) -> None:
    """Exact totals (``T_U``, ...) over the open entries and the scored points, into ``tot``."""
    tot[:] = 0.0
    for e in range(n_ent):
        if ef[e, LIN_U] >= 0.0:
            tot[T_U] += ef[e, LIN_U]
            tot[T_GAP] += ef[e, LIN_GAP]
            tot[T_MID] += ef[e, LIN_MID]
    for p in range(n_pts):
        tot[T_EXACT] += pf[p, WEIGHT]


@_jit
def _rebase(
    ent: np.ndarray, ef: np.ndarray, n_ent: int, pf: np.ndarray, n_pts: int,
    tree: tuple[np.ndarray, ...], tau: float, heap: np.ndarray, cap: float,
) -> tuple[float, int]:  # fmt: skip
    """New ``ref`` (the largest open log mass), masses recomputed, heap rebuilt: ``(ref, n)``."""
    log_count = tree[3]
    ref, n_heap = -math.inf, 0
    for e in range(n_ent):
        if ef[e, LIN_U] >= 0.0:
            ref = max(ref, _log_top(ef[e, UB], ef[e, LB], cap, log_count[ent[e]], tau))
    for p in range(n_pts):
        ref = max(ref, pf[p, SCORE] / tau)
    ref = 0.0 if ref == -math.inf else ref
    for e in range(n_ent):
        if ef[e, LIN_U] >= 0.0:
            _set_masses(ef, e, ent[e], tau, ref, tree, cap)
            heap[n_heap] = e
            n_heap += 1
    for p in range(n_pts):
        pf[p, WEIGHT] = math.exp(pf[p, SCORE] / tau - ref)
    for i in range(n_heap // 2 - 1, -1, -1):
        _sift_down(heap, n_heap, ef[:, KEY], i)
    return ref, n_heap


@_jit
def _score_leaf(
    node: int, q: np.ndarray, qi: int, tau: float, ref: float, tree: tuple[np.ndarray, ...],
    ids: np.ndarray, ex: np.ndarray, pos: np.ndarray, pf: np.ndarray, n_pts: int, cap: float,
) -> tuple[int, float]:  # fmt: skip
    """Score a leaf's points, append the kept ones (not excluded, at most ``cap``):
    ``(n_pts, their weight sum)``."""
    vectors, counts, starts = tree[0], tree[4], tree[5]
    added = 0.0
    for p in range(starts[node], starts[node] + counts[node]):
        s = _dot(q, qi, vectors, p)
        if s > cap or _excluded(ex, ids[p]):
            continue
        pos[n_pts], pf[n_pts, SCORE] = p, s
        pf[n_pts, WEIGHT] = math.exp(s / tau - ref)
        added += pf[n_pts, WEIGHT]
        n_pts += 1
    return n_pts, added


@_jit
def _add_children(
    e: int, q: np.ndarray, qi: int, qn: float, tau: float, ref: float,
    tree: tuple[np.ndarray, ...], ent: np.ndarray, ef: np.ndarray, n_ent: int, cap: float,
) -> int:  # fmt: skip
    """Append the children of entry ``e`` (bounds tightened by the parent's); returns ``n_ent``."""
    centres, radii, log_count, inv_cost = tree[1], tree[2], tree[3], tree[8]
    node, parent_ub, parent_lb = ent[e], ef[e, UB], ef[e, LB]
    for child in range(tree[6][node], tree[6][node] + tree[7][node]):
        centre = _dot(q, qi, centres, child)
        spread = qn * radii[child]
        ub, lb = min(centre + spread, parent_ub), max(centre - spread, parent_lb)
        u, gap, mid, key = _capped(ub, lb, cap, log_count[child], inv_cost[child], tau, ref)
        ent[n_ent], ef[n_ent, UB], ef[n_ent, LB] = child, ub, lb
        ef[n_ent, LIN_U], ef[n_ent, LIN_GAP], ef[n_ent, LIN_MID], ef[n_ent, KEY] = u, gap, mid, key
        n_ent += 1
    return n_ent


@_jit
def _expand(
    q: np.ndarray, qi: int, qn: float, tau: float, ref: float, limits: np.ndarray,
    tree: tuple[np.ndarray, ...], ids: np.ndarray, ex: np.ndarray, ent: np.ndarray,
    ef: np.ndarray, heap: np.ndarray, pos: np.ndarray, pf: np.ndarray, sizes: np.ndarray,
    tot: np.ndarray, stats: np.ndarray, cap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Pop the top entry and expand it; ``sizes = [n_ent, n_heap, n_pts]`` and ``tot`` updated.

    Returns the (possibly grown) arrays ``(ent, ef, heap, pos, pf)``.
    """
    n_ent, n_heap, n_pts = sizes[0], sizes[1] - 1, sizes[2]
    e = heap[0]
    heap[0] = heap[n_heap]
    _sift_down(heap, n_heap, ef[:, KEY], 0)
    tot[T_U] -= ef[e, LIN_U]
    tot[T_GAP] -= ef[e, LIN_GAP]
    tot[T_MID] -= ef[e, LIN_MID]
    ef[e, LIN_U] = -1.0  # closed
    stats[EXPANSIONS] += 1
    node = ent[e]
    if tree[7][node] == 0:
        pos, pf = _grow1(pos, n_pts + limits[5]), _grow2(pf, n_pts + limits[5])
        n_pts, added = _score_leaf(node, q, qi, tau, ref, tree, ids, ex, pos, pf, n_pts, cap)
        tot[T_EXACT] += added
        stats[LEAVES] += 1
        stats[POINTS] += tree[4][node]
    else:
        ent, ef = _grow1(ent, n_ent + limits[4]), _grow2(ef, n_ent + limits[4])
        heap = _grow1(heap, n_ent + limits[4])
        first = n_ent
        n_ent = _add_children(e, q, qi, qn, tau, ref, tree, ent, ef, n_ent, cap)
        for c in range(first, n_ent):
            tot[T_U] += ef[c, LIN_U]
            tot[T_GAP] += ef[c, LIN_GAP]
            tot[T_MID] += ef[c, LIN_MID]
            _push(heap, n_heap, ef[:, KEY], c)
            n_heap += 1
        stats[NODES] += 1
        stats[CENTRES] += n_ent - first
    sizes[0], sizes[1], sizes[2] = n_ent, n_heap, n_pts
    return ent, ef, heap, pos, pf


@_jit
def _done(ef: np.ndarray, heap: np.ndarray, tot: np.ndarray, eta: float, num: float) -> bool:
    """Stop refining: gap within ``eta`` of the mass, or no expansion worth its cost.

    The top entry's expansion would save about ``num · PROPOSAL_COST · gap / Z`` in rejected
    proposals, ``Z`` estimated as ``E + Σ sqrt(U L)``; its key is the gap per unit of cost.
    """
    if tot[T_GAP] <= eta * (tot[T_EXACT] + tot[T_U]):
        return True
    return bool(num * PROPOSAL_COST * ef[heap[0], KEY] <= tot[T_EXACT] + tot[T_MID])


@_jit
def _refine(
    q: np.ndarray, qi: int, qn: float, tau: float, eta: float, ref: float, limits: np.ndarray,
    tree: tuple[np.ndarray, ...], ids: np.ndarray, ex: np.ndarray, ent: np.ndarray,
    ef: np.ndarray, n_ent: int, stats: np.ndarray, num: float, cap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:  # fmt: skip
    """Expand the top entry of the heap until ``_done`` for ``num`` draws (or a cap is reached).

    Returns ``(ent, ef, pos, pf, n_ent, n_pts)``: the entries and the scored points.
    """
    max_exp, max_points = limits[1] + stats[EXPANSIONS], limits[2] + stats[POINTS]
    heap = np.arange(len(ent))
    pos, pf = np.empty(256, dtype=np.int64), np.empty((256, 2))
    for i in range(n_ent // 2 - 1, -1, -1):
        _sift_down(heap, n_ent, ef[:, KEY], i)
    sizes, tot = np.array([n_ent, n_ent, 0]), np.zeros(4)
    _sums(ef, n_ent, pf, 0, tot)
    mark_u, mark_gap = tot[T_U], tot[T_GAP]
    while sizes[1] > 0 and stats[EXPANSIONS] < max_exp:
        if _done(ef, heap, tot, eta, num) or (limits[2] >= 0 and max_points <= stats[POINTS]):
            break
        ent, ef, heap, pos, pf = _expand(
            q,
            qi,
            qn,
            tau,
            ref,
            limits,
            tree,
            ids,
            ex,
            ent,
            ef,
            heap,
            pos,
            pf,
            sizes,
            tot,
            stats,
            cap,
        )
        if tot[T_U] + tot[T_EXACT] < RESUM * mark_u or tot[T_GAP] < RESUM * mark_gap:
            _sums(ef, sizes[0], pf, sizes[2], tot)
            if tot[T_U] + tot[T_EXACT] < TINY:
                ref, sizes[1] = _rebase(ent, ef, sizes[0], pf, sizes[2], tree, tau, heap, cap)
                _sums(ef, sizes[0], pf, sizes[2], tot)
            mark_u, mark_gap = tot[T_U] + tot[T_EXACT], tot[T_GAP]
    return ent, ef, pos, pf, sizes[0], sizes[2]


@_jit
def _proposal(ef: np.ndarray, n_ent: int, pf: np.ndarray, n_pts: int) -> tuple[np.ndarray, ...]:
    """Cumulative proposal masses and their components (``>= 0``: point, ``< 0``: ~entry)."""
    comp = np.empty(n_pts + n_ent, dtype=np.int64)
    cdf = np.empty(n_pts + n_ent)
    k, run = 0, 0.0
    for p in range(n_pts):
        run += pf[p, WEIGHT]
        comp[k], cdf[k] = p, run
        k += 1
    for e in range(n_ent):
        if ef[e, LIN_U] >= 0.0:
            run += ef[e, LIN_U]
            comp[k], cdf[k] = ~e, run
            k += 1
    return cdf[:k], comp[:k]


@_jit
def _draw(
    q: np.ndarray, qi: int, tau: float, num: int, max_proposals: int,
    tree: tuple[np.ndarray, ...], ids: np.ndarray, ex: np.ndarray, cdf: np.ndarray,
    comp: np.ndarray, ent: np.ndarray, ef: np.ndarray, pos: np.ndarray, pf: np.ndarray,
    state: np.ndarray, out_s: np.ndarray, out_p: np.ndarray, stats: np.ndarray, got: int,
    cap: float,
) -> int:  # fmt: skip
    """Rejection draws from slot ``got`` on, until ``num`` are accepted or ``max_proposals``
    have been made (counting earlier calls); returns the number accepted."""
    vectors, counts, starts = tree[0], tree[4], tree[5]
    total = cdf[len(cdf) - 1]
    while got < num:
        if stats[PROPOSALS] >= max_proposals:
            return got
        stats[PROPOSALS] += 1
        k = min(np.searchsorted(cdf, _rand(state) * total, side="right"), len(cdf) - 1)
        c = comp[k]
        if c >= 0:
            out_s[qi, got], out_p[qi, got] = pf[c, SCORE], pos[c]
            got += 1
            continue
        node = ent[~c]
        p = starts[node] + min(int(_rand(state) * counts[node]), counts[node] - 1)
        s = _dot(q, qi, vectors, p)
        stats[NODE_PROPOSALS] += 1
        bound = min(ef[~c, UB], cap)
        if s <= cap and math.log(_rand(state)) < (s - bound) / tau and not _excluded(ex, ids[p]):
            out_s[qi, got], out_p[qi, got] = s, p
            got += 1
    return got


@_jit
def _one_query(
    qi: int, q: np.ndarray, qn: float, cut: np.ndarray, cut_scores: np.ndarray,
    tree: tuple[np.ndarray, ...], ids: np.ndarray, ex: np.ndarray, params: np.ndarray,
    limits: np.ndarray, seed: int, out_s: np.ndarray, out_p: np.ndarray, stats: np.ndarray,
    cap: float,
) -> None:  # fmt: skip
    """Refine and draw for query row ``qi``; writes its outputs and counters. A query whose
    proposal holds no mass (every target excluded or above ``cap``) is flagged ``EMPTY``.

    The first proposal stops refining where more work looks dearer than rejections. Should it
    reject far more than expected (heavy exclusions: the bounds and the estimate of ``Z`` ignore
    them), a second one refined by the ``eta`` rule alone, with ``eta`` times ``RETRY_ETA``,
    draws the rest. Accepted draws are exact and
    independent of how many proposals they took, so the first ones are kept.
    """
    state = np.empty(1, dtype=np.uint64)
    state[0] = np.uint64(seed) ^ (np.uint64(limits[6] + qi) * np.uint64(_GOLDEN))
    _rand(state)
    got, num = 0, limits[0]
    for attempt in range(2):
        room = len(cut) + 16 * limits[4]
        ent, ef = np.empty(room, dtype=np.int64), np.empty((room, N_COLS))
        ref = _init_cut(cut_scores[qi], qn, params[0], cut, tree, ent, ef, cap)
        stats[CENTRES] += len(cut)
        ent, ef, pos, pf, n_ent, n_pts = _refine(
            q, qi, qn, params[0], params[1] * (1.0 if attempt == 0 else RETRY_ETA), ref, limits,
            tree, ids, ex, ent, ef, len(cut), stats, num if attempt == 0 else math.inf, cap,
        )  # fmt: skip
        cdf, comp = _proposal(ef, n_ent, pf, n_pts)
        if len(cdf) == 0 or not cdf[len(cdf) - 1] > 0.0:
            stats[EMPTY] = 1
            return
        most = min(limits[3], FIRST_PROPOSALS * num) if attempt == 0 else limits[3]
        got = _draw(
            q, qi, params[0], num, most, tree, ids, ex, cdf, comp, ent, ef, pos, pf, state,
            out_s, out_p, stats, got, cap,
        )  # fmt: skip
        if got == num:
            break
    stats[ACCEPTED], stats[FAILED] = got, got < num


def _sample_block(
    queries: np.ndarray, qnorm: np.ndarray, cut: np.ndarray, cut_scores: np.ndarray,
    tree: tuple[np.ndarray, ...], ids: np.ndarray, ex_ptr: np.ndarray, ex_ids: np.ndarray,
    params: np.ndarray, limits: np.ndarray, seed: int, out_s: np.ndarray, out_p: np.ndarray,
    stats: np.ndarray, caps: np.ndarray,
) -> None:  # fmt: skip
    """Every query row of the block, in parallel (see ``_compiled.sample_compiled``)."""
    for qi in numba.prange(queries.shape[0]):
        _one_query(
            qi, queries, qnorm[qi], cut, cut_scores, tree, ids,
            ex_ids[ex_ptr[qi] : ex_ptr[qi + 1]], params, limits, seed, out_s, out_p, stats[qi],
            caps[qi],
        )  # fmt: skip


sample_block = cast(Callable[..., None], numba.njit(cache=True, parallel=True)(_sample_block))
