"""Optimizer and learning-rate schedule: AdamW with linear warmup then linear decay to zero."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier at ``step``: ``step/warmup`` during warmup, then linear decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def build_optimizer(
    params: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in params:
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> LambdaLR:
    """LambdaLR for :func:`linear_warmup_decay`."""
    return LambdaLR(optimizer, lambda step: linear_warmup_decay(step, warmup, total))
