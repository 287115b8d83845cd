"""Flat ("ragged") batch helpers shared by the tree search, the sampler and the maintenance code.

A batch of per-query lists is held as flat tensors plus a segment id per entry (the query row),
kept sorted by segment so that each query's entries are contiguous. Everything here is O(entries)
and loop-free.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
# Elements per temporary when gathering rows to score them (64 MiB of float32).
GATHER_ELEMENTS = 1 << 24
# Elements per gathered block when scoring pairs: small blocks stay in cache (2 MiB).
DOT_ELEMENTS = 1 << 19


def expand_ranges(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Every index of every range ``[start, start + count)``, with the range it came from.

    Args:
        starts: ``(R,)`` int64 range starts.
        counts: ``(R,)`` int64 range lengths (>= 0).

    Returns:
        ``(index, range_id)``, both ``(sum(counts),)`` int64, ranges in order.
    """
    total = int(counts.sum())
    seg = torch.repeat_interleave(torch.arange(len(counts)), counts, output_size=total)  # (T,)
    first = torch.cumsum(counts, 0) - counts  # (R,) exclusive prefix sums
    index = starts[seg] + torch.arange(total) - first[seg]  # (T,)
    return index, seg


def segment_logsumexp(values: Tensor, seg: Tensor, n: int) -> Tensor:
    """``log(sum(exp(values)))`` of each segment; ``-inf`` for an empty one.

    Args:
        values: ``(E,)`` float log-values (``-inf`` allowed).
        seg: ``(E,)`` int64 segment of each value, in ``0..n-1`` (any order).
        n: Number of segments.

    Returns:
        ``(n,)`` tensor of the values' dtype.
    """
    peak = torch.full((n,), -math.inf, dtype=values.dtype)
    peak.scatter_reduce_(0, seg, values, reduce="amax", include_self=True)  # (n,)
    safe = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # (n,)
    total = torch.zeros(n, dtype=values.dtype).index_add_(0, seg, torch.exp(values - safe[seg]))
    return torch.log(total) + safe


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (``-inf`` at ``x = 0``)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def segment_bounds(seg: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """First index and length of each segment of a segment-sorted array.

    Args:
        seg: ``(E,)`` int64 segment ids, sorted ascending.
        n: Number of segments.

    Returns:
        ``(first, count)``, both ``(n,)`` int64 (``first`` of an empty segment is where it
        would start).
    """
    count = torch.bincount(seg, minlength=n)  # (n,)
    return torch.cumsum(count, 0) - count, count


def rank_in_segment(seg: Tensor, n: int) -> Tensor:
    """Position of each entry inside its segment, for a segment-sorted array.

    Args:
        seg: ``(E,)`` int64 segment ids, sorted ascending.
        n: Number of segments.

    Returns:
        ``(E,)`` int64 ranks starting at 0 in each segment.
    """
    first, _ = segment_bounds(seg, n)
    return torch.arange(len(seg)) - first[seg]


def merge_order(parts: list[Tensor], n: int) -> list[Tensor]:
    """Where each entry of several segment-sorted arrays lands in their segment-sorted merge.

    Within a segment, entries of ``parts[0]`` come first, then those of ``parts[1]``, and so on,
    each part keeping its own order (a stable merge in O(total) without a sort).

    Args:
        parts: Segment ids of each part, each ``(E_j,)`` int64 sorted ascending.
        n: Number of segments.

    Returns:
        One ``(E_j,)`` int64 tensor of destinations per part.
    """
    counts = torch.stack([torch.bincount(p, minlength=n) for p in parts])  # (P, n)
    seg_first = torch.cumsum(counts.sum(0), 0) - counts.sum(0)  # (n,)
    before = torch.cumsum(counts, 0) - counts  # (P, n) entries of earlier parts per segment
    return [seg_first[p] + before[j][p] + rank_in_segment(p, n) for j, p in enumerate(parts)]


def merge(parts: list[list[Tensor]], n: int) -> list[Tensor]:
    """Stable segment-sorted merge of several column groups.

    Args:
        parts: ``parts[j] = [seg_j, col_1, col_2, ...]``: the segment ids (sorted) and the
            other columns of part ``j``; every part has the same columns with matching dtypes.
        n: Number of segments.

    Returns:
        ``[seg, col_1, col_2, ...]`` of the merged array.
    """
    dest = merge_order([p[0] for p in parts], n)
    total = sum(len(d) for d in dest)
    out = []
    for c in range(len(parts[0])):
        col = torch.empty(total, dtype=parts[0][c].dtype)
        for j, p in enumerate(parts):
            col[dest[j]] = p[c]
        out.append(col)
    return out


def row_dots(queries: Tensor, qrow: Tensor, matrix: Tensor, rows: Tensor) -> Tensor:
    """``queries[qrow[i]] · matrix[rows[i]]`` for every pair ``i``, in bounded memory.

    Args:
        queries: ``(Q, d)`` float32.
        qrow: ``(P,)`` int64 query row of each pair.
        matrix: ``(M, d)`` float32.
        rows: ``(P,)`` int64 matrix row of each pair.

    Returns:
        ``(P,)`` float32 inner products.
    """
    out = torch.empty(len(rows), dtype=torch.float32)
    step = max(1024, DOT_ELEMENTS // max(1, matrix.shape[1]))
    for lo in range(0, len(rows), step):
        a = matrix.index_select(0, rows[lo : lo + step])  # (p, d)
        b = queries.index_select(0, qrow[lo : lo + step])  # (p, d)
        out[lo : lo + step] = (a * b).sum(1)
    return out


def membership(keys: Tensor, sorted_keys: Tensor) -> Tensor:
    """Whether each key is in a sorted key set.

    Args:
        keys: ``(P,)`` int64.
        sorted_keys: ``(S,)`` int64, sorted ascending.

    Returns:
        ``(P,)`` bool.
    """
    if len(sorted_keys) == 0:
        return torch.zeros(len(keys), dtype=torch.bool)
    at = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)  # (P,)
    return sorted_keys[at] == keys
