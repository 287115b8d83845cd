"""Build the pieces a run needs from its config: model, loss, Gradient Cache engine.

Registries map config names to components, so a config picks them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch import nn

from dualforge.config import GradCacheConfig, LossConfig, ModelConfig
from dualforge.data import TrainingExample
from dualforge.gradcache import GradCache
from dualforge.gradcache.exchange import Exchange
from dualforge.gradcache.replay import ContextFactory, Encoder
from dualforge.hardware import Resolved
from dualforge.losses import (
    LossOutput,
    MatryoshkaLoss,
    default_dims,
    info_nce,
    maxsim_nce,
    prefix,
    token_prefix,
)
from dualforge.modeling import Model
from dualforge.modeling.rotation import sample_texts

InnerLoss = Callable[..., torch.Tensor]
LossFn = Callable[..., torch.Tensor | LossOutput]

PRECISIONS: dict[Resolved, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def build_info_nce(cfg: LossConfig) -> InnerLoss:
    """InfoNCE with the config's temperature, symmetry and similarity."""
    return partial(
        info_nce, temperature=cfg.temperature, symmetric=cfg.symmetric, sim=cfg.similarity
    )


def build_maxsim_nce(cfg: LossConfig) -> InnerLoss:
    """InfoNCE over MaxSim scores (late interaction) with the config's temperature and symmetry."""
    return partial(maxsim_nce, temperature=cfg.temperature, symmetric=cfg.symmetric)


LOSSES: dict[str, Callable[[LossConfig], InnerLoss]] = {"info_nce": build_info_nce}


def build_loss(
    cfg: LossConfig, model_dim: int, normalized: bool, seed: int = 0, tokens: bool = False
) -> LossFn:
    """The loss named by ``cfg.name``, wrapped in Matryoshka nesting when configured.

    Args:
        cfg: Loss settings.
        model_dim: Size of the model's representations (default Matryoshka dims end there).
        normalized: Whether the model outputs unit vectors (then prefixes are renormalised
            unless ``loss.matryoshka.renormalize`` says otherwise).
        seed: Seed of Matryoshka dim sampling.
        tokens: Token-level representations (late interaction): the loss scores with MaxSim and
            Matryoshka truncates every token vector.
    """
    if cfg.name not in LOSSES:
        raise ValueError(f"loss.name={cfg.name!r} is not one of {sorted(LOSSES)}")
    inner = LOSSES[cfg.name](cfg) if not tokens else build_maxsim_nce(cfg)
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
            truncate=token_prefix if tokens else prefix,
        )
    except ValueError as err:
        raise ValueError(f"loss.matryoshka: {err}") from err


def build_model(cfg: ModelConfig) -> Model:
    """The model of ``model.kind`` named by the config (:mod:`dualforge.train.kinds`)."""
    from dualforge.train.kinds import kind_of

    out: Model = kind_of(cfg).build(cfg)
    return out


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


def tower_encoders(model: nn.Module) -> list[Encoder]:
    """``[query, document]`` callables over a :class:`DualEncoder` (or its DDP wrapper): each
    runs ``model(batch, side=...)``, so a wrapper sees every forward."""
    return [partial(model, side="query"), partial(model, side="document")]


def build_gradcache(
    encoders: Sequence[Encoder],
    loss: LossFn,
    cfg: GradCacheConfig,
    precision: Resolved,
    device: torch.device,
    *,
    no_sync: ContextFactory | None = None,
    exchange: Exchange | None = None,
    keep_graphs: int | None = None,
) -> tuple[GradCache, torch.amp.GradScaler | None]:
    """The engine over the two towers, and a GradScaler when training in fp16.

    Args:
        encoders: ``[query, document]`` callables (:func:`tower_encoders`).
        loss: The loss function.
        cfg: Chunking and graph-keeping settings.
        precision: The resolved precision (``gradcache.precision`` after ``auto``).
        device: Where the towers run (the GradScaler's device).
        no_sync: DDP's ``no_sync`` under several processes.
        exchange: The processes' exchange under several processes.
        keep_graphs: Overrides ``cfg.keep_graphs`` (0 under FSDP2, where the processes must run
            the same passes in the same order).
    """
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    gc = GradCache(
        encoders,
        loss,
        cfg.chunk_size,
        token_budget=cfg.token_budget,
        sort_by_length=cfg.sort_by_length,
        keep_graphs=cfg.keep_graphs if keep_graphs is None else keep_graphs,
        autocast_dtype=dtype,
        scaler=scaler,
        no_sync=no_sync,
        exchange=exchange,
    )
    return gc, scaler
