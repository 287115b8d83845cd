"""Gradient Cache: exact large-batch contrastive gradients with one chunk in memory."""

from dualforge.gradcache.chunking import Chunk, plan_chunks, split_batch
from dualforge.gradcache.engine import GradCache, StepResult
from dualforge.gradcache.functional import cached, replay_all
from dualforge.gradcache.rng import RngState

__all__ = [
    "Chunk",
    "GradCache",
    "RngState",
    "StepResult",
    "cached",
    "plan_chunks",
    "replay_all",
    "split_batch",
]
