"""Build the pieces a run needs from its config: model, loss, Gradient Cache engine.

Registries map config names to components, so a config picks them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch

from dualforge.config import GradCacheConfig, LossConfig, ModelConfig, Precision
from dualforge.data import TrainingExample
from dualforge.gradcache import GradCache
from dualforge.losses import LossOutput, MatryoshkaLoss, default_dims, info_nce
from dualforge.modeling import DualEncoder, load_model
from dualforge.modeling.rotation import add_identity_projection, sample_texts

InnerLoss = Callable[..., torch.Tensor]
LossFn = Callable[..., torch.Tensor | LossOutput]

PRECISIONS: dict[Precision, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def build_info_nce(cfg: LossConfig) -> InnerLoss:
    """InfoNCE with the config's temperature, symmetry and similarity."""
    return partial(
        info_nce, temperature=cfg.temperature, symmetric=cfg.symmetric, sim=cfg.similarity
    )


LOSSES: dict[str, Callable[[LossConfig], InnerLoss]] = {"info_nce": build_info_nce}


def build_loss(cfg: LossConfig, model_dim: int, normalized: bool, seed: int = 0) -> LossFn:
    """The loss named by ``cfg.name``, wrapped in Matryoshka nesting when configured.

    Args:
        cfg: Loss settings.
        model_dim: Size of the model's representations (default Matryoshka dims end there).
        normalized: Whether the model outputs unit vectors (then prefixes are renormalised
            unless ``loss.matryoshka.renormalize`` says otherwise).
        seed: Seed of Matryoshka dim sampling.
    """
    if cfg.name not in LOSSES:
        raise ValueError(f"loss.name={cfg.name!r} is not one of {sorted(LOSSES)}")
    inner = LOSSES[cfg.name](cfg)
    mrl = cfg.matryoshka
    if not mrl.active:
        return inner
    dims = mrl.dims or default_dims(model_dim)
    if dims[-1] > model_dim:
        raise ValueError(f"loss.matryoshka.dims={dims} exceeds the model dim {model_dim}")
    renormalize = normalized if mrl.renormalize is None else mrl.renormalize
    try:
        return MatryoshkaLoss(
            inner,
            dims,
            weights=mrl.weights or None,
            renormalize=renormalize,
            sample_dims=mrl.sample_dims or None,
            seed=seed,
        )
    except ValueError as err:
        raise ValueError(f"loss.matryoshka: {err}") from err


def build_model(cfg: ModelConfig) -> DualEncoder:
    """Load the encoder named by the config (with an identity projection if one is asked for;
    ``"pca"`` is fitted by :func:`fit_projection` when training starts)."""
    model = load_model(
        cfg.name,
        tied=cfg.tied,
        pooling=cfg.pooling,
        normalize=cfg.normalize,
        max_seq_length=cfg.doc_max_length,
        query_prefix=cfg.query_prefix,
        doc_prefix=cfg.doc_prefix,
        attention_dropout=cfg.attention_dropout,
    )
    if cfg.projection is not None:
        add_identity_projection(model)
    return model


def projection_texts(
    corpus: Mapping[str, str] | None, examples: Sequence[TrainingExample], n: int, seed: int
) -> list[str]:
    """Up to ``n`` distinct documents sampled (seeded) from the corpus, else the examples' positives."""
    pool = (
        list(corpus.values())
        if corpus
        else list(dict.fromkeys(t for ex in examples for t in ex.positives))
    )
    return sample_texts(pool, n, seed)


def build_gradcache(
    model: DualEncoder, loss: LossFn, cfg: GradCacheConfig, device: torch.device
) -> tuple[GradCache, torch.amp.GradScaler | None]:
    """The engine over the model's two towers, and a GradScaler when training in fp16."""
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
