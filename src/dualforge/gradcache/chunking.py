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
        columns: The batch's sequence columns the chunk kept after trimming (None: all of
            them), so token-level outputs ``(B_c, T_c, ...)`` go back to their batch columns.
        seq_len: The batch's sequence length (None without an attention mask).
    """

    inputs: dict[str, Any]
    rows: torch.Tensor
    columns: slice | None = None
    seq_len: int | None = None

    def place(self, grad: torch.Tensor) -> torch.Tensor:
        """This chunk's slice of a full-batch tensor ``(B, ...)``: its rows, and for token-level
        ``(B, L, ...)`` tensors its columns."""
        out = grad[self.rows.to(grad.device)]
        if self.columns is not None and out.dim() >= 3 and out.shape[1] == self.seq_len:
            out = out[:, self.columns]
        return out


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


def used_mask(inputs: Inputs) -> torch.Tensor | None:
    """``(B, L)`` positions a row uses: its ``attention_mask``, or with it its ``token_mask``
    (positions that produce scored token vectors without being attended, such as ColBERT's
    query expansion tokens); None without an attention mask."""
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    tokens = inputs.get("token_mask")
    if isinstance(tokens, torch.Tensor) and tokens.shape == mask.shape:
        return ((mask > 0) | (tokens > 0)).long()
    return mask


def sequence_lengths(inputs: Inputs) -> torch.Tensor | None:
    """``(B,)`` number of used positions per row (:func:`used_mask`); None if there is no mask."""
    mask = used_mask(inputs)
    return None if mask is None else mask.sum(dim=1)


def _left_padded(mask: torch.Tensor) -> bool:
    """True when padding sits at the start of the rows (a zero in the first column)."""
    return bool((mask[:, 0] == 0).any())


def kept_columns(
    inputs: Inputs, rows: torch.Tensor, trim: bool = True
) -> tuple[slice | None, int | None]:
    """The sequence columns ``rows`` need (their longest row, at the padded side's other end),
    and the batch's sequence length; ``(None, None)`` without trimming or a mask."""
    mask = used_mask(inputs)
    if not trim or mask is None:
        return None, None
    seq_len = mask.shape[1]
    longest = max(int(mask[rows.to(mask.device)].sum(dim=1).max()), 1)
    keep = slice(seq_len - longest, seq_len) if _left_padded(mask) else slice(0, longest)
    return keep, seq_len


def take_rows(inputs: Inputs, rows: torch.Tensor, trim: bool = True) -> dict[str, Any]:
    """Select ``rows`` of every batched tensor; with ``trim``, cut padding columns none of them need.

    Args:
        inputs: Tokenizer output; tensors have a leading batch dim.
        rows: ``(B_c,)`` indices to keep.
        trim: Cut sequence-dim columns beyond the chunk's longest row (exact under masking).
    """
    keep, seq_len = kept_columns(inputs, rows, trim)
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
    chunks = []
    for rows in plan:
        columns, seq_len = kept_columns(inputs, rows, trim)
        chunks.append(Chunk(take_rows(inputs, rows, trim), rows, columns, seq_len))
    return chunks


def scatter_rows(parts: list[torch.Tensor], chunks: list[Chunk]) -> torch.Tensor:
    """Put per-chunk outputs back in the original batch order.

    Pooled outputs ``(B_c, D)`` are concatenated. Token-level outputs ``(B_c, T_c, ...)`` of
    trimmed chunks go back to their batch columns in a zero-filled ``(B, L, ...)`` tensor (``L``
    the batch's sequence length): a padded position is all zeros, whatever the chunk.
    """
    token_level = parts[0].dim() >= 3 and chunks[0].seq_len is not None
    if not token_level or all(p.shape[1] == chunks[0].seq_len for p in parts):
        cat = torch.cat(parts, dim=0)  # (B, ...) in chunk order
        rows = torch.cat([c.rows for c in chunks]).to(cat.device)
        out = torch.empty_like(cat)
        out[rows] = cat
        return out
    first = parts[0]
    n = sum(p.shape[0] for p in parts)
    out = first.new_zeros((n, int(chunks[0].seq_len or 0), *first.shape[2:]))  # (B, L, ...)
    for part, chunk in zip(parts, chunks):
        cols = chunk.columns if chunk.columns is not None else slice(0, part.shape[1])
        out[chunk.rows.to(out.device), cols] = part
    return out
