"""Evaluate a :class:`DualEncoder` on a retrieval split (encode, exact search, metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dualforge.config import EvalConfig
from dualforge.data import EvalSet
from dualforge.eval import RetrievalReport, evaluate_retrieval
from dualforge.modeling import DualEncoder, Model
from dualforge.modeling.encoder import Side, search_metric
from dualforge.modeling.kinds import SINGLE_VECTOR, Encoded, ModelKind, TokenVectors, Vectors
from dualforge.train.distributed import ProcessInfo, gather_rows


def encode_texts(
    kind: ModelKind,
    model: Model,
    texts: Sequence[str],
    side: Side,
    batch_size: int,
    proc: ProcessInfo | None = None,
    show_progress: bool = False,
    max_length: int | None = None,
) -> Encoded:
    """The representations of ``texts`` (``kind.encode``); under several processes (``proc``)
    every process encodes every W-th text of the length-sorted list (equal shares of work) and
    every process returns all ``N`` (gathered as tensors). Every process must call it."""
    if proc is None or proc.world == 1:
        return kind.encode(model, texts, side, batch_size, show_progress, max_length)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    mine = order[proc.rank :: proc.world]
    share = -(-len(texts) // proc.world)  # every rank encodes as many texts (FSDP: as many
    padded = [texts[i] for i in mine] + [texts[order[0]]] * (share - len(mine))  # forwards)
    part = kind.encode(model, padded, side, batch_size, show_progress, max_length).head(len(mine))
    shares = [order[r :: proc.world] for r in range(proc.world)]
    if isinstance(part, TokenVectors):
        lengths = torch.tensor([len(a) for a in part.arrays], dtype=torch.int64)
        flat = torch.from_numpy(np.concatenate(part.arrays)) if part.arrays else torch.zeros(0)
        tokens: list[Any] = [None] * len(texts)
        for rows, sizes, block in zip(
            shares, gather_rows(lengths, proc), gather_rows(flat.reshape(len(flat), -1), proc)
        ):
            for row, array in zip(rows, torch.split(block, sizes.tolist())):
                tokens[row] = array.numpy()
        return TokenVectors(tokens)
    blocks = gather_rows(torch.from_numpy(part.array), proc)
    out = np.zeros((len(texts), part.array.shape[1]), dtype=np.float32)
    for rows, block in zip(shares, blocks):
        out[rows] = block.numpy()
    return Vectors(out)


def text_encoder(
    kind: ModelKind,
    model: Model,
    side: Side,
    batch_size: int,
    show_progress: bool,
    proc: ProcessInfo | None = None,
) -> Callable[[Sequence[str]], Any]:
    """``texts -> (N, D)`` embeddings of one side of ``model`` (a late-interaction model: one
    ``(T_i, D)`` array per text), sharded under several processes (:func:`encode_texts`)."""

    def run(texts: Sequence[str]) -> Any:
        return encode_texts(kind, model, texts, side, batch_size, proc, show_progress).values

    return run


def evaluate_split(
    model: DualEncoder,
    data: EvalSet,
    cfg: EvalConfig,
    show_progress: bool = True,
    proc: ProcessInfo | None = None,
) -> RetrievalReport:
    """Encode ``data``'s queries and corpus with ``model`` and compute ``cfg.metrics``.

    Scores are cosine when the model L2-normalises its embeddings (truncated prefixes are then
    renormalised), inner product otherwise. Under several processes every process must call it:
    the encoding is sharded and gathered (:func:`text_encoder`), and every process gets the report.
    """
    return evaluate_retrieval(
        text_encoder(SINGLE_VECTOR, model, "query", cfg.batch_size, show_progress, proc),
        text_encoder(SINGLE_VECTOR, model, "document", cfg.batch_size, show_progress, proc),
        data.corpus,
        data.queries,
        data.qrels,
        k=cfg.k,
        metrics=cfg.metrics,
        dims=list(cfg.dims) or None,
        metric=search_metric(model),
    )
