"""Pooling token states into one vector per text: pure functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

Pooling = Literal["mean", "cls", "last"]
"""Pooling names (the one list of them)."""
POOLING_MODES: tuple[str, ...] = get_args(Pooling)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` average of the ``(B, L, D)`` states over real tokens (``mask`` is ``(B, L)``)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    summed = (hidden * weights).sum(dim=1)  # (B, D)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` state of the first token."""
    del mask
    return hidden[:, 0]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` state of each row's last real token; works with left or right padding."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (L,)
    last = (mask.to(torch.long) * positions).argmax(dim=1)  # (B,) index of last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
    "last": last_token_pool,
}


def get_pooler(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Pooling function by name (``mean``, ``cls``, ``last``)."""
    if mode not in POOLERS:
        raise ValueError(f"unknown pooling {mode!r}; choose one of {sorted(POOLERS)}")
    return POOLERS[mode]
