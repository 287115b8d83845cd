"""Turn a batch of training examples into GradCache inputs: query batch, grouped document batch,
and the in-batch false-negative mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dualforge.losses import false_negative_mask
from dualforge.modeling import DualEncoder


@dataclass(frozen=True)
class StepInputs:
    """Tensors for one GradCache step."""

    queries: dict[str, torch.Tensor]  # (B, Lq)
    documents: dict[str, torch.Tensor]  # (B * (1 + K), Ld), grouped by query
    false_negatives: torch.Tensor | None  # (B, B * (1 + K)) bool


def grouped_documents(
    positives: Sequence[str], negatives: Sequence[Sequence[str]]
) -> list[str]:
    """``[pos_0, neg_0_1..neg_0_K, pos_1, ...]``; every query must have the same K."""
    counts = {len(n) for n in negatives}
    if len(counts) > 1:
        raise ValueError(f"every query needs the same number of negatives, got {sorted(counts)}")
    out: list[str] = []
    for pos, negs in zip(positives, negatives):
        out.append(pos)
        out.extend(negs)
    return out


def collate(
    model: DualEncoder,
    batch: Any,
    query_max_length: int,
    doc_max_length: int,
    known_positives: dict[str, set[str]] | None = None,
    mask_false_negatives: bool = True,
) -> StepInputs:
    """Tokenize a sampler batch (``queries``, ``positives``, ``negatives`` and their ids).

    Args:
        model: Supplies the tokenizer and prefixes.
        batch: A :class:`dualforge.data.Batch`.
        query_max_length: Query truncation.
        doc_max_length: Document truncation.
        known_positives: Query id -> ids of all its relevant documents (qrels), for masking.
        mask_false_negatives: Build the mask (needs document ids).
    """
    docs = grouped_documents(batch.positives, batch.negatives)
    mask = None
    if mask_false_negatives:
        mask = _mask(batch, known_positives or {})
    return StepInputs(
        queries=model.tokenize(batch.queries, "query", query_max_length),
        documents=model.tokenize(docs, "document", doc_max_length),
        false_negatives=mask,
    )


def _mask(batch: Any, known: dict[str, set[str]]) -> torch.Tensor | None:
    """Mask a document for a query when its id (or, without ids, its text) is a known positive."""
    doc_ids: list[str | None] = []
    wanted: list[set[str]] = []
    for i, (pos_id, neg_ids) in enumerate(zip(batch.positive_ids, batch.negative_ids)):
        doc_ids.append(pos_id if pos_id is not None else batch.positives[i])
        negs = neg_ids if neg_ids else batch.negatives[i]
        doc_ids.extend(n if n is not None else t for n, t in zip(negs, batch.negatives[i]))
        qid = batch.query_ids[i]
        wanted.append(set(known.get(qid, set())) if qid is not None else set())
        wanted[-1].add(doc_ids[len(doc_ids) - 1 - len(batch.negatives[i])] or "")
    return false_negative_mask(doc_ids, [sorted(w) for w in wanted])
