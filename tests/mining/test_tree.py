"""Tree layout invariants, exact top-k against brute force, save/load, input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dualforge.mining import TreeIndex
from tests.mining.helpers import clustered, near


def assert_valid(index: TreeIndex, x: np.ndarray) -> None:
    """Every point in exactly one leaf, ranges nest, counts add up, radii cover the points."""
    a = index.arrays
    n = len(x)
    assert sorted(a.ids.tolist()) == list(range(n))
    np.testing.assert_array_equal(index.positions[a.ids].numpy(), np.arange(n))
    np.testing.assert_array_equal(a.vectors.numpy(), x[a.ids.numpy()])
    leaves = torch.nonzero(a.child_count == 0).view(-1)
    order = torch.argsort(a.starts[leaves])
    starts, counts = a.starts[leaves][order], a.counts[leaves][order]
    assert int(starts[0]) == 0 and torch.equal(starts[1:], torch.cumsum(counts, 0)[:-1])
    assert int(counts.sum()) == n and int(counts.min()) >= 1
    assert int(a.counts[0]) == n and int(a.parent[0]) == -1
    for node in torch.nonzero(a.child_count > 0).view(-1).tolist():
        kids = torch.arange(
            int(a.child_start[node]), int(a.child_start[node] + a.child_count[node])
        )
        assert torch.all(a.parent[kids] == node)
        assert int(a.counts[kids].sum()) == int(a.counts[node])
        kid_starts = torch.cat([a.starts[node : node + 1], (a.starts[kids] + a.counts[kids])[:-1]])
        assert torch.equal(a.starts[kids], kid_starts)  # contiguous, in order
    for node in range(index.num_nodes):
        s, c = int(a.starts[node]), int(a.counts[node])
        far = float(
            np.linalg.norm(x[a.ids[s : s + c].numpy()] - a.centres[node].numpy(), axis=1).max()
        )
        assert far <= float(a.radii[node]) * (1 + 1e-5) + 1e-6, f"node {node} radius too small"


def brute_topk(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def assert_topk(got: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> None:
    """Same ids, except where near-equal scores may swap places."""
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5)
    differ = got[1] != ref[1]
    assert np.all(np.abs(got[0] - ref[0])[differ] < 1e-5)
    assert differ.mean() < 0.01


@pytest.mark.parametrize(("branching", "leaf_size"), [(2, 8), (4, 16), (16, 64)])
def test_build_invariants(branching: int, leaf_size: int) -> None:
    x = clustered(3000, 16, clusters=15, seed=branching)
    index = TreeIndex.build(x, branching=branching, leaf_size=leaf_size, seed=1)
    assert_valid(index, x)
    assert int(index.arrays.counts[index.arrays.child_count == 0].max()) <= leaf_size
    assert int(index.arrays.child_count.max()) <= branching
    assert index.memory_bytes() > x.nbytes


def test_duplicates_and_tiny_inputs() -> None:
    x = np.repeat(clustered(3, 8), 50, axis=0)  # 150 points, 3 distinct
    index = TreeIndex.build(x, leaf_size=4, branching=3)
    assert_valid(index, x)
    one = TreeIndex.build(x[:1])
    assert one.num_nodes == 1
    _, i = one.search(x[:2], 5)
    assert i.shape == (2, 1) and np.all(i == 0)


@pytest.mark.parametrize("d", [8, 48])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_search_matches_brute_force(d: int, k: int) -> None:
    x = clustered(4000, d, clusters=25, seed=d)
    q = np.concatenate([near(x, 20, seed=k), np.random.default_rng(k).normal(size=(5, d))])
    q = q.astype(np.float32)  # near targets and far off (non-unit) queries
    index = TreeIndex.build(x, branching=8, leaf_size=32)
    assert_topk(index.search(q, k, per_round=3), brute_topk(q, x, k))


def test_search_after_updates() -> None:
    x = clustered(3000, 16, seed=3)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    rng = np.random.default_rng(0)
    ids = rng.choice(len(x), 300, replace=False)
    moved = clustered(300, 16, seed=9)  # anywhere on the sphere
    x2 = x.copy()
    x2[ids] = moved
    index.update(ids, moved)
    q = near(x2, 30)
    assert_valid(index, x2)
    assert_topk(index.search(q, 20), brute_topk(q, x2, 20))


def test_save_load_roundtrip(tmp_path: Path) -> None:
    x = clustered(2000, 16, seed=4)
    index = TreeIndex.build(x, leaf_size=16)
    index.update(np.arange(10), clustered(10, 16, seed=8))
    index.save(tmp_path / "tree.safetensors")
    back = TreeIndex.load(tmp_path / "tree.safetensors")
    assert back.params == index.params
    for name in ("vectors", "ids", "centres", "radii", "build_radii", "counts", "starts",
                 "child_start", "child_count", "parent", "depth"):  # fmt: skip
        assert torch.equal(getattr(back.arrays, name), getattr(index.arrays, name)), name
    q = near(x, 4)
    np.testing.assert_array_equal(back.search(q, 7)[1], index.search(q, 7)[1])
    a = index.sample(q, 50, temperature=0.1, seed=3)
    b = back.sample(q, 50, temperature=0.1, seed=3)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_errors(tmp_path: Path) -> None:
    x = clustered(200, 8)
    index = TreeIndex.build(x, leaf_size=8)
    with pytest.raises(ValueError, match="2-d"):
        TreeIndex.build(x[0])
    with pytest.raises(ValueError, match="0 vectors"):
        TreeIndex.build(x[:0])
    with pytest.raises(ValueError, match="branching"):
        TreeIndex.build(x, branching=1)
    with pytest.raises(ValueError, match="NaN"):
        TreeIndex.build(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="dimension 4"):
        index.search(x[:, :4], 3)
    with pytest.raises(ValueError, match="k and per_round"):
        index.search(x[:2], 0)
    with pytest.raises(ValueError, match="temperature"):
        index.sample(x[:2], 3, temperature=0.0)
    with pytest.raises(ValueError, match="eta"):
        index.sample(x[:2], 3, temperature=1.0, eta=1.0)
    with pytest.raises(ValueError, match="3 rows for 2 queries"):
        index.sample(x[:2], 3, temperature=1.0, exclude=[[1], [2], [3]])
    with pytest.raises(ValueError, match="excluded ids"):
        index.sample(x[:2], 3, temperature=1.0, exclude=np.array([[1], [200]]))
    with pytest.raises(ValueError, match="excludes all 200"):
        index.sample(x[:1], 3, temperature=1.0, exclude=[list(range(200))])
    with pytest.raises(ValueError, match="unique ids"):
        index.update([1, 1], x[:2])
    with pytest.raises(ValueError, match="one vector per id"):
        index.update([1, 2], x[:3])
    with pytest.raises(ValueError, match=r"ids must be in 0\.\.199"):
        index.update([200], x[:1])
    with pytest.raises(ValueError, match="looseness"):
        index.update_all(x, looseness=1.0)
    with pytest.raises(ValueError, match="need 200 vectors"):
        index.update_all(x[:10])
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type
        TreeIndex.load(tmp_path / "other.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a saved TreeIndex"):
        TreeIndex.load(tmp_path / "plain.safetensors")
