"""Fit heads and cascade thresholds on a labelled training set, and score a saved classifier.

:func:`fit_classifier` builds the label vocabulary from the training set, carves a stratified
held-out split (``heldout`` share, seeded), trains the heads on the rest, and fits one cascade
per tolerance on the held-out logits. The heads are *not* retrained on the held-out part: the
thresholds are calibrated to the heads that were trained without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dualforge.classify.cascade import DEFAULT_TOLERANCES, OperatingPoint, fit_sweep
from dualforge.classify.data import (
    LabelledSet,
    Unseen,
    build_vocab,
    encode_labels,
    stratified_split,
)
from dualforge.classify.heads import MatryoshkaHeads
from dualforge.classify.report import build_report
from dualforge.classify.train import HeadTrainConfig, head_logits, init_heads, train_heads
from dualforge.matryoshka import check_dims, nesting_dims


@dataclass(frozen=True)
class FitConfig:
    """What to fit.

    Attributes:
        kind: ``"mrl"`` (one head per dim) or ``"mrle"`` (one shared head).
        dims: Nesting dims; None uses :func:`dualforge.matryoshka.nesting_dims` of the width
            (powers of two from 32 below the width, then the width).
        normalize: L2-normalise each prefix before its head.
        heldout: Share of each class held out to fit the thresholds, ``0 < heldout < 1``.
        split_seed: Seed of the held-out split.
        tolerances: Drops below the held-out full-dim accuracy, one cascade each.
        train: Head optimisation settings.
    """

    kind: str = "mrl"
    dims: tuple[int, ...] | None = None
    normalize: bool = True
    heldout: float = 0.2
    split_seed: int = 0
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    train: HeadTrainConfig = field(default_factory=HeadTrainConfig)


@dataclass
class FittedClassifier:
    """Trained heads with their labels, cascades and held-out numbers.

    Attributes:
        heads: The trained heads (eval mode).
        labels: Class names.
        points: One fitted cascade per tolerance.
        heldout_report: :func:`~dualforge.classify.report.build_report` on the held-out split.
        history: Mean training loss per epoch.
    """

    heads: MatryoshkaHeads
    labels: tuple[str, ...]
    points: list[OperatingPoint]
    heldout_report: dict[str, Any]
    history: list[float]


def fit_classifier(
    emb: torch.Tensor, data: LabelledSet, cfg: FitConfig, show_progress: bool = True
) -> FittedClassifier:
    """Train heads and fit cascade thresholds.

    Args:
        emb: ``(N, D)`` embeddings of ``data.texts``.
        data: The labelled training set.
        cfg: What to fit.
        show_progress: Show a progress bar while training.

    Returns:
        The fitted classifier.

    Raises:
        ValueError: ``emb`` does not match ``data``, the dims are invalid, or the held-out split is
            empty (every class has a single example, or ``heldout`` is 0).
    """
    if emb.dim() != 2 or len(emb) != len(data):
        raise ValueError(f"need (N, D) embeddings for {len(data)} texts, got {tuple(emb.shape)}")
    dims = check_dims(cfg.dims or nesting_dims(emb.shape[1]), full=emb.shape[1])
    labels = build_vocab(data.labels)
    targets = encode_labels(data, labels)  # (N,)
    fit_idx, held_idx = stratified_split(targets, cfg.heldout, cfg.split_seed)
    if len(held_idx) == 0:
        raise ValueError(
            f"the held-out split is empty (heldout={cfg.heldout}); thresholds need held-out examples"
        )
    heads = init_heads(cfg.kind, dims, len(labels), cfg.normalize, cfg.train.seed)
    history = train_heads(heads, emb[fit_idx], targets[fit_idx], cfg.train, show_progress)
    held_logits = head_logits(heads, emb[held_idx])  # (M, N_held, C)
    points = fit_sweep(held_logits, targets[held_idx], cfg.tolerances)
    report = build_report(held_logits, targets[held_idx], dims, points)
    report.update(num_fit=len(fit_idx))
    return FittedClassifier(heads, labels, points, report, history)


def points_to_json(points: Sequence[OperatingPoint]) -> list[dict[str, Any]]:
    """Operating points as JSON-ready dicts."""
    return [
        {"tolerance": p.tolerance, "target": p.target, "thresholds": list(p.thresholds)}
        for p in points
    ]


def points_from_json(rows: Sequence[dict[str, Any]]) -> list[OperatingPoint]:
    """Operating points from :func:`points_to_json` output.

    Raises:
        ValueError: A row lacks a field.
    """
    try:
        return [
            OperatingPoint(
                float(r["tolerance"]), float(r["target"]), tuple(float(t) for t in r["thresholds"])
            )
            for r in rows
        ]
    except (KeyError, TypeError) as err:
        raise ValueError(f"invalid operating point ({err!r})") from err


def evaluate_classifier(
    heads: MatryoshkaHeads,
    emb: torch.Tensor,
    data: LabelledSet,
    labels: Sequence[str],
    points: Sequence[OperatingPoint],
    unseen: Unseen = "error",
) -> dict[str, Any]:
    """Report of saved heads and cascades on a labelled set.

    Args:
        heads: The heads.
        emb: ``(N, D)`` embeddings of ``data.texts``.
        data: The labelled set.
        labels: The training label vocabulary of the heads.
        points: Operating points to score.
        unseen: ``"error"`` or ``"count"`` for labels not in ``labels`` (see
            :func:`~dualforge.classify.data.encode_labels`).

    Returns:
        A :func:`~dualforge.classify.report.build_report` dict.

    Raises:
        DataError: An unseen label with ``unseen="error"``.
        ValueError: ``emb`` does not match ``data``.
    """
    if emb.dim() != 2 or len(emb) != len(data):
        raise ValueError(f"need (N, D) embeddings for {len(data)} texts, got {tuple(emb.shape)}")
    targets = encode_labels(data, labels, unseen)  # (N,)
    logits = head_logits(heads, emb)  # (M, N, C)
    return build_report(logits, targets, heads.dims, points)
