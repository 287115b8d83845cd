"""Turn a batch of training examples into GradCache inputs: query batch, grouped document batch,
and the loss's inputs (the step, and the codes that mask in-batch false negatives)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from dualforge.data import Batch
from dualforge.losses import LossInputs, PositiveCodes
from dualforge.modeling import Model
from dualforge.train.distributed import shard_batch

T = TypeVar("T")


@dataclass(frozen=True)
class StepInputs:
    """Tensors for one GradCache step."""

    queries: dict[str, torch.Tensor]  # (B, Lq)
    documents: dict[str, torch.Tensor]  # (B * (1 + K), Ld), grouped by query
    loss: LossInputs  # codes over the global batch

    def to(self, device: torch.device) -> StepInputs:
        """The same inputs on ``device``."""
        return StepInputs(
            queries={k: v.to(device) for k, v in self.queries.items()},
            documents={k: v.to(device) for k, v in self.documents.items()},
            loss=self.loss.to(device),
        )


def grouped_documents(positives: Sequence[T], negatives: Sequence[Sequence[T]]) -> list[T]:
    """``[pos_0, neg_0_1..neg_0_K, pos_1, ...]`` (texts, or ids); every query must have the same
    K."""
    counts = {len(n) for n in negatives}
    if len(counts) > 1:
        raise ValueError(f"every query needs the same number of negatives, got {sorted(counts)}")
    out: list[T] = []
    for pos, negs in zip(positives, negatives):
        out.append(pos)
        out.extend(negs)
    return out


def collate(
    model: Model,
    batch: Batch,
    query_max_length: int,
    doc_max_length: int,
    known_positives: dict[str, set[str]] | None = None,
    mask_false_negatives: bool = True,
    shard: tuple[int, int] = (0, 1),
    step: int = 0,
) -> StepInputs:
    """Tokenize a sampler batch (``queries``, ``positives``, ``negatives`` and their ids).

    Under several processes, ``batch`` is the global batch and ``shard=(rank, world)``: only
    this process's rows are tokenized, and the false-negative codes cover the global batch, so
    masking works across processes.

    Args:
        model: Supplies the tokenizer and prefixes.
        batch: A :class:`dualforge.data.Batch`.
        query_max_length: Query truncation.
        doc_max_length: Document truncation.
        known_positives: Query id -> ids of all its relevant documents (qrels), for masking.
        mask_false_negatives: Build the codes (O(B * n + positives); document ids, else texts).
        shard: ``(rank, world)``: tokenize rows ``[r * b, (r + 1) * b)`` of the batch only.
        step: The training step (the loss's :attr:`LossInputs.step`).
    """
    codes = _codes(batch, known_positives or {}) if mask_false_negatives else None
    local = shard_batch(batch, *shard) if shard[1] > 1 else batch
    docs = grouped_documents(local.positives, local.negatives)
    return StepInputs(
        queries=model.tokenize(local.queries, "query", query_max_length),
        documents=model.tokenize(docs, "document", doc_max_length),
        loss=LossInputs(step=step, positives=codes, extras=column_tensors(batch)),
    )


def column_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    """The numeric columns of a (global) batch as tensors, rows in batch order: ``(B,)`` per
    example, ``(B, 1 + K)`` per candidate (float64, so teacher scores keep their precision)."""
    out: dict[str, torch.Tensor] = {}
    for name, column in batch.extras.items():
        if _numeric(column.values):
            out[name] = torch.tensor(column.values, dtype=torch.float64)
    return out


def _numeric(values: list[Any]) -> bool:
    flat = [v for row in values for v in row] if values and isinstance(values[0], list) else values
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat)


def _doc_key(doc_id: str | None, text: str) -> str:
    return doc_id if doc_id is not None else f"text:{text}"


def _codes(batch: Batch, known: dict[str, set[str]]) -> PositiveCodes:
    """Codes that mask a document row for query ``i`` when it is a known positive of ``i``
    (qrels ids) or a copy of ``i``'s own positive elsewhere in the batch (matched by id, else by
    text)."""
    keys: list[str | None] = []
    wanted: list[list[str]] = []
    for i, positive in enumerate(batch.positives):
        own = _doc_key(batch.positive_ids[i], positive)
        keys.append(own)
        neg_ids = batch.negative_ids[i] or [None] * len(batch.negatives[i])
        keys.extend(_doc_key(n, t) for n, t in zip(neg_ids, batch.negatives[i]))
        qid = batch.query_ids[i]
        wanted.append([own, *(known.get(qid, ()) if qid is not None else ())])
    return PositiveCodes.from_ids(keys, wanted)
