"""Encoders over Hugging Face transformers, pooling, and sentence-transformers I/O."""

from dualforge.modeling.encoder import DualEncoder, Encoder
from dualforge.modeling.io import load_model, save_model
from dualforge.modeling.late_interaction import LateInteractionModel
from dualforge.modeling.names import resolve_model_path
from dualforge.modeling.pooling import cls_pool, get_pooler, last_token_pool, mean_pool

Model = DualEncoder | LateInteractionModel
"""Either kind of model a run trains: one vector per text, or one per token."""

__all__ = [
    "DualEncoder",
    "Encoder",
    "LateInteractionModel",
    "Model",
    "cls_pool",
    "get_pooler",
    "last_token_pool",
    "load_model",
    "mean_pool",
    "resolve_model_path",
    "save_model",
]
