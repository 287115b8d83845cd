"""Keep the tree valid while its vectors change: refresh radii, re-cluster only loose subtrees.

Vectors are replaced in place (points never change leaf), so counts and ranges stay put and
centres are kept. What changes is radii:

- a touched leaf gets its exact radius again;
- a touched internal node gets ``min(incremental, triangle)``: ``incremental`` is the larger of
  its old radius (still valid for its unchanged points) and the distance of its changed points;
  ``triangle`` is ``max over children of ||c_child - c|| + r_child``. Both are valid bounds.
- ``update_all`` measures every radius exactly (one pass over the points per level).

A non-root node whose radius grew past ``looseness`` times its radius at (re)build (or past
``looseness`` times a tenth of its parent's, for tiny nodes) is loose; the
highest loose nodes have their subtrees re-clustered from scratch (the root is never rebuilt:
its own bound is hardly used, and a rebuild of it would be a full rebuild).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dualforge.mining._flat import expand_ranges
from dualforge.mining.build import BuildParams, TreeArrays, build_tree, node_radii

Tensor = torch.Tensor
# Build radii below this fraction of the parent's count as that fraction for looseness.
FLOOR = 0.1


@dataclass(frozen=True)
class UpdateStats:
    """What one update did.

    Attributes:
        points_updated: Vectors replaced.
        nodes_refreshed: Nodes whose radius was recomputed.
        subtrees_rebuilt: Loose subtrees re-clustered.
        points_rebuilt: Points in those subtrees.
    """

    points_updated: int
    nodes_refreshed: int
    subtrees_rebuilt: int
    points_rebuilt: int


def leaf_of(tree: TreeArrays, pos: Tensor) -> Tensor:
    """Leaf holding each position.

    Args:
        tree: The tree.
        pos: ``(P,)`` int64 positions.

    Returns:
        ``(P,)`` int64 leaf node indices.
    """
    leaves = torch.nonzero(tree.child_count == 0).view(-1)
    leaves = leaves[torch.argsort(tree.starts[leaves])]
    return leaves[torch.searchsorted(tree.starts[leaves], pos, right=True) - 1]


def _ancestors(tree: TreeArrays, nodes: Tensor) -> Tensor:
    """``(P, depth + 1)`` ancestor of each node at every depth (``-1`` below the node)."""
    top = int(tree.depth.max())
    chain = torch.full((len(nodes), top + 1), -1, dtype=torch.int64)
    cur = nodes.clone()
    for _ in range(top + 1):
        ok = torch.nonzero(cur >= 0).view(-1)
        chain[ok, tree.depth[cur[ok]]] = cur[ok]
        cur[ok] = tree.parent[cur[ok]]
    return chain


def _triangle(tree: TreeArrays, nodes: Tensor) -> Tensor:
    """``max over children of ||c_child - c|| + r_child`` for internal nodes."""
    kids, seg = expand_ranges(tree.child_start[nodes], tree.child_count[nodes])
    gap = torch.linalg.vector_norm(tree.centres[kids] - tree.centres[nodes][seg], dim=1)
    out = torch.zeros(len(nodes))
    return out.scatter_reduce_(0, seg, gap + tree.radii[kids], reduce="amax")


def refresh_radii(tree: TreeArrays, pos: Tensor) -> Tensor:
    """Refresh the radii of the ancestors of changed positions, deepest first.

    Args:
        tree: The tree, its vectors already changed; radii updated in place.
        pos: ``(P,)`` int64 changed positions (unique).

    Returns:
        ``(R,)`` int64 nodes refreshed.
    """
    chain = _ancestors(tree, leaf_of(tree, pos))  # (P, D + 1)
    done = []
    for depth in range(chain.shape[1] - 1, -1, -1):
        col = chain[:, depth]
        nodes, inverse = torch.unique(col[col >= 0], return_inverse=True)
        if not len(nodes):
            continue
        leaf = tree.child_count[nodes] == 0
        lv = nodes[leaf]
        tree.radii[lv] = node_radii(
            tree.vectors, tree.starts[lv], tree.counts[lv], tree.centres[lv]
        )
        inner = nodes[~leaf]
        if len(inner):
            pts = pos[col >= 0]
            dist = torch.linalg.vector_norm(tree.vectors[pts] - tree.centres[nodes][inverse], dim=1)
            far = torch.zeros(len(nodes)).scatter_reduce_(0, inverse, dist, reduce="amax")
            incremental = torch.maximum(tree.radii[inner], far[~leaf])
            tree.radii[inner] = torch.minimum(incremental, _triangle(tree, inner))
        done.append(nodes)
    return torch.cat(done)


def highest_loose(tree: TreeArrays, candidates: Tensor, looseness: float) -> Tensor:
    """Loose non-root candidates none of whose ancestors is loose.

    A node is loose when its radius exceeds ``looseness`` times its radius at (re)build, or
    times ``FLOOR`` of its parent's when that is larger (a one-point leaf is built with radius 0).

    Args:
        tree: The tree.
        candidates: ``(C,)`` int64 nodes to check.
        looseness: Rebuild when ``radius > looseness * build_radius``.

    Returns:
        ``(S,)`` int64 subtree roots to rebuild.
    """
    floor = FLOOR * tree.build_radii[tree.parent.clamp(min=0)]  # (M,) tiny nodes' scale
    base = torch.maximum(tree.build_radii, floor)
    loose = (tree.radii > looseness * base) & (tree.depth > 0)
    cand = candidates[loose[candidates]]
    covered = torch.zeros(len(cand), dtype=torch.bool)
    up = tree.parent[cand]
    while bool((up > 0).any()):  # the root (node 0) is never rebuilt
        ok = up > 0
        covered[ok] |= loose[up[ok]]
        up = torch.where(ok, tree.parent[up.clamp(min=0)], -1)
    roots: Tensor = torch.unique(cand[~covered])
    return roots


def _graft(tree: TreeArrays, root: int, sub: TreeArrays, base: int) -> dict[str, Tensor]:
    """Node columns of ``sub`` (minus its root) renumbered from ``base``; ``root`` takes over."""
    remap = torch.cat([torch.tensor([root]), base + torch.arange(len(sub.counts) - 1)])
    a = int(tree.starts[root])
    for name in ("centres", "radii", "build_radii", "child_count"):
        getattr(tree, name)[root] = getattr(sub, name)[0]
    tree.child_start[root] = remap[sub.child_start[0]] if int(sub.child_count[0]) else 0
    rest = slice(1, None)
    return {
        "centres": sub.centres[rest], "radii": sub.radii[rest],
        "build_radii": sub.build_radii[rest], "counts": sub.counts[rest],
        "starts": sub.starts[rest] + a,
        "child_start": torch.where(sub.child_count[rest] > 0, remap[sub.child_start[rest]], 0),
        "child_count": sub.child_count[rest], "parent": remap[sub.parent[rest]],
        "depth": sub.depth[rest] + tree.depth[root],
    }  # fmt: skip


def relayout(tree: TreeArrays) -> TreeArrays:
    """Renumber the nodes reachable from the root breadth-first; drop the others.

    Args:
        tree: A tree whose child ranges are contiguous but whose numbering may have gaps.

    Returns:
        The same tree, nodes in breadth-first order, depths recomputed.
    """
    levels, level = [torch.zeros(1, dtype=torch.int64)], torch.zeros(1, dtype=torch.int64)
    while True:
        level, _ = expand_ranges(tree.child_start[level], tree.child_count[level])
        if not len(level):
            break
        levels.append(level)
    order = torch.cat(levels)
    new_of = torch.full((len(tree.counts),), -1, dtype=torch.int64)
    new_of[order] = torch.arange(len(order))
    out = dataclasses.replace(tree)
    for f in ("centres", "radii", "build_radii", "counts", "starts", "child_count"):
        setattr(out, f, getattr(tree, f)[order])
    out.child_start = torch.where(out.child_count > 0, new_of[tree.child_start[order]], 0)
    out.parent = torch.where(order > 0, new_of[tree.parent[order].clamp(min=0)], -1)
    out.depth = torch.cat([torch.full((len(lv),), i) for i, lv in enumerate(levels)])
    return out


def rebuild_subtrees(tree: TreeArrays, roots: Tensor, params: BuildParams) -> TreeArrays:
    """Re-cluster the points of each subtree (their ranges stay put) and graft the new subtrees.

    Args:
        tree: The tree (modified).
        roots: ``(S,)`` int64 disjoint subtree roots (not the root).
        params: Build parameters.

    Returns:
        The tree, relaid out.
    """
    extra: list[dict[str, Tensor]] = []
    base = len(tree.counts)
    for root in roots.tolist():
        a, c = int(tree.starts[root]), int(tree.counts[root])
        sub = build_tree(
            tree.vectors[a : a + c], dataclasses.replace(params, seed=params.seed + root)
        )
        tree.vectors[a : a + c] = sub.vectors
        tree.ids[a : a + c] = tree.ids[a : a + c][sub.ids]
        extra.append(_graft(tree, root, sub, base))
        base += len(sub.counts) - 1
    for f in extra[0] if extra else ():
        setattr(tree, f, torch.cat([getattr(tree, f)] + [e[f] for e in extra]))
    return relayout(tree)


def update_positions(
    tree: TreeArrays, pos: Tensor, vectors: Tensor, params: BuildParams, looseness: float
) -> tuple[TreeArrays, UpdateStats]:
    """Replace the vectors at some positions; refresh radii; rebuild loose subtrees.

    Args:
        tree: The tree (modified).
        pos: ``(P,)`` int64 unique positions.
        vectors: ``(P, d)`` float32 new vectors.
        params: Build parameters for rebuilds.
        looseness: Rebuild factor (> 1).

    Returns:
        The tree (possibly relaid out) and what was done.
    """
    tree.vectors[pos] = vectors
    touched = refresh_radii(tree, pos)
    roots = highest_loose(tree, touched, looseness)
    rebuilt = int(tree.counts[roots].sum())
    if len(roots):
        tree = rebuild_subtrees(tree, roots, params)
    return tree, UpdateStats(len(pos), len(touched), len(roots), rebuilt)


def update_every_position(
    tree: TreeArrays, vectors: Tensor, params: BuildParams, looseness: float
) -> tuple[TreeArrays, UpdateStats]:
    """Replace all vectors (position order); measure every radius; rebuild loose subtrees.

    Args:
        tree: The tree (modified).
        vectors: ``(N, d)`` float32 new vectors in position order.
        params: Build parameters for rebuilds.
        looseness: Rebuild factor (> 1).

    Returns:
        The tree (possibly relaid out) and what was done.
    """
    tree.vectors.copy_(vectors)
    tree.radii = node_radii(tree.vectors, tree.starts, tree.counts, tree.centres)
    roots = highest_loose(tree, torch.arange(len(tree.counts)), looseness)
    rebuilt = int(tree.counts[roots].sum())
    if len(roots):
        tree = rebuild_subtrees(tree, roots, params)
    return tree, UpdateStats(len(vectors), len(tree.counts), len(roots), rebuilt)
