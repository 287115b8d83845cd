"""Cascade decisions, threshold fitting and the oracle against per-example Python references."""

from __future__ import annotations

import math

import pytest
import torch

from dualforge.classify import (
    NEVER,
    cascade_evaluate,
    cascade_predict,
    cascade_stops,
    confidences,
    fit_sweep,
    fit_thresholds,
    fixed_dim_accuracy,
    oracle,
)
from dualforge.classify.cascade import smallest_threshold

DIMS = (8, 16, 32, 64, 128)


def _problem(
    m: int = 5, b: int = 300, c: int = 6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits whose signal on the true class grows with the dim index."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (b,), generator=g)
    logits = torch.randn(m, b, c, generator=g, dtype=torch.float64) * 2
    for i in range(m):
        logits[i, torch.arange(b), targets] += 0.8 * i
    return logits, targets


def _softmax_max(row: list[float]) -> tuple[float, int]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    best = row.index(top)
    return exps[best] / sum(exps), best


def _reference_cascade(
    logits: torch.Tensor, thresholds: list[float]
) -> tuple[list[int], list[int]]:
    preds, stops = [], []
    M, B, _ = logits.shape
    for b in range(B):
        for m in range(M):
            conf, pred = _softmax_max(logits[m, b].tolist())
            if m == M - 1 or conf >= thresholds[m]:
                preds.append(pred)
                stops.append(m)
                break
    return preds, stops


def test_confidences_are_max_softmax() -> None:
    logits, _ = _problem(m=2, b=4)
    conf, pred = confidences(logits)
    torch.testing.assert_close(conf, torch.softmax(logits, -1).max(-1).values.float())
    assert torch.equal(pred, logits.argmax(-1))


def test_zero_thresholds_stop_at_first_dim_and_never_at_last() -> None:
    logits, targets = _problem()
    pred, stops = cascade_predict(logits, [0.0] * 5)
    assert (stops == 0).all() and torch.equal(pred, logits[0].argmax(-1))
    pred, stops = cascade_predict(logits, [1.5, NEVER, 3.0, 1.01, 0.0])
    assert (stops == 4).all() and torch.equal(pred, logits[4].argmax(-1))
    res = cascade_evaluate(logits, targets, DIMS, [NEVER] * 5)
    assert res.expected_dims == 128 and res.stop_fraction == (0, 0, 0, 0, 1)
    assert res.accuracy == pytest.approx(float(fixed_dim_accuracy(logits, targets)[-1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cascade_matches_per_example_reference(seed: int) -> None:
    logits, targets = _problem(seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    thresholds = (0.3 + 0.7 * torch.rand(5, generator=g, dtype=torch.float64)).tolist()
    pred, stops = cascade_predict(logits, thresholds)
    ref_pred, ref_stops = _reference_cascade(logits, thresholds)
    assert pred.tolist() == ref_pred and stops.tolist() == ref_stops
    assert len(set(ref_stops)) > 1  # the thresholds spread examples over several dims
    res = cascade_evaluate(logits, targets, DIMS, thresholds)
    n = len(ref_pred)
    assert res.accuracy == pytest.approx(
        sum(p == t for p, t in zip(ref_pred, targets.tolist())) / n
    )
    assert res.expected_dims == pytest.approx(sum(DIMS[s] for s in ref_stops) / n)
    assert res.stop_fraction == pytest.approx([ref_stops.count(i) / n for i in range(5)])
    with pytest.raises(ValueError, match="thresholds"):
        cascade_stops(confidences(logits)[0], [0.5, 0.5])


@pytest.mark.parametrize("seed", [0, 3])
def test_oracle_matches_brute_force(seed: int) -> None:
    logits, targets = _problem(seed=seed)
    M, B, _ = logits.shape
    used, solved, first_counts = [], 0, [0] * M
    for b in range(B):
        first = next((m for m in range(M) if int(logits[m, b].argmax()) == int(targets[b])), None)
        used.append(DIMS[first] if first is not None else DIMS[-1])
        if first is not None:
            solved += 1
            first_counts[first] += 1
    res = oracle(logits, targets, DIMS)
    assert res.accuracy == pytest.approx(solved / B)
    assert res.expected_dims == pytest.approx(sum(used) / B)
    correct_used = [
        u
        for u, b in zip(used, range(B))
        if any(int(logits[m, b].argmax()) == int(targets[b]) for m in range(M))
    ]
    assert res.expected_dims_correct == pytest.approx(sum(correct_used) / len(correct_used))
    assert res.first_correct_fraction == pytest.approx([c / B for c in first_counts])
    assert res.accuracy >= float(fixed_dim_accuracy(logits, targets).max())


def test_oracle_with_nothing_correct() -> None:
    logits = torch.zeros(3, 2, 2)
    logits[..., 1] = 1.0
    res = oracle(logits, torch.tensor([0, 0]), (4, 8, 16))
    assert (res.accuracy, res.expected_dims, res.expected_dims_correct) == (0.0, 16.0, 0.0)


def _reference_smallest(conf: list[float], score: list[float], bound: float) -> float:
    feasible = []
    for t in set(conf):
        group = [s for c, s in zip(conf, score) if c >= t]
        if sum(group) / len(group) >= bound:
            feasible.append(t)
    return min(feasible) if feasible else NEVER


@pytest.mark.parametrize("bound", [-0.3, -0.05, 0.0, 0.2, 0.6, 0.95])
def test_smallest_threshold_matches_brute_force(bound: float) -> None:
    g = torch.Generator().manual_seed(5)
    conf = torch.randint(0, 12, (60,), generator=g).float() / 12  # many ties
    score = torch.randint(-1, 2, (60,), generator=g).double()
    expected = _reference_smallest(conf.tolist(), score.tolist(), bound)
    assert smallest_threshold(conf, score, bound) == pytest.approx(expected)
    assert smallest_threshold(torch.zeros(0), torch.zeros(0), bound) == NEVER


def _reference_fit(conf: torch.Tensor, correct: torch.Tensor, tol: float) -> list[float]:
    M, B = conf.shape
    remaining = list(range(B))
    out = []
    for m in range(M - 1):
        gains = [float(correct[m, b]) - float(correct[-1, b]) for b in remaining]
        t = _reference_smallest([float(conf[m, b]) for b in remaining], gains, -tol)
        out.append(t)
        remaining = [b for b in remaining if float(conf[m, b]) < t]
    return [*out, 0.0]


@pytest.mark.parametrize("tol", [0.0, 0.02, 0.1, 0.3])
def test_fit_thresholds_matches_reference_and_keeps_accuracy(tol: float) -> None:
    logits, targets = _problem(b=150, seed=7)
    conf, pred = confidences(logits)
    correct = pred == targets[None]
    th = fit_thresholds(conf, correct, tol)
    assert th.tolist() == pytest.approx(_reference_fit(conf, correct, tol))
    full = float(correct[-1].double().mean())
    res = cascade_evaluate(logits, targets, DIMS, th)
    assert res.accuracy >= full - tol - 1e-12  # the held-out guarantee of the rule


def test_sweep_is_monotonic_at_the_extremes() -> None:
    logits, targets = _problem(seed=11)
    points = fit_sweep(logits, targets, (-2.0, 0.0, 0.01, 0.05, 0.1, 0.3, 2.0))
    full = float(fixed_dim_accuracy(logits, targets)[-1])
    assert [p.target for p in points] == pytest.approx([full - p.tolerance for p in points])
    first_dim = [p.thresholds[0] for p in points]
    assert first_dim == sorted(first_dim, reverse=True)  # more tolerance never raises threshold 0
    never = cascade_evaluate(logits, targets, DIMS, points[0].thresholds)
    assert list(points[0].thresholds[:-1]) == [NEVER] * 4 and never.expected_dims == DIMS[-1]
    everything = cascade_evaluate(logits, targets, DIMS, points[-1].thresholds)
    assert everything.expected_dims == DIMS[0]  # any loss allowed: all stop at the first dim
    results = [cascade_evaluate(logits, targets, DIMS, p.thresholds) for p in points]
    assert results[1].accuracy >= full - 1e-12
    assert results[-1].expected_dims < results[1].expected_dims <= DIMS[-1]
