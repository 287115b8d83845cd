"""Negative selection: top-k with skip and softmax draws, from a tree or by brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge.mining import TreeIndex, correct_drift, drift_error
from dualforge.mining.negatives import exclusion_matrix, mine_negatives
from tests.mining.helpers import clustered, near, softmax


def _expected_topk(q: np.ndarray, x: np.ndarray, k: int, skip: int, exclude: list[list[int]]):  # type: ignore[no-untyped-def]
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    out = []
    for i, row in enumerate(scores):
        order = [j for j in np.argsort(-row, kind="stable") if j not in set(exclude[i])]
        out.append(order[skip : skip + k])
    return np.array(out)


@pytest.mark.parametrize("skip", [0, 3])
def test_topk_with_skip_matches_brute_force(skip: int) -> None:
    x = clustered(600, 16, seed=3)
    q = near(x, 12, seed=4)
    # exclude each query's 5 best targets (as known positives) plus a random one
    best = np.argsort(-(q @ x.T), axis=1)[:, :5]
    exclude = [[*map(int, b), 100 + i] for i, b in enumerate(best)]
    expected = _expected_topk(q, x, 7, skip, exclude)
    rows = exclusion_matrix(exclude)
    index = TreeIndex.build(x, branching=4, leaf_size=16, seed=0)
    tree = mine_negatives(index, q, 7, mode="topk", skip_first=skip, exclude=rows)
    brute = mine_negatives(x, q, 7, mode="topk", skip_first=skip, exclude=rows)
    np.testing.assert_array_equal(brute, expected)
    np.testing.assert_array_equal(tree, expected)
    assert not any(set(t) & set(e) for t, e in zip(tree.tolist(), exclude))


@pytest.mark.parametrize("source", ["tree", "brute"])
def test_softmax_draws_follow_the_softmax_and_skip_positives(source: str) -> None:
    x = clustered(300, 8, clusters=5, seed=5)
    q = near(x, 3, seed=6)
    exclude = [list(map(int, np.argsort(-(q[i] @ x.T))[:10])) for i in range(3)]
    target = softmax(q, x, 0.1, exclude)
    src = TreeIndex.build(x, branching=4, leaf_size=8) if source == "tree" else x
    gen = torch.Generator().manual_seed(0)
    ids = mine_negatives(
        src, q, 20_000, mode="softmax", temperature=0.1, exclude=exclusion_matrix(exclude),
        generator=gen,
    )  # fmt: skip
    for i in range(3):
        assert not set(ids[i].tolist()) & set(exclude[i])
        freq = np.bincount(ids[i], minlength=len(x)) / ids.shape[1]
        assert 0.5 * np.abs(freq - target[i]).sum() < 0.05  # total variation


def test_draws_are_reproducible_with_a_seeded_generator() -> None:
    x = clustered(200, 8, seed=7)
    q, rows = near(x, 4, seed=8), exclusion_matrix([[0], [1], [2], [3]])
    index = TreeIndex.build(x, leaf_size=8)

    def draw() -> np.ndarray:
        gen = torch.Generator().manual_seed(11)
        return mine_negatives(index, q, 9, mode="softmax", exclude=rows, generator=gen)

    np.testing.assert_array_equal(draw(), draw())


def test_errors_name_the_problem() -> None:
    x = clustered(20, 4, seed=9)
    q = near(x, 1, seed=1)
    with pytest.raises(ValueError, match="mode='nope'"):
        mine_negatives(x, q, 2, mode="nope", exclude=exclusion_matrix([[]]))
    with pytest.raises(ValueError, match="keeps 2 of 20 targets"):
        mine_negatives(x, q, 3, mode="topk", exclude=exclusion_matrix([list(range(18))]))
    index = TreeIndex.build(x)
    with pytest.raises(ValueError, match="keeps 0 of 20"):
        mine_negatives(index, q, 1, mode="softmax", exclude=exclusion_matrix([list(range(20))]))


def test_residual_nystrom_keeps_directions_the_landmarks_miss() -> None:
    rng = np.random.default_rng(0)
    x = clustered(2000, 32, seed=2)
    drift = np.eye(32) + 0.05 * rng.normal(size=(32, 32))
    y = (x @ drift).astype(np.float32)
    rows = np.arange(0, 2000, 200)  # 10 landmarks < 32 dims
    stale = drift_error(x, y)
    plain = drift_error(correct_drift(x, rows, y[rows]), y)
    residual = drift_error(correct_drift(x, rows, y[rows], residual=True), y)
    assert plain > stale  # the plain map projects onto a 10-dim span
    assert residual < 0.8 * stale
    with pytest.raises(ValueError, match="residual needs"):
        correct_drift(x, rows, y[rows, :16], residual=True)
