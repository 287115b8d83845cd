"""Encoders over Hugging Face transformers: token states -> pooled (optionally normalised) vectors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dualforge.modeling.pooling import get_pooler

Side = Literal["query", "document"]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class Encoder(nn.Module):
    """One tower: a transformer, a pooling, an optional linear projection, optional L2 norm.

    Args:
        transformer: A Hugging Face model whose output has ``last_hidden_state``.
        pooling: ``"mean"``, ``"cls"`` or ``"last"``.
        normalize: L2-normalise the output vectors (after the projection).
        projection: A linear map applied to the pooled vectors (sentence-transformers'
            ``Dense`` with identity activation), e.g. the rotation of
            :func:`dualforge.modeling.rotation.add_rotation`; None for none.
        mask_positions: Number positions from each row's first real token (decoders: a row
            then embeds the same under left or right padding and however a chunk is trimmed).
    """

    def __init__(
        self,
        transformer: nn.Module,
        pooling: str = "mean",
        normalize: bool = False,
        projection: nn.Linear | None = None,
        mask_positions: bool = False,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.mask_positions = mask_positions
        self.pooling = pooling
        self.normalize = normalize
        self.projection = projection
        self._pool = get_pooler(pooling)

    @property
    def hidden_dim(self) -> int:
        """Width of the pooled transformer states (the projection's input)."""
        config: Any = self.transformer.config
        return int(config.hidden_size)

    @property
    def dim(self) -> int:
        """Width of the output vectors."""
        return self.hidden_dim if self.projection is None else self.projection.out_features

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, D)`` vectors for a tokenizer batch (``input_ids``, ``attention_mask``, ...)."""
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if self.mask_positions and "position_ids" not in inputs:
            inputs["position_ids"] = mask_positions(batch["attention_mask"])  # (B, L)
        hidden = self.transformer(**inputs).last_hidden_state  # (B, L, H)
        pooled = self._pool(hidden, batch["attention_mask"])  # (B, H)
        if self.projection is not None:
            pooled = self.projection(pooled)  # (B, D)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def mask_positions(mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` positions counted over real tokens: 0 at each row's first one (pads get 0)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


class DualEncoder(nn.Module):
    """Query and document towers (tied or separate) with their tokenizer and prefixes.

    Args:
        tokenizer: A Hugging Face tokenizer.
        query_encoder: The query tower.
        doc_encoder: The document tower; None ties it to the query tower.
        max_seq_length: Truncation length for both sides.
        query_prefix: Text put before every query (e.g. ``"query: "``).
        doc_prefix: Text put before every document.
    """

    def __init__(
        self,
        tokenizer: Any,
        query_encoder: Encoder,
        doc_encoder: Encoder | None = None,
        max_seq_length: int = 256,
        query_prefix: str = "",
        doc_prefix: str = "",
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.query_encoder = query_encoder
        self.doc_encoder = doc_encoder if doc_encoder is not None else query_encoder
        self.max_seq_length = max_seq_length
        self.query_prefix = query_prefix
        self.doc_prefix = doc_prefix

    @property
    def tied(self) -> bool:
        """True when both sides share one tower."""
        return self.doc_encoder is self.query_encoder

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.query_encoder.dim

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def tower(self, side: Side) -> Encoder:
        """The encoder of ``side``."""
        return self.query_encoder if side == "query" else self.doc_encoder

    def tokenize(
        self, texts: Sequence[str], side: Side = "query", max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenizer batch for ``texts`` (prefix added, padded to the longest, truncated)."""
        prefix = self.query_prefix if side == "query" else self.doc_prefix
        out = self.tokenizer(
            [prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length or self.max_seq_length,
            return_tensors="pt",
        )
        return dict(out)

    def forward(self, batch: Mapping[str, torch.Tensor], side: Side = "query") -> torch.Tensor:
        """``(B, D)`` vectors of a tokenized batch for one side."""
        out: torch.Tensor = self.tower(side)(batch)
        return out

    def encode(
        self,
        texts: Sequence[str],
        side: Side = "query",
        batch_size: int = 64,
        show_progress: bool = False,
        max_length: int | None = None,
    ) -> np.ndarray:
        """``(N, D)`` float32 embeddings, computed in eval mode, longest texts first for speed."""
        return self.embed(texts, side, batch_size, show_progress, max_length).cpu().numpy()

    @torch.no_grad()
    def embed(
        self,
        texts: Sequence[str],
        side: Side = "query",
        batch_size: int = 64,
        show_progress: bool = False,
        max_length: int | None = None,
    ) -> torch.Tensor:
        """:meth:`encode` as a float32 tensor left on the model's device."""
        out = torch.zeros((len(texts), self.dim), dtype=torch.float32, device=self.device)
        with eval_mode(self):
            for rows in length_sorted_batches(texts, batch_size, f"encode {side}", show_progress):
                batch = self.tokenize([texts[i] for i in rows], side, max_length)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out[torch.as_tensor(rows, device=self.device)] = self.tower(side)(batch).float()
        return out


def length_sorted_batches(
    texts: Sequence[str], batch_size: int, desc: str, show_progress: bool = False
) -> Iterator[np.ndarray]:
    """Row indices of ``texts`` in batches of ``batch_size``, longest texts first (each batch
    pads to similar lengths), with a progress bar over the batches."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not show_progress, unit="batch"):
        yield order[start : start + batch_size]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run the block with ``module`` in eval mode, then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def search_metric(model: DualEncoder) -> str:
    """``"cos"`` for a model that L2-normalises its embeddings, else ``"ip"``."""
    return "cos" if model.query_encoder.normalize else "ip"
