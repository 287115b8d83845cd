"""Adaptive (cascade) classification over Matryoshka heads, threshold fitting, and the oracle.

Following the adaptive classification of Kusupati et al. (2022), an example goes through the
nesting dims in ascending order and stops at the first dim ``m`` whose maximum softmax probability
is at least ``threshold_m``; the last dim always answers. Its cost is the dim it stopped at, and
the **expected dims** of a set is the mean of that over its examples.

**Threshold rule** (:func:`fit_thresholds`): stopping early may cost at most ``tolerance`` accuracy
*on the examples that stop*, compared with the full (last) dim on those same examples. Dims are
fitted in ascending order on a held-out set. For dim ``m``, among the held-out examples that did
not stop at an earlier dim, ``threshold_m`` is the *smallest* confidence ``t`` such that the
examples with confidence ``>= t`` (exactly those that would stop at ``m``) satisfy
``acc_m(group) >= acc_full(group) - tolerance``; if no ``t`` does, ``threshold_m = NEVER`` (no
example stops there). Each dim thus takes as many examples as it can within the budget, and since
every group loses at most ``tolerance`` and the last group loses nothing, **the cascade's held-out
accuracy is at least the full-dim held-out accuracy minus ``tolerance``** (a guarantee on the
held-out set; on new data it holds as far as the held-out set is representative).
Comparing with the full dim on the same group matters: requiring only ``acc_m(group) >=
acc_full(all) - tolerance`` lets easy examples, which the full dim would almost always get right,
stop at a dim that is right less often, and leaves the last dim the hard rest. :func:`fit_sweep`
fits one cascade per tolerance: tolerance 0 keeps full-dim held-out accuracy, larger tolerances
trade accuracy for fewer dims.

**Oracle** (:func:`oracle`): each example uses the smallest dim whose head is correct. Oracle
accuracy is the share of examples that some dim gets right; oracle expected dims charges examples
that no dim gets right the last dim (``expected_dims_correct`` averages over the others only).

All functions are pure and vectorised over examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

NEVER = 2.0
"""A threshold above every probability: no example stops at that dim."""


def confidences(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum softmax probability and predicted class per dim and example.

    Args:
        logits: ``(M, B, C)`` logits.

    Returns:
        ``(M, B)`` float confidences and ``(M, B)`` int64 predictions.
    """
    pred = logits.argmax(dim=-1)  # (M, B), the same predictions as the fixed-dim heads
    probs = torch.softmax(logits.float(), dim=-1)  # (M, B, C)
    conf = probs.gather(-1, pred[..., None]).squeeze(-1)  # (M, B)
    return conf, pred


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """Index along dim 0 of the first True per column, or ``len(mask)`` when a column has none.

    Args:
        mask: ``(M, B)`` booleans.

    Returns:
        ``(B,)`` int64 indices.
    """
    return (mask.long().cumsum(dim=0) == 0).sum(dim=0)  # (B,) leading Falses


def cascade_stops(conf: torch.Tensor, thresholds: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """The dim index each example stops at.

    Args:
        conf: ``(M, B)`` confidences.
        thresholds: ``(M,)`` thresholds (the last is ignored: the last dim always answers).

    Returns:
        ``(B,)`` int64 indices into the dims.

    Raises:
        ValueError: The number of thresholds is not ``M``.
    """
    th = torch.as_tensor(thresholds, dtype=conf.dtype, device=conf.device)  # (M,)
    if th.shape != conf.shape[:1]:
        raise ValueError(f"{th.numel()} thresholds for {conf.shape[0]} dims")
    passes = conf >= th[:, None]  # (M, B)
    passes[-1] = True
    return first_true(passes)  # (B,)


def cascade_predict(
    logits: torch.Tensor, thresholds: torch.Tensor | Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cascade predictions and the dim index each example stopped at.

    Args:
        logits: ``(M, B, C)`` logits.
        thresholds: ``(M,)`` thresholds.

    Returns:
        ``(B,)`` predicted classes and ``(B,)`` stop indices.
    """
    conf, pred = confidences(logits)  # (M, B)
    stops = cascade_stops(conf, thresholds)  # (B,)
    return pred.gather(0, stops[None]).squeeze(0), stops


@dataclass(frozen=True)
class CascadeResult:
    """How a cascade did on a set.

    Attributes:
        thresholds: The thresholds used, one per dim.
        accuracy: Share of examples classified correctly.
        expected_dims: Mean dim used per example.
        stop_fraction: Share of examples stopping at each dim.
    """

    thresholds: tuple[float, ...]
    accuracy: float
    expected_dims: float
    stop_fraction: tuple[float, ...]


def cascade_evaluate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dims: Sequence[int],
    thresholds: torch.Tensor | Sequence[float],
) -> CascadeResult:
    """Accuracy, expected dims and stop shares of the cascade with ``thresholds``.

    Args:
        logits: ``(M, B, C)`` logits.
        targets: ``(B,)`` class ids (``-1`` for a label no head knows: always wrong).
        dims: The ``M`` nesting dims.
        thresholds: ``(M,)`` thresholds.

    Returns:
        The result.
    """
    pred, stops = cascade_predict(logits, thresholds)  # (B,), (B,)
    dim_sizes = torch.tensor(list(dims), dtype=torch.float64)  # (M,)
    counts = torch.bincount(stops, minlength=len(dims)).double()  # (M,)
    th = torch.as_tensor(thresholds, dtype=torch.float64)
    return CascadeResult(
        thresholds=tuple(th.tolist()),
        accuracy=float((pred == targets).double().mean()),
        expected_dims=float(dim_sizes[stops].mean()),
        stop_fraction=tuple((counts / len(stops)).tolist()),
    )


def fixed_dim_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(M,)`` accuracy of each dim's head used alone."""
    pred = logits.argmax(dim=-1)  # (M, B)
    return (pred == targets[None]).double().mean(dim=1)  # (M,)


@dataclass(frozen=True)
class OracleResult:
    """The oracle: each example uses the smallest dim whose head is correct.

    Attributes:
        accuracy: Share of examples some dim classifies correctly.
        expected_dims: Mean dim used; examples no dim gets right are charged the last dim.
        expected_dims_correct: Mean dim used over the examples some dim gets right (0 if none).
        first_correct_fraction: Share of all examples whose smallest correct dim is each dim.
    """

    accuracy: float
    expected_dims: float
    expected_dims_correct: float
    first_correct_fraction: tuple[float, ...]


def oracle(logits: torch.Tensor, targets: torch.Tensor, dims: Sequence[int]) -> OracleResult:
    """The oracle upper bound of adaptive classification.

    Args:
        logits: ``(M, B, C)`` logits.
        targets: ``(B,)`` class ids.
        dims: The ``M`` nesting dims.

    Returns:
        The oracle numbers.
    """
    correct = logits.argmax(dim=-1) == targets[None]  # (M, B)
    solved = correct.any(dim=0)  # (B,)
    first = first_true(correct).clamp(max=len(dims) - 1)  # (B,)
    dim_sizes = torch.tensor(list(dims), dtype=torch.float64)  # (M,)
    used = torch.where(solved, dim_sizes[first], dim_sizes[-1])  # (B,)
    counts = torch.bincount(first[solved], minlength=len(dims)).double()  # (M,)
    n_solved = int(solved.sum())
    return OracleResult(
        accuracy=float(solved.double().mean()),
        expected_dims=float(used.mean()),
        expected_dims_correct=float(used[solved].mean()) if n_solved else 0.0,
        first_correct_fraction=tuple((counts / len(first)).tolist()),
    )


def smallest_threshold(conf: torch.Tensor, score: torch.Tensor, bound: float) -> float:
    """The smallest confidence ``t`` with ``mean(score[conf >= t]) >= bound``.

    Args:
        conf: ``(n,)`` confidences.
        score: ``(n,)`` per-example values (e.g. gain in correctness over the full dim).
        bound: The least mean ``score`` the group at or above ``t`` may have.

    Returns:
        ``t`` (one of the ``conf`` values), or :data:`NEVER` when no cut reaches ``bound``.
    """
    if conf.numel() == 0:
        return NEVER
    order = torch.argsort(conf, descending=True, stable=True)
    c = conf[order]  # (n,) descending
    sums = score[order].double().cumsum(dim=0)  # (n,)
    means = sums / torch.arange(1, len(c) + 1, dtype=torch.float64)  # (n,) group means by cut
    cut = torch.ones_like(c, dtype=torch.bool)
    cut[:-1] = c[:-1] > c[1:]  # only the last of a run of equal confidences is a valid cut
    valid = torch.nonzero(cut & (means >= bound)).flatten()
    return float(c[valid[-1]]) if len(valid) else NEVER


def fit_thresholds(conf: torch.Tensor, correct: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Per-dim thresholds by the rule in the module docstring.

    Args:
        conf: ``(M, B)`` held-out confidences.
        correct: ``(M, B)`` booleans, whether each dim's prediction is right.
        tolerance: Accuracy each stopping group may lose against the last dim on that group.

    Returns:
        ``(M,)`` float64 thresholds; the last is 0 (the last dim always answers).
    """
    M = conf.shape[0]
    thresholds = torch.zeros(M, dtype=torch.float64)
    remaining = torch.ones(conf.shape[1], dtype=torch.bool)  # (B,)
    full = correct[-1].double()  # (B,)
    for m in range(M - 1):
        gain = correct[m].double() - full  # (B,) +1 / 0 / -1 against the full dim
        t = smallest_threshold(conf[m][remaining], gain[remaining], -tolerance)
        thresholds[m] = t
        remaining &= conf[m] < t
    return thresholds


@dataclass(frozen=True)
class OperatingPoint:
    """One fitted cascade.

    Attributes:
        tolerance: Accuracy a stopping group may lose against the full dim.
        target: The held-out accuracy the cascade is guaranteed to reach (``acc_full - tolerance``).
        thresholds: One per dim.
    """

    tolerance: float
    target: float
    thresholds: tuple[float, ...]


DEFAULT_TOLERANCES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)


def fit_sweep(
    logits: torch.Tensor, targets: torch.Tensor, tolerances: Sequence[float] = DEFAULT_TOLERANCES
) -> list[OperatingPoint]:
    """Fit one cascade per tolerance on held-out logits.

    Args:
        logits: ``(M, B, C)`` held-out logits.
        targets: ``(B,)`` held-out class ids.
        tolerances: Accuracy each stopping group may lose against the full dim.

    Returns:
        One operating point per tolerance, in the given order.
    """
    conf, pred = confidences(logits)  # (M, B)
    correct = pred == targets[None]  # (M, B)
    full_acc = float(correct[-1].double().mean())
    points = []
    for tol in tolerances:
        th = fit_thresholds(conf, correct, tol)
        points.append(OperatingPoint(float(tol), full_acc - tol, tuple(th.tolist())))
    return points
