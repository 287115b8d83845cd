"""Refresh policies on a fake encoder whose vectors drift with a step counter (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge.mining import TreeIndex
from dualforge.mining.policies import (
    DriftParams,
    DynamicPolicy,
    OraclePolicy,
    RefreshPolicy,
    StaticPolicy,
    TargetVectors,
    refresh,
)
from dualforge.mining.stores import StoreParams, StoreSpec
from tests.mining.helpers import clustered

N, D = 300, 8
TREE = StoreSpec("tree", StoreParams(branching=4, leaf_size=8, seed=0))


class Drifting:
    """``encode(rows)`` of targets that rotate a little more at each step; records calls."""

    def __init__(self) -> None:
        self.base = clustered(N, D, clusters=6, spread=0.2, seed=1)
        self.step = 0
        self.calls: list[tuple[int, int]] = []  # (step, how many rows)

    def __call__(self, rows: np.ndarray | None) -> torch.Tensor:
        idx = np.arange(N) if rows is None else rows
        self.calls.append((self.step, len(idx)))
        angle = 0.05 * self.step
        x = self.base[idx].copy()
        x[:, 0], x[:, 1] = (
            np.cos(angle) * x[:, 0] - np.sin(angle) * x[:, 1],
            np.sin(angle) * x[:, 0] + np.cos(angle) * x[:, 1],
        )
        return torch.from_numpy(x.astype(np.float32))


def run(policy, steps: int) -> tuple[TargetVectors, Drifting, list]:  # type: ignore[no-untyped-def]
    encode, targets, reports = Drifting(), TargetVectors.empty(N, TREE), []
    for step in range(1, steps + 1):
        encode.step = step
        reports.append(refresh(policy, step, targets, encode)[1])
    return targets, encode, reports


def test_static_builds_once_refresh_rebuilds_oracle_always() -> None:
    _, static, r = run(StaticPolicy(), 5)
    assert static.calls == [(1, N)] and r[0].kind == "build" and r[1:] == [None] * 4
    targets, again, r = run(RefreshPolicy(2), 5)
    assert again.calls == [(1, N), (3, N), (5, N)]
    assert [x and x.kind for x in r] == ["build", None, "rebuild", None, "rebuild"]
    assert r[2].fields["drift_error_stale"] > 0 and targets.store is not None
    assert np.all(targets.last_encoded == 5)
    targets, oracle, r = run(OraclePolicy(), 3)
    assert oracle.calls == [(1, N), (2, N), (3, N)] and r == [None] * 3
    assert targets.source().name == "flat"  # brute force whatever the spec says


def test_dynamic_reencodes_landmarks_holdout_and_recent_and_corrects_the_rest() -> None:
    policy = DynamicPolicy(2, DriftParams(landmarks=30, holdout=20, recent=5, kernel="linear"))
    encode, targets = Drifting(), TargetVectors.empty(N, TREE)
    encode.step = 1
    assert refresh(policy, 1, targets, encode)[1].kind == "build"
    policy.observe(np.array([7, 3, 7, 11]))  # 7 seen again: most recent
    assert list(policy.recent) == [3, 7, 11]
    encode.step = 3
    landmarks, holdout, recent = policy.refresh_rows(3, N)
    assert len(landmarks) == 30 and len(holdout) == 20
    assert not set(landmarks) & set(holdout)
    assert not set(recent) & (set(landmarks) | set(holdout))
    assert list(recent) == [
        r for r in (11, 7, 3) if r not in set(landmarks) | set(holdout)
    ]  # newest first
    report = refresh(policy, 3, targets, encode)[1]
    assert report.kind == "nystrom" and report.encoded == 30 + 20 + len(recent)
    assert report.fields["drift_error_corrected"] < report.fields["drift_error_stale"]
    assert policy.recent == {}  # cleared by the refresh
    rows = np.concatenate([landmarks, holdout, recent])
    assert np.all(targets.last_encoded[rows] == 3) and np.sum(targets.last_encoded == 3) == len(
        rows
    )
    np.testing.assert_allclose(targets.current()[rows], encode(rows), rtol=1e-6, atol=1e-6)
    assert refresh(policy, 4, targets, encode) == (False, None)  # not due again before step 5


def test_state_round_trips() -> None:
    targets, _, _ = run(RefreshPolicy(2), 3)
    restored = TargetVectors.empty(N, TREE)
    restored.load_state_dict(targets.state_dict())
    assert restored.last_refresh == 3
    np.testing.assert_array_equal(restored.last_encoded, targets.last_encoded)
    np.testing.assert_array_equal(restored.current(), targets.current())
    policy = DynamicPolicy(2, DriftParams())
    policy.observe(np.array([5, 1, 9]))
    again = DynamicPolicy(2, DriftParams())
    again.load_state_dict(policy.state_dict())
    assert list(again.recent) == [5, 1, 9]


def test_tree_state_dict_rebuilds_the_same_index() -> None:
    x = clustered(200, 8, clusters=4, spread=0.2, seed=2)
    index = TreeIndex.build(x, branching=4, leaf_size=8)
    copy = TreeIndex.from_state_dict(index.state_dict())
    q = x[:5]
    np.testing.assert_array_equal(index.search(q, 7)[1], copy.search(q, 7)[1])
    with pytest.raises(ValueError, match="not a TreeIndex state"):
        TreeIndex.from_state_dict({"format": "other"})
