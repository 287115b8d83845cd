"""Hierarchical k-means clustering into the array-of-nodes tree layout.

The tree is built one level at a time. Every node of the level holding more than ``leaf_size``
points is split by k-means into ``min(branching, ceil(count / leaf_size))`` children: nodes of up
to ``branching * sample_per_centre`` points are clustered together as one padded batch
(``bmm``), larger ones are trained on a random sample of that size and then assign all their
points (one matmul per large node: at most ``N / (branching * sample_per_centre)`` of them per
level). Points are reordered so that every node covers a contiguous range, and nodes are numbered
breadth-first so that the children of a node are contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dualforge.mining._flat import GATHER_ELEMENTS, expand_ranges

Tensor = torch.Tensor


@dataclass
class TreeArrays:
    """The whole tree as flat arrays (``M`` nodes, ``N`` points, dimension ``d``).

    Attributes:
        vectors: ``(N, d)`` float32 points in leaf order.
        ids: ``(N,)`` int64 original id of the point at each position.
        centres: ``(M, d)`` float32 ball centres (the mean of the node's points at build time).
        radii: ``(M,)`` float32 covering radii: ``max ||t - centre||`` over the node's points
            (an upper bound after updates).
        build_radii: ``(M,)`` float32 radius when the node was (re)built.
        counts: ``(M,)`` int64 points under the node.
        starts: ``(M,)`` int64 first position of the node's contiguous range.
        child_start: ``(M,)`` int64 index of the first child (0 for a leaf).
        child_count: ``(M,)`` int64 number of children (0 for a leaf).
        parent: ``(M,)`` int64 parent index (-1 for the root, node 0).
        depth: ``(M,)`` int64 root distance.
    """

    vectors: Tensor
    ids: Tensor
    centres: Tensor
    radii: Tensor
    build_radii: Tensor
    counts: Tensor
    starts: Tensor
    child_start: Tensor
    child_count: Tensor
    parent: Tensor
    depth: Tensor


@dataclass(frozen=True)
class BuildParams:
    """How to cluster.

    Attributes:
        branching: Most children per node (>= 2).
        leaf_size: Most points per leaf (>= 1).
        iters: k-means iterations per split.
        sample_per_centre: Training points per centre for large nodes.
        seed: Seed of the k-means initialisation and sampling.
    """

    branching: int = 16
    leaf_size: int = 64
    iters: int = 8
    sample_per_centre: int = 64
    seed: int = 0


def _assign(x: Tensor, centres: Tensor, live: Tensor) -> Tensor:
    """Nearest live centre of every row: ``x (n, S, d)``, ``centres (n, B, d)`` -> ``(n, S)``."""
    half_sq = (0.5 * (centres * centres).sum(2)).masked_fill_(~live, math.inf)  # (n, B)
    score = torch.baddbmm(half_sq.unsqueeze(1), x, centres.transpose(1, 2), beta=-1.0)
    return score.max(2).indices  # (n, S)


def batched_kmeans(xs: Tensor, valid: Tensor, k: Tensor, iters: int) -> Tensor:
    """Lloyd's k-means on a padded batch of point sets, started from their first rows.

    Args:
        xs: ``(n, S, d)`` float32 training points in random order, padded.
        valid: ``(n, S)`` bool, True for real rows; row ``j < k`` is real for every item.
        k: ``(n,)`` int64 clusters per item (``width = max(k) <= S``).
        iters: Lloyd iterations.

    Returns:
        ``(n, width, d)`` centres; slots ``>= k`` of an item are meaningless.
    """
    width = int(k.max())
    centres = xs[:, :width].clone()  # (n, B, d)
    live = torch.arange(width).unsqueeze(0) < k.unsqueeze(1)  # (n, B)
    weight = valid.to(xs.dtype).unsqueeze(2)  # (n, S, 1)
    for _ in range(iters):
        labels = _assign(xs, centres, live)  # (n, S)
        onehot = torch.nn.functional.one_hot(labels, width).to(xs.dtype).mul_(weight)  # (n, S, B)
        sums = torch.bmm(onehot.transpose(1, 2), xs)  # (n, B, d)
        sizes = onehot.sum(1).unsqueeze(2)  # (n, B, 1)
        centres = torch.where(sizes > 0, sums / sizes.clamp(min=1.0), centres)
    return centres


def _label_small(
    x: Tensor, starts: Tensor, counts: Tensor, k: Tensor, p: BuildParams, gen: torch.Generator
) -> Tensor:
    """Labels of all points of small nodes: padded batches of similar sizes, trained on a
    random subset of ``sample_per_centre * k`` points each, then every point assigned."""
    labels = torch.empty(int(counts.sum()), dtype=torch.int64)
    first = torch.cumsum(counts, 0) - counts  # (n,) where each node's labels go
    order = torch.argsort(counts)
    for part in _chunks(order, counts, GATHER_ELEMENTS // (2 * x.shape[1])):
        s, c, kk = starts[part], counts[part], k[part]
        offs = torch.arange(int(c.max()))  # (S,)
        valid = offs.unsqueeze(0) < c.unsqueeze(1)  # (n, S)
        xpad = x[(s.unsqueeze(1) + offs).clamp(max=x.shape[0] - 1)]  # (n, S, d)
        t = torch.minimum(c, kk * p.sample_per_centre)  # (n,) training rows
        keys = torch.rand(valid.shape, generator=gen).masked_fill_(~valid, 2.0)
        pick = keys.argsort(dim=1)[:, : int(t.max())]  # (n, T) random distinct rows first
        xs = torch.gather(xpad, 1, pick.unsqueeze(2).expand(-1, -1, x.shape[1]))
        tvalid = torch.arange(pick.shape[1]).unsqueeze(0) < t.unsqueeze(1)  # (n, T)
        centres = batched_kmeans(xs, tvalid, kk, p.iters)
        live = torch.arange(centres.shape[1]).unsqueeze(0) < kk.unsqueeze(1)
        lab = _assign(xpad, centres, live)  # (n, S)
        dest = first[part].unsqueeze(1) + offs  # (n, S)
        labels[dest[valid]] = lab[valid]
    return labels


def _label_large(
    x: Tensor, starts: Tensor, counts: Tensor, k: Tensor, p: BuildParams, gen: torch.Generator
) -> Tensor:
    """Labels of all points of large nodes: k-means on a sample, then one assignment each."""
    width = int(k.max())
    size = width * p.sample_per_centre
    pos = (
        starts.unsqueeze(1)
        + (torch.rand((len(starts), size), generator=gen) * counts.unsqueeze(1)).long()
    )  # (n, S) with replacement
    valid = torch.ones(pos.shape, dtype=torch.bool)
    centres = batched_kmeans(x[pos], valid, k, p.iters)  # (n, B, d)
    labels = []
    rows = max(1, GATHER_ELEMENTS // width)
    for i, (s, c, kk) in enumerate(zip(starts.tolist(), counts.tolist(), k.tolist())):
        cen = centres[i, :kk]  # (k, d)
        half_sq = 0.5 * (cen * cen).sum(1)  # (k,)
        for lo in range(s, s + c, rows):
            score = torch.addmm(half_sq, x[lo : min(lo + rows, s + c)], cen.T, beta=-1.0)
            labels.append(score.max(1).indices)  # (r,)
    return torch.cat(labels)


def _fix_degenerate(labels: Tensor, seg: Tensor, counts: Tensor, k: Tensor, width: int) -> Tensor:
    """Split nodes that k-means left in one cluster (duplicates) into equal position chunks."""
    sizes = torch.bincount(seg * width + labels, minlength=len(counts) * width)
    stuck = sizes.view(-1, width).max(1).values == counts  # (n,)
    if not bool(stuck.any()):
        return labels
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(seg)) - first[seg]  # (P,)
    even = rank * k[seg] // counts[seg]
    return torch.where(stuck[seg], even, labels)


def split_level(
    x: Tensor, starts: Tensor, counts: Tensor, p: BuildParams, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """k-means labels for every point of the given (splitting) nodes.

    Args:
        x: ``(N, d)`` points in current order.
        starts: ``(n,)`` int64 range starts of the nodes to split, ascending.
        counts: ``(n,)`` int64 their sizes (> leaf_size).
        p: Build parameters.
        gen: Random generator.

    Returns:
        ``(labels, k)``: ``(sum(counts),)`` int64 cluster of each point, nodes in order and
        positions ascending; ``(n,)`` int64 clusters asked of each node.
    """
    k = torch.clamp((counts + p.leaf_size - 1) // p.leaf_size, max=p.branching)  # (n,)
    small = counts <= p.branching * p.sample_per_centre  # (n,)
    labels = torch.empty(int(counts.sum()), dtype=torch.int64)
    _, seg = expand_ranges(starts, counts)
    for mask, fn in ((small, _label_small), (~small, _label_large)):
        if bool(mask.any()):
            labels[mask[seg]] = fn(x, starts[mask], counts[mask], k[mask], p, gen)
    return _fix_degenerate(labels, seg, counts, k, int(k.max())), k


def node_radii(x: Tensor, starts: Tensor, counts: Tensor, centres: Tensor) -> Tensor:
    """Exact covering radius ``max ||t - centre||`` of contiguous point ranges.

    Args:
        x: ``(N, d)`` float32 points in leaf order.
        starts: ``(n,)`` int64 range starts.
        counts: ``(n,)`` int64 range lengths (>= 1).
        centres: ``(n, d)`` float32 centre of each range.

    Returns:
        ``(n,)`` float32 radii.
    """
    radii = torch.zeros(len(starts))
    limit = GATHER_ELEMENTS // (2 * x.shape[1])
    for part in _chunks(torch.arange(len(starts)), counts, limit):
        if len(part) == 1 and int(counts[part[0]]) > limit:  # one big range: slices
            i, s, c = int(part[0]), int(starts[part[0]]), int(counts[part[0]])
            for lo in range(s, s + c, limit):
                diff = x[lo : min(lo + limit, s + c)] - centres[i]  # (r, d)
                radii[i] = torch.maximum(radii[i], torch.linalg.vector_norm(diff, dim=1).max())
            continue
        pos, _ = expand_ranges(starts[part], counts[part])
        rep = torch.repeat_interleave(centres[part], counts[part], dim=0)  # (P, d)
        dist = torch.linalg.vector_norm(x[pos].sub_(rep), dim=1)  # (P,) node by node
        bounds = (torch.cumsum(counts[part], 0) - counts[part]).numpy()  # (n,) segment starts
        radii[part] = torch.from_numpy(np.maximum.reduceat(dist.numpy(), bounds))
    return radii


def node_means(x: Tensor, nodes: TreeArrays) -> Tensor:
    """Exact mean of every node's points: leaf sums in float64, then summed up the tree.

    Args:
        x: ``(N, d)`` float32 points in leaf order.
        nodes: The tree (its vectors are not used; ``x`` is).

    Returns:
        ``(M, d)`` float32 means.
    """
    leaves = torch.nonzero(nodes.child_count == 0).view(-1)
    leaves = leaves[torch.argsort(nodes.starts[leaves])]  # position order: they tile 0..N-1
    sums = torch.zeros((len(nodes.counts), x.shape[1]), dtype=torch.float64)
    bounds = nodes.starts[leaves].numpy()
    sums[leaves] = torch.from_numpy(np.add.reduceat(x.numpy().astype(np.float64), bounds, axis=0))
    for depth in range(int(nodes.depth.max()), 0, -1):
        at = torch.nonzero(nodes.depth == depth).view(-1)
        sums.index_add_(0, nodes.parent[at], sums[at])
    return (sums / nodes.counts.unsqueeze(1)).float()


def _chunks(nodes: Tensor, counts: Tensor, limit: int) -> list[Tensor]:
    """Split ``nodes`` into consecutive groups holding about ``limit`` points each."""
    if len(nodes) == 0:
        return []
    group = torch.cumsum(counts[nodes], 0).sub(1).div(limit, rounding_mode="floor")  # (n,)
    _, sizes = torch.unique_consecutive(group, return_counts=True)
    return list(torch.split(nodes, sizes.tolist()))


def build_tree(vectors: Tensor, p: BuildParams) -> TreeArrays:
    """Cluster ``(N, d)`` float32 vectors into a tree (see the module docstring).

    Args:
        vectors: ``(N, d)`` float32 points, ``N >= 1``; not modified.
        p: Build parameters.

    Returns:
        The tree; its ``ids`` map positions to rows of ``vectors``.
    """
    gen = torch.Generator().manual_seed(p.seed)
    x = vectors.detach().to(torch.float32).contiguous().clone()  # (N, d) reordered in place
    ids = torch.arange(x.shape[0])
    starts, counts = torch.zeros(1, dtype=torch.int64), torch.tensor([x.shape[0]])
    parent = torch.full((1,), -1, dtype=torch.int64)
    cols: dict[str, list[Tensor]] = {k: [] for k in ("starts", "counts", "cs", "cc", "par", "dep")}
    offset, depth = 0, 0
    while len(starts):
        m = len(starts)
        cs, cc = torch.zeros(m, dtype=torch.int64), torch.zeros(m, dtype=torch.int64)
        split = torch.nonzero(counts > p.leaf_size).view(-1)  # (n,)
        nxt = (torch.zeros(0, dtype=torch.int64),) * 3
        if len(split):
            child_starts, child_counts, owner = _split_and_reorder(
                x, ids, starts[split], counts[split], p, gen
            )
            nchild = torch.bincount(owner, minlength=len(split))  # (n,)
            cc[split] = nchild
            cs[split] = offset + m + torch.cumsum(nchild, 0) - nchild
            nxt = (child_starts, child_counts, offset + split[owner])
        for key, val in zip(cols, (starts, counts, cs, cc, parent, torch.full((m,), depth))):
            cols[key].append(val)
        offset, depth = offset + m, depth + 1
        starts, counts, parent = nxt
    st, ct = torch.cat(cols["starts"]), torch.cat(cols["counts"])
    empty = torch.zeros(0)
    tree = TreeArrays(
        vectors=x, ids=ids, centres=empty, radii=empty, build_radii=empty, counts=ct, starts=st,
        child_start=torch.cat(cols["cs"]), child_count=torch.cat(cols["cc"]),
        parent=torch.cat(cols["par"]), depth=torch.cat(cols["dep"]),
    )  # fmt: skip
    tree.centres = node_means(x, tree)
    tree.radii = node_radii(x, st, ct, tree.centres)
    tree.build_radii = tree.radii.clone()
    return tree


def _split_and_reorder(
    x: Tensor, ids: Tensor, starts: Tensor, counts: Tensor, p: BuildParams, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Split nodes by k-means, reorder their points by child; return the non-empty children.

    Returns:
        ``(child_starts, child_counts, owner)``: one entry per child, ``owner`` indexing
        ``starts``; children of a node are consecutive, in label order.
    """
    labels, _ = split_level(x, starts, counts, p, gen)
    pos, seg = expand_ranges(starts, counts)  # (P,), (P,)
    key = seg * p.branching + labels
    src = pos[torch.argsort(key, stable=True)]
    x[pos] = x[src]
    ids[pos] = ids[src]
    sizes = torch.bincount(key, minlength=len(starts) * p.branching).view(-1, p.branching)
    live = sizes > 0  # (n, B)
    within = torch.cumsum(sizes, 1) - sizes  # (n, B)
    owner = torch.nonzero(live)[:, 0]
    return starts[owner] + within[live], sizes[live], owner
