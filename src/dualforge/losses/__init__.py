"""Losses: pure functions of representations (and a Matryoshka wrapper over any of them)."""

from dualforge.losses.contrastive import docs_per_query, false_negative_mask, info_nce, similarity
from dualforge.losses.matryoshka import (
    MatryoshkaLoss,
    default_dims,
    matryoshka_losses,
    prefix,
)
from dualforge.losses.output import LossOutput, split_output

__all__ = [
    "LossOutput",
    "MatryoshkaLoss",
    "default_dims",
    "docs_per_query",
    "false_negative_mask",
    "info_nce",
    "matryoshka_losses",
    "prefix",
    "similarity",
    "split_output",
]
