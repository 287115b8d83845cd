"""The loss contract: what every loss is called with, and what it must return.

A loss is any callable ``loss(q, d, inputs, rows) -> LossOutput`` (:class:`Loss`):

- ``q`` ``(B, ...)`` and ``d`` ``(B * n, ...)`` are the representations of the whole global
  batch (every process's rows, gathered), documents grouped by query (``[pos_0, neg_0_1..neg_0_K,
  pos_1, ...]``);
- ``inputs`` is a frozen :class:`LossInputs` built by collate: the training step, the codes
  that mask false negatives, per-example extras (teacher scores, say);
- ``rows`` is ALWAYS passed: the queries this process owns (``slice(0, B)`` in one process).
  The loss returns the share of the full-batch loss that those queries contribute (their terms,
  divided by the full ``B``), so the shares of ``W`` processes sum to the one-process loss and
  every loss is correct under several processes by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from dualforge.losses.output import LossOutput

TEACHER_SCORES = "teacher_scores"
"""Key of :attr:`LossInputs.extras` holding the ``(B, 1 + K)`` teacher scores of each query's
candidates (``[positive] + negatives``), for distillation."""
UNKNOWN = -1
"""Code of a document without a known id (matches nothing) and padding of positive codes."""


@dataclass(frozen=True)
class PositiveCodes:
    """Which documents of a batch are known positives of which query, as int64 codes.

    A document row is masked as a negative of query ``i`` when its code is one of ``i``'s positive
    codes (and it is not ``i``'s own target row, which is never masked). Building this costs
    ``O(B * n + number of positives)``; each tile of a loss compares codes, so no ``(B, B * n)``
    mask is ever held.

    Attributes:
        docs: ``(B * n,)`` int64 code of every document row (:data:`UNKNOWN` for no id).
        positives: ``(B, P)`` int64 codes of each query's known positives that occur in the
            batch, padded with :data:`UNKNOWN` (``P >= 1``).
    """

    docs: torch.Tensor  # (N,) int64
    positives: torch.Tensor  # (B, P) int64

    def __post_init__(self) -> None:
        """Check shapes and dtypes."""
        if self.docs.dim() != 1 or self.positives.dim() != 2 or self.positives.shape[1] < 1:
            raise ValueError(
                f"PositiveCodes needs docs (N,) and positives (B, P >= 1), got "
                f"{tuple(self.docs.shape)} and {tuple(self.positives.shape)}"
            )
        if self.docs.dtype != torch.long or self.positives.dtype != torch.long:
            raise ValueError("PositiveCodes are int64 tensors")

    @classmethod
    def from_ids(
        cls, doc_ids: Sequence[str | None], positives: Sequence[Sequence[str]]
    ) -> PositiveCodes:
        """Codes from document ids (None: unknown) and each query's known positive ids.

        Args:
            doc_ids: Id of every document row (``B * n``), in the grouped layout.
            positives: For each of the ``B`` queries, the ids known to be relevant to it; ids
                that no row of the batch has are dropped.
        """
        code_of: dict[str, int] = {}
        docs = [UNKNOWN if i is None else code_of.setdefault(i, len(code_of)) for i in doc_ids]
        rows = [sorted({code_of[p] for p in pos if p in code_of}) for pos in positives]
        width = max((len(r) for r in rows), default=0) or 1
        table = torch.full((len(rows), width), UNKNOWN, dtype=torch.long)
        for i, row in enumerate(rows):
            table[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return cls(torch.tensor(docs, dtype=torch.long), table)

    def dense(self) -> torch.Tensor:
        """The ``(B, B * n)`` bool mask these codes stand for (for checks and small batches)."""
        return code_match(self.positives, self.docs[:, None])

    def to(self, device: torch.device) -> PositiveCodes:
        """The same codes on ``device``."""
        return PositiveCodes(self.docs.to(device), self.positives.to(device))


def code_match(row_sets: torch.Tensor, col_sets: torch.Tensor) -> torch.Tensor:
    """``(R, C)`` bool: whether row ``r``'s codes and column ``c``'s codes share a known code.

    Args:
        row_sets: ``(R, P)`` int64 codes per row (:data:`UNKNOWN` padded).
        col_sets: ``(C, Q)`` int64 codes per column (:data:`UNKNOWN` padded).
    """
    out = torch.zeros(
        row_sets.shape[0], col_sets.shape[0], dtype=torch.bool, device=row_sets.device
    )
    for p in range(row_sets.shape[1]):
        a = row_sets[:, p : p + 1]  # (R, 1)
        known = a >= 0
        for k in range(col_sets.shape[1]):
            out |= (a == col_sets[None, :, k]) & known
    return out


def matching_pairs(
    row_sets: torch.Tensor, col_sets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(row, column)`` whose codes share a known code, sorted by row then column: the
    nonzeros of :func:`code_match` without the ``(R, C)`` matrix (a sort and a search,
    ``O((R P + C Q) log)`` plus the number of pairs).

    Args:
        row_sets: ``(R, P)`` int64 codes per row (:data:`UNKNOWN` padded; a row's codes distinct).
        col_sets: ``(C, Q)`` int64 codes per column (:data:`UNKNOWN` padded; distinct).

    Returns:
        ``(rows, cols)``, two ``(K,)`` int64 tensors.
    """
    device = row_sets.device
    col_of = torch.arange(col_sets.shape[0], device=device).repeat_interleave(col_sets.shape[1])
    codes = col_sets.reshape(-1)
    known = codes >= 0
    codes, order = codes[known].sort()
    col_of = col_of[known][order]  # columns by code
    row_of = torch.arange(row_sets.shape[0], device=device).repeat_interleave(row_sets.shape[1])
    wanted = row_sets.reshape(-1)
    known = wanted >= 0
    wanted, row_of = wanted[known], row_of[known]
    lo = torch.searchsorted(codes, wanted, side="left")
    count = torch.searchsorted(codes, wanted, side="right") - lo  # columns holding each code
    rows = row_of.repeat_interleave(count)
    start = (count.cumsum(0) - count).repeat_interleave(count)
    cols = col_of[lo.repeat_interleave(count) + torch.arange(rows.numel(), device=device) - start]
    width = max(col_sets.shape[0], 1)
    key = torch.unique(rows * width + cols)  # sorted; a pair met through two codes counts once
    return key // width, key % width


@dataclass(frozen=True)
class LossInputs:
    """Per-step inputs of a loss beside the representations, built by collate.

    Attributes:
        step: The training step (seeds per-step choices, e.g. sampled Matryoshka dims).
        positives: Codes that mask false negatives over the global batch, or None for no mask.
        extras: Per-example tensors by name (e.g. teacher scores), rows in global batch order.
    """

    step: int = 0
    positives: PositiveCodes | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> LossInputs:
        """The same inputs on ``device``."""
        return LossInputs(
            self.step,
            self.positives.to(device) if self.positives is not None else None,
            {k: v.to(device) for k, v in self.extras.items()},
        )


class Loss(Protocol):
    """``loss(q, d, inputs, rows) -> LossOutput``: this process's share (see the module doc)."""

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice, /
    ) -> LossOutput:
        """The share of the full-batch loss of queries ``rows`` and its named parts."""
        ...


def all_rows(q: torch.Tensor) -> slice:
    """``slice(0, B)``: every query of ``q`` (the rows of a loss in one process)."""
    return slice(0, q.shape[0])
