"""Evaluate a :class:`DualEncoder` on a retrieval split (encode, exact search, metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dualforge.config import EvalConfig
from dualforge.data import EvalSet
from dualforge.eval import RetrievalReport, evaluate_retrieval
from dualforge.eval.reports import search_metric
from dualforge.modeling import DualEncoder
from dualforge.modeling.encoder import Side


def text_encoder(
    model: DualEncoder, side: Side, batch_size: int, show_progress: bool
) -> Callable[[Sequence[str]], np.ndarray]:
    """``texts -> (N, D)`` embeddings of one side of ``model``."""

    def run(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), side, batch_size, show_progress)

    return run


def evaluate_split(
    model: DualEncoder, data: EvalSet, cfg: EvalConfig, show_progress: bool = True
) -> RetrievalReport:
    """Encode ``data``'s queries and corpus with ``model`` and compute ``cfg.metrics``.

    Scores are cosine when the model L2-normalises its embeddings (truncated prefixes are then
    renormalised), inner product otherwise.
    """
    return evaluate_retrieval(
        text_encoder(model, "query", cfg.batch_size, show_progress),
        text_encoder(model, "document", cfg.batch_size, show_progress),
        data.corpus,
        data.queries,
        data.qrels,
        k=cfg.k,
        metrics=cfg.metrics,
        dims=list(cfg.dims) or None,
        metric=search_metric(model),
    )
