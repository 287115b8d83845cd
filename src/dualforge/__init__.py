"""dualforge: train dual encoders with Gradient Cache, Matryoshka embeddings and mined negatives."""

from dualforge.gradcache import GradCache

__all__ = ["GradCache"]
__version__ = "0.1.0"
