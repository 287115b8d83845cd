"""Split a tokenizer-output batch into chunks: by rows, by token budget, optionally length-sorted.

A chunk keeps the positions of its rows in the original batch so that representations can be put
back in order before the loss. Trimming each chunk to its own longest row is exact for models that
mask padding (every Hugging Face encoder): padded positions receive no attention and no pooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

Inputs = Mapping[str, Any]


@dataclass(frozen=True)
class Chunk:
    """A slice of a batch.

    Attributes:
        inputs: The chunk's tensors, each with a leading batch dim ``(B_c, ...)``.
        rows: ``(B_c,)`` positions of the chunk's rows in the original batch.
    """

    inputs: dict[str, Any]
    rows: torch.Tensor


def batch_size_of(inputs: Inputs) -> int:
    """Number of rows of a batch (the common leading dim of its tensors).

    Raises:
        ValueError: If the batch has no tensor or its tensors disagree on the leading dim.
    """
    sizes = {
        k: v.shape[0] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() > 0
    }
    if not sizes:
        raise ValueError("batch has no tensor with a batch dimension")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch tensors disagree on the batch dimension: {sizes}")
    return next(iter(sizes.values()))


def sequence_lengths(inputs: Inputs) -> torch.Tensor | None:
    """``(B,)`` number of real tokens per row, from ``attention_mask``; None if there is no mask."""
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    return mask.sum(dim=1)


def _left_padded(mask: torch.Tensor) -> bool:
    """True when padding sits at the start of the rows (a zero in the first column)."""
    return bool((mask[:, 0] == 0).any())


def take_rows(inputs: Inputs, rows: torch.Tensor, trim: bool = True) -> dict[str, Any]:
    """Select ``rows`` of every batched tensor; with ``trim``, cut padding columns none of them need.

    Args:
        inputs: Tokenizer output; tensors have a leading batch dim.
        rows: ``(B_c,)`` indices to keep.
        trim: Cut sequence-dim columns beyond the chunk's longest row (exact under masking).
    """
    mask = inputs.get("attention_mask")
    seq_len: int | None = None
    keep: slice | None = None
    if trim and isinstance(mask, torch.Tensor) and mask.dim() == 2:
        seq_len = mask.shape[1]
        longest = max(int(mask[rows.to(mask.device)].sum(dim=1).max()), 1)
        keep = slice(seq_len - longest, seq_len) if _left_padded(mask) else slice(0, longest)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            out[key] = value
            continue
        value = value[rows.to(value.device)]
        if keep is not None and value.dim() >= 2 and value.shape[1] == seq_len:
            value = value[:, keep]
        out[key] = value
    return out


def _row_order(inputs: Inputs, sort_by_length: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row order to chunk in (longest first when sorting) and the per-row lengths if known."""
    n = batch_size_of(inputs)
    lengths = sequence_lengths(inputs)
    if lengths is not None:
        lengths = lengths.cpu()
    if sort_by_length and lengths is not None:
        order = torch.sort(lengths, descending=True, stable=True).indices
    else:
        order = torch.arange(n)
    return order, lengths


def plan_chunks(
    inputs: Inputs,
    chunk_size: int | None = None,
    token_budget: int | None = None,
    sort_by_length: bool = False,
) -> list[torch.Tensor]:
    """Group the rows of a batch into chunks.

    Args:
        inputs: Tokenizer output.
        chunk_size: Most rows per chunk (None: unbounded).
        token_budget: Most padded tokens per chunk, ``rows * longest_row`` (None: unbounded). A row
            longer than the budget gets a chunk of its own.
        sort_by_length: Chunk rows longest-first so each chunk pads only to similar lengths.

    Returns:
        A list of ``(B_c,)`` row-index tensors covering every row exactly once.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    order, lengths = _row_order(inputs, sort_by_length)
    if token_budget is not None and lengths is None:
        raise ValueError("token_budget chunking needs an 'attention_mask' in the batch")
    chunks: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for row in order.tolist():
        row_len = int(lengths[row]) if lengths is not None else 0
        grown = max(longest, row_len)
        full_rows = chunk_size is not None and len(current) >= chunk_size
        full_tokens = token_budget is not None and grown * (len(current) + 1) > token_budget
        if current and (full_rows or full_tokens):
            chunks.append(current)
            current, grown = [], row_len
        current.append(row)
        longest = grown
    if current:
        chunks.append(current)
    return [torch.tensor(c, dtype=torch.long) for c in chunks]


def split_batch(
    inputs: Inputs,
    chunk_size: int | None = None,
    token_budget: int | None = None,
    sort_by_length: bool = False,
    trim: bool = True,
) -> list[Chunk]:
    """Split a batch into :class:`Chunk` s (see :func:`plan_chunks` for the arguments)."""
    plan = plan_chunks(inputs, chunk_size, token_budget, sort_by_length)
    return [Chunk(inputs=take_rows(inputs, rows, trim), rows=rows) for rows in plan]


def scatter_rows(parts: list[torch.Tensor], chunks: list[Chunk]) -> torch.Tensor:
    """Concatenate per-chunk outputs and put their rows back in the original batch order."""
    cat = torch.cat(parts, dim=0)  # (B, ...) in chunk order
    rows = torch.cat([c.rows for c in chunks]).to(cat.device)
    out = torch.empty_like(cat)
    out[rows] = cat
    return out
