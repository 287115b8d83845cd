"""Losses: pure functions of representations, and the loss contract they are called under.

Every loss the training loop runs is a :class:`Loss`: ``loss(q, d, inputs, rows) ->
LossOutput`` (:mod:`dualforge.losses.inputs`). InfoNCE and MaxSim InfoNCE are exact and tiled
(:mod:`dualforge.losses.tiles`): no ``(B, B * n)`` matrix is ever held, Matryoshka dims are scored
in one pass, false negatives are masked from int64 codes (:class:`PositiveCodes`).

``default_dims`` (:func:`dualforge.matryoshka.nesting_dims`) and ``prefix`` are re-exported from
:mod:`dualforge.matryoshka`, where the Matryoshka helpers live.
"""

from dualforge.losses.contrastive import (
    InfoNCE,
    docs_per_query,
    info_nce,
    nested_info_nce,
    similarity,
)
from dualforge.losses.distill import (
    Distillation,
    ListwiseKL,
    dense_candidates,
    margin_mse,
    maxsim_candidates,
    normalize_scores,
)
from dualforge.losses.inputs import TEACHER_SCORES, Loss, LossInputs, PositiveCodes, all_rows
from dualforge.losses.matryoshka import MatryoshkaLoss, Nesting, matryoshka_losses
from dualforge.losses.maxsim import (
    MaxSimNCE,
    maxsim,
    maxsim_nce,
    nested_maxsim_nce,
    token_prefix,
)
from dualforge.losses.output import LossOutput, split_output
from dualforge.losses.tiles import BUDGET, tile_sizes
from dualforge.matryoshka import nesting_dims as default_dims
from dualforge.matryoshka import prefix

__all__ = [
    "BUDGET",
    "TEACHER_SCORES",
    "Distillation",
    "InfoNCE",
    "ListwiseKL",
    "Loss",
    "LossInputs",
    "LossOutput",
    "MatryoshkaLoss",
    "MaxSimNCE",
    "Nesting",
    "PositiveCodes",
    "all_rows",
    "default_dims",
    "dense_candidates",
    "docs_per_query",
    "info_nce",
    "margin_mse",
    "matryoshka_losses",
    "maxsim",
    "maxsim_candidates",
    "maxsim_nce",
    "nested_info_nce",
    "nested_maxsim_nce",
    "normalize_scores",
    "prefix",
    "similarity",
    "split_output",
    "tile_sizes",
    "token_prefix",
]
