"""The layout of token-level representations (multi-vector models); imports no dualforge.

Token representations travel through the Gradient Cache engine, across chunks and across
processes, as one tensor per batch, ``(B, T, D + 1)``: the token vectors ``[..., :D]`` and, in the
last channel, the token mask (1 for a token that is scored, 0 for padding, skipped punctuation or
positions another chunk did not fill). A masked position is all zeros, so zero-padding (of
trimmed chunks to the batch length, of one process's batch to the longest of all processes) is
always a masked position, and the engine needs no mask of its own.
"""

from __future__ import annotations

import torch


def split_tokens(reps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, D)`` token vectors and the ``(B, T)`` bool mask of a ``(B, T, D + 1)`` tensor."""
    if reps.dim() != 3 or reps.shape[-1] < 2:
        raise ValueError(f"token representations must be (B, T, D + 1), got {tuple(reps.shape)}")
    return reps[..., :-1], reps[..., -1] > 0.5


def join_tokens(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, D + 1)`` from ``(B, T, D)`` vectors and a ``(B, T)`` mask (masked vectors zeroed,
    so a masked position looks like padding)."""
    keep = mask.to(vectors.dtype).unsqueeze(-1)  # (B, T, 1)
    return torch.cat([vectors * keep, keep], dim=-1)
