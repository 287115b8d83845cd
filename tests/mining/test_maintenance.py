"""Updates keep the tree valid (radii cover, counts, ranges) and rebuild only loose subtrees."""

from __future__ import annotations

import numpy as np
import torch

from dualforge.mining import TreeIndex
from tests.mining.helpers import clustered, near
from tests.mining.test_tree import assert_topk, assert_valid, brute_topk


def loose_nodes(index: TreeIndex, looseness: float) -> int:
    a = index.arrays
    base = torch.maximum(a.build_radii, 0.1 * a.build_radii[a.parent.clamp(min=0)])
    return int(((a.radii > looseness * base) & (a.depth > 0)).sum())


def test_small_moves_refresh_radii_without_rebuild() -> None:
    x = clustered(3000, 16, seed=1)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    before = index.arrays.radii.clone()
    rng = np.random.default_rng(0)
    ids = rng.choice(len(x), 50, replace=False)
    x[ids] += 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    stats = index.update(torch.from_numpy(ids), torch.from_numpy(x[ids]))
    assert stats.subtrees_rebuilt == 0 and stats.points_rebuilt == 0
    assert 50 <= stats.nodes_refreshed < index.num_nodes
    assert_valid(index, x)
    changed = index.arrays.radii != before
    assert 0 < int(changed.sum()) <= stats.nodes_refreshed


def test_far_moves_rebuild_only_loose_subtrees() -> None:
    x = clustered(4000, 16, clusters=30, seed=2)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    rng = np.random.default_rng(1)
    ids = rng.choice(len(x), 40, replace=False)
    x[ids] = clustered(40, 16, seed=12)  # jump to random places
    stats = index.update(ids, x[ids])
    assert stats.subtrees_rebuilt >= 1
    assert 0 < stats.points_rebuilt < len(x)
    assert_valid(index, x)
    assert loose_nodes(index, 1.5) == 0
    q = near(x, 20)
    assert_topk(index.search(q, 10), brute_topk(q, x, 10))


def test_repeated_updates_stay_valid() -> None:
    x = clustered(2000, 8, seed=3)
    index = TreeIndex.build(x, branching=3, leaf_size=8)
    rng = np.random.default_rng(2)
    for step in range(5):
        ids = rng.choice(len(x), 100, replace=False)
        x[ids] = x[ids] + (0.05 * step) * rng.normal(size=(100, 8)).astype(np.float32)
        index.update(ids, x[ids], looseness=1.2)
        assert_valid(index, x)
        assert loose_nodes(index, 1.2) == 0
    np.testing.assert_array_equal(index.vectors(np.arange(10)).numpy(), x[:10])


def test_update_all_keeps_centres_when_drift_is_small() -> None:
    x = clustered(3000, 16, seed=4)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    centres = index.arrays.centres.clone()
    rng = np.random.default_rng(3)
    drifted = (x + 0.002 * rng.normal(size=x.shape)).astype(np.float32)
    stats = index.update_all(drifted)
    assert stats.subtrees_rebuilt == 0 and stats.points_updated == len(x)
    assert torch.equal(index.arrays.centres, centres)
    assert_valid(index, drifted)


def test_update_all_large_drift_rebuilds_and_stays_exact() -> None:
    x = clustered(3000, 16, seed=5)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    rng = np.random.default_rng(4)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    mixed = (0.6 * x + 0.4 * x @ rotation.T).astype(np.float32)  # a big, structured drift
    stats = index.update_all(mixed)
    assert stats.subtrees_rebuilt >= 1 and stats.points_rebuilt <= len(x)
    assert_valid(index, mixed)
    assert loose_nodes(index, 1.5) == 0
    q = near(mixed, 20)
    assert_topk(index.search(q, 15), brute_topk(q, mixed, 15))
