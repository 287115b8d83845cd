"""Losses: pure functions of representations (and a Matryoshka wrapper over any of them).

``default_dims`` (:func:`dualforge.matryoshka.nesting_dims`) and ``prefix`` are re-exported from
:mod:`dualforge.matryoshka`, where the Matryoshka helpers live.
"""

from dualforge.losses.contrastive import docs_per_query, false_negative_mask, info_nce, similarity
from dualforge.losses.matryoshka import MatryoshkaLoss, matryoshka_losses
from dualforge.losses.maxsim import maxsim, maxsim_nce, token_prefix
from dualforge.losses.output import LossOutput, split_output
from dualforge.matryoshka import nesting_dims as default_dims
from dualforge.matryoshka import prefix

__all__ = [
    "LossOutput",
    "MatryoshkaLoss",
    "default_dims",
    "docs_per_query",
    "false_negative_mask",
    "info_nce",
    "matryoshka_losses",
    "maxsim",
    "maxsim_nce",
    "prefix",
    "similarity",
    "split_output",
    "token_prefix",
]
