"""Matryoshka linear heads over fixed embeddings: MRL (one head per dim) and MRL-E (one shared head).

For nesting dims ``m_1 < ... < m_M = D`` and embeddings ``emb`` of shape ``(B, D)``:

- **MRL**: an independent ``nn.Linear(m, C)`` per dim, ``logits_m = head_m(emb[:, :m])``;
- **MRL-E** (efficient): one weight ``W`` of shape ``(C, D)`` and bias ``b`` of shape ``(C,)``;
  dim ``m`` uses the first ``m`` columns, ``logits_m = emb[:, :m] @ W[:, :m].T + b``.

Both return stacked logits ``(M, B, C)``. With ``normalize=True`` each prefix ``emb[:, :m]`` is
L2-normalised before its head (the right choice for encoders that normalise their output, whose
short prefixes otherwise have small and varying norms). Dims, their checks and the prefix come
from :mod:`dualforge.matryoshka`. The loss is
``sum_m c_m * cross_entropy(logits_m, y)`` (Kusupati et al. 2022, eq. 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dualforge.matryoshka import check_dims, prefix

HeadKind = Literal["mrl", "mrle"]
KINDS: tuple[HeadKind, ...] = ("mrl", "mrle")


class MatryoshkaHeads(nn.Module):
    """Base of both kinds: nesting dims, class count, prefix normalisation.

    Args:
        dims: Strictly increasing nesting dims; the last is the embedding width used.
        num_classes: Number of classes ``C``.
        normalize: L2-normalise each prefix before its head.
    """

    kind: HeadKind

    def __init__(self, dims: Sequence[int], num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.dims = check_dims(dims)
        self.num_classes = num_classes
        self.normalize = normalize

    def _check_input(self, emb: torch.Tensor) -> None:
        if emb.dim() != 2 or emb.shape[1] < self.dims[-1]:
            raise ValueError(
                f"expected embeddings (B, D) with D >= {self.dims[-1]}, got {tuple(emb.shape)}"
            )


class MRLHeads(MatryoshkaHeads):
    """MRL: one independent ``nn.Linear(m, C)`` per nesting dim ``m``."""

    kind: HeadKind = "mrl"

    def __init__(self, dims: Sequence[int], num_classes: int, normalize: bool = True) -> None:
        super().__init__(dims, num_classes, normalize)
        self.heads = nn.ModuleList(nn.Linear(m, num_classes) for m in self.dims)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(M, B, C)`` for embeddings ``(B, D)``."""
        self._check_input(emb)
        logits = [
            head(prefix(emb, m, self.normalize)) for m, head in zip(self.dims, self.heads)
        ]  # M x (B, C)
        return torch.stack(logits)  # (M, B, C)


class MRLEHead(MatryoshkaHeads):
    """MRL-E: one weight ``(C, D)`` and one bias ``(C,)``; dim ``m`` uses the first ``m`` columns."""

    kind: HeadKind = "mrle"

    def __init__(self, dims: Sequence[int], num_classes: int, normalize: bool = True) -> None:
        super().__init__(dims, num_classes, normalize)
        full = nn.Linear(self.dims[-1], num_classes)  # the usual Linear initialisation
        self.weight = nn.Parameter(full.weight.detach().clone())  # (C, D)
        self.bias = nn.Parameter(full.bias.detach().clone())  # (C,)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(M, B, C)`` for embeddings ``(B, D)``."""
        self._check_input(emb)
        logits = [
            prefix(emb, m, self.normalize) @ self.weight[:, :m].T + self.bias for m in self.dims
        ]  # M x (B, C)
        return torch.stack(logits)  # (M, B, C)


def build_heads(
    kind: str, dims: Sequence[int], num_classes: int, normalize: bool = True
) -> MatryoshkaHeads:
    """Heads of ``kind`` (``"mrl"`` or ``"mrle"``).

    Raises:
        ValueError: Unknown ``kind``.
    """
    if kind == "mrl":
        return MRLHeads(dims, num_classes, normalize)
    if kind == "mrle":
        return MRLEHead(dims, num_classes, normalize)
    raise ValueError(f"unknown head kind {kind!r}; choose one of {', '.join(KINDS)}")


def matryoshka_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """``sum_m c_m * CE(logits[m], targets)`` (mean over the batch inside each CE).

    Args:
        logits: ``(M, B, C)`` logits per nesting dim.
        targets: ``(B,)`` class ids.
        weights: ``c_m`` per dim (default all 1).

    Returns:
        Scalar loss.

    Raises:
        ValueError: Shapes or the number of weights do not match.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[1:2]:
        raise ValueError(
            f"expected logits (M, B, C) and targets (B,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    M, B, C = logits.shape
    per_dim = F.cross_entropy(
        logits.reshape(M * B, C), targets.repeat(M), reduction="none"
    ).reshape(M, B)  # (M, B)
    c = torch.ones(M, dtype=logits.dtype, device=logits.device)
    if weights is not None:
        if len(weights) != M:
            raise ValueError(f"{len(weights)} dim weights for {M} dims")
        c = torch.tensor(list(weights), dtype=logits.dtype, device=logits.device)  # (M,)
    return (c * per_dim.mean(dim=1)).sum()
