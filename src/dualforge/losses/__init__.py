"""Losses: pure functions of representations."""

from dualforge.losses.contrastive import docs_per_query, false_negative_mask, info_nce, similarity

__all__ = ["docs_per_query", "false_negative_mask", "info_nce", "similarity"]
