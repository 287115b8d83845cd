"""Build the pieces a run needs from its config: model and Gradient Cache engine (the loss is
built by :mod:`dualforge.train.losses`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import nn

from dualforge.config import GradCacheConfig, ModelConfig
from dualforge.data import TrainingExample
from dualforge.gradcache import GradCache
from dualforge.gradcache.exchange import Exchange
from dualforge.gradcache.replay import ContextFactory, Encoder
from dualforge.hardware import Resolved
from dualforge.losses import Loss
from dualforge.modeling import Model
from dualforge.modeling.rotation import sample_texts

PRECISIONS: dict[Resolved, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


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
    loss: Loss,
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
