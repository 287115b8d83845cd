"""Build the pieces a run needs from its config: model, loss, Gradient Cache engine.

Registries map config names to components, so a config picks them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from dualforge.config import GradCacheConfig, LossConfig, ModelConfig
from dualforge.gradcache import GradCache
from dualforge.losses import info_nce
from dualforge.modeling import DualEncoder, load_model

LossFn = Callable[..., torch.Tensor]

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def build_info_nce(cfg: LossConfig) -> LossFn:
    """InfoNCE with the config's temperature, symmetry and similarity."""
    return partial(
        info_nce, temperature=cfg.temperature, symmetric=cfg.symmetric, sim=cfg.similarity
    )


LOSSES: dict[str, Callable[[LossConfig], LossFn]] = {"info_nce": build_info_nce}


def build_loss(cfg: LossConfig) -> LossFn:
    """The loss function named by ``cfg.name``."""
    if cfg.name not in LOSSES:
        raise ValueError(f"loss.name={cfg.name!r} is not one of {sorted(LOSSES)}")
    return LOSSES[cfg.name](cfg)


def build_model(cfg: ModelConfig) -> DualEncoder:
    """Load the encoder named by the config."""
    return load_model(
        cfg.name,
        tied=cfg.tied,
        pooling=cfg.pooling,
        normalize=cfg.normalize,
        max_seq_length=cfg.doc_max_length,
        query_prefix=cfg.query_prefix,
        doc_prefix=cfg.doc_prefix,
        attention_dropout=cfg.attention_dropout,
    )


def build_gradcache(
    model: DualEncoder, loss: LossFn, cfg: GradCacheConfig, device: torch.device
) -> tuple[GradCache, torch.amp.GradScaler | None]:
    """The engine over the model's two towers, and a GradScaler when training in fp16."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(
            f"gradcache.precision={cfg.precision!r} is not one of {sorted(PRECISIONS)}"
        )
    dtype = PRECISIONS[cfg.precision]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    gc = GradCache(
        [model.query_encoder, model.doc_encoder],
        loss,
        cfg.chunk_size,
        token_budget=cfg.token_budget,
        sort_by_length=cfg.sort_by_length,
        keep_last_graph=cfg.keep_last_graph,
        autocast_dtype=dtype,
        scaler=scaler,
    )
    return gc, scaler
