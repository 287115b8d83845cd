"""Multi-vector (ColBERT-style) models: every token of a text becomes a small unit vector.

A :class:`TokenEncoder` maps a tokenizer batch to ``(B, T, D + 1)``: the transformer's token
states projected to ``D`` (128 by default) by one bias-free linear map and L2-normalised, with the
token mask in the last channel (:mod:`dualforge.tokens`). :class:`LateInteractionModel`
adds what ColBERT's tokenization needs:

* query and document markers (``"[Q] "``, ``"[D] "``, PyLate's, added to the tokenizer as tokens
  and put first in every text, after ``[CLS]``);
* query augmentation: queries padded to ``query_max_length`` with ``[MASK]`` tokens, which are
  scored; they attend (and are attended to) only with ``attend_to_expansion``;
* a document skiplist: tokens (punctuation by default) that are encoded but never scored;
* query and document max lengths.

The mask of scored positions goes with the batch as ``token_mask`` (the Gradient Cache chunker
keeps those columns even where ``attention_mask`` is 0).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualforge.modeling.encoder import MODEL_INPUTS, Side, eval_mode, length_sorted_batches
from dualforge.tokens import join_tokens, split_tokens

PUNCTUATION = tuple(string.punctuation)
QUERY_MARKER, DOC_MARKER = "[Q] ", "[D] "  # PyLate's prefixes (added tokens, space included)


class TokenEncoder(nn.Module):
    """Token states -> ``Linear(H, dim, bias=False)`` -> L2 norm, mask in the last channel.

    Args:
        transformer: A Hugging Face model whose output has ``last_hidden_state``.
        dim: Width of the token vectors.
        projection: The linear map (a fresh one of ``dim`` outputs when None).
    """

    def __init__(
        self, transformer: nn.Module, dim: int = 128, projection: nn.Linear | None = None
    ) -> None:
        super().__init__()
        self.transformer = transformer
        config: Any = transformer.config
        hidden = int(config.hidden_size)
        self.projection = projection or nn.Linear(hidden, dim, bias=False)
        self.normalize = True  # token vectors are unit vectors (Matryoshka prefixes renormalise)

    @property
    def dim(self) -> int:
        """Width of the token vectors."""
        return self.projection.out_features

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, dim + 1)`` token vectors and mask (``token_mask``, else ``attention_mask``)."""
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        hidden = self.transformer(**inputs).last_hidden_state  # (B, T, H)
        vectors = F.normalize(self.projection(hidden), dim=-1)  # (B, T, dim)
        mask = batch.get("token_mask", batch["attention_mask"]) > 0  # (B, T)
        return join_tokens(vectors, mask)


class LateInteractionModel(nn.Module):
    """A tied multi-vector model with ColBERT's tokenization (see the module docstring).

    Args:
        tokenizer: A Hugging Face tokenizer; the markers are added to it when missing (resize
            the transformer's embeddings after, :func:`add_markers` does both).
        encoder: The token encoder.
        query_max_length: Query length (the augmented length with ``augment_queries``).
        doc_max_length: Document truncation.
        augment_queries: Pad queries with ``[MASK]`` tokens to ``query_max_length``.
        attend_to_expansion: Let the ``[MASK]`` expansion tokens attend and be attended to.
        skiplist: Document tokens never scored (their token ids are looked up once).
        query_marker: Text put before every query (an added token).
        doc_marker: Text put before every document (an added token).
    """

    def __init__(
        self,
        tokenizer: Any,
        encoder: TokenEncoder,
        *,
        query_max_length: int = 32,
        doc_max_length: int = 180,
        augment_queries: bool = True,
        attend_to_expansion: bool = False,
        skiplist: Sequence[str] = PUNCTUATION,
        query_marker: str = QUERY_MARKER,
        doc_marker: str = DOC_MARKER,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.query_marker, self.doc_marker = query_marker, doc_marker
        self.encoder = encoder
        self.query_max_length, self.doc_max_length = query_max_length, doc_max_length
        self.augment_queries, self.attend_to_expansion = augment_queries, attend_to_expansion
        self.skiplist = tuple(skiplist)
        ids = [tokenizer.convert_tokens_to_ids(t) for t in self.skiplist]
        unk = tokenizer.unk_token_id
        self.register_buffer("skip_ids", torch.tensor(sorted({i for i in ids if i != unk})), False)

    @property
    def dim(self) -> int:
        """Width of the token vectors."""
        return self.encoder.dim

    tied = True  # one tower reads queries and documents

    @property
    def query_encoder(self) -> TokenEncoder:
        """The tower (shared by both sides)."""
        return self.encoder

    @property
    def doc_encoder(self) -> TokenEncoder:
        """The tower (shared by both sides)."""
        return self.encoder

    def _skip_ids(self) -> torch.Tensor:
        ids: Any = self.skip_ids
        return torch.as_tensor(ids).cpu()

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def tokenize(
        self, texts: Sequence[str], side: Side = "query", max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenizer batch with markers, ``token_mask`` and (queries) augmentation."""
        query = side == "query"
        marker = self.query_marker if query else self.doc_marker
        length = max_length or (self.query_max_length if query else self.doc_max_length)
        pad = "max_length" if query and self.augment_queries else True
        out = dict(
            self.tokenizer(
                [f"{marker}{t}" for t in texts], padding=pad, truncation=True,
                max_length=length, return_tensors="pt",
            )
        )  # fmt: skip
        attention = out["attention_mask"]
        if query and self.augment_queries:
            expansion = attention == 0  # (B, L)
            out["input_ids"] = out["input_ids"].masked_fill(expansion, self.tokenizer.mask_token_id)
            out["token_mask"] = torch.ones_like(attention)
            if self.attend_to_expansion:
                out["attention_mask"] = torch.ones_like(attention)
            return out
        skip = torch.isin(out["input_ids"], self._skip_ids()) if not query else None
        out["token_mask"] = attention if skip is None else attention * (~skip).long()
        return out

    def forward(self, batch: Mapping[str, torch.Tensor], side: Side = "query") -> torch.Tensor:
        """``(B, T, D + 1)`` token representations of a tokenized batch (one tower: tied)."""
        out: torch.Tensor = self.encoder(batch)
        return out

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        side: Side = "query",
        batch_size: int = 32,
        show_progress: bool = False,
        max_length: int | None = None,
    ) -> list[np.ndarray]:
        """One ``(T_i, D)`` float32 array of scored token vectors per text, in eval mode."""
        out: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(texts)
        with eval_mode(self):
            for rows in length_sorted_batches(texts, batch_size, f"encode {side}", show_progress):
                batch = self.tokenize([texts[i] for i in rows], side, max_length)
                reps = self({k: v.to(self.device) for k, v in batch.items()})
                vectors, mask = split_tokens(reps)
                for i, v, m in zip(rows, vectors.float().cpu().numpy(), mask.cpu().numpy()):
                    out[i] = v[m]
        return out


def add_markers(
    tokenizer: Any, transformer: nn.Module, markers: Sequence[str] = (QUERY_MARKER, DOC_MARKER)
) -> None:
    """Add the marker tokens to ``tokenizer`` (when missing) and grow the transformer's
    embeddings to the new vocabulary."""
    missing = [t for t in markers if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
        resize: Any = transformer.resize_token_embeddings
        resize(len(tokenizer))
