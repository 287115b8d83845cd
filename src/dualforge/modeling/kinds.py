"""Kinds of model: one object per kind that owns load, save, encode and score.

- :data:`SINGLE_VECTOR`: a :class:`~dualforge.modeling.DualEncoder` (one pooled vector per
  text; dot products, cosine when it normalises), in sentence-transformers folders;
- :data:`LATE_INTERACTION`: a :class:`~dualforge.modeling.LateInteractionModel` (one vector per
  token; MaxSim), in dualforge's or PyLate's folders;
- :data:`CROSS_ENCODER`: a sequence-classification transformer with one label (its logit on a
  ``(query, document)`` pair); it only scores, as a distillation teacher.

A kind is resolved once, from a folder (:func:`kind_of_folder`) or a config's ``model.kind``
(:func:`dualforge.train.kinds.kind_of`, whose ``Kind.model`` it is); callers ask it, never
``isinstance`` or the shape of a result. ``encode`` returns a typed :data:`Encoded`:
:class:`Vectors` or :class:`TokenVectors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dualforge.modeling.encoder import DualEncoder, Side
from dualforge.modeling.io import load_model, save_model
from dualforge.modeling.late_interaction import LateInteractionModel
from dualforge.modeling.late_io import is_late_folder, load_late_model, save_late_model
from dualforge.modeling.names import ModelLoadError

PairScorer = Callable[[Sequence[str], Sequence[Sequence[str]]], list[list[float]]]
"""``score(queries, candidates) -> scores``: one list per query, aligned with its candidates."""


@dataclass(frozen=True)
class Vectors:
    """``(N, D)`` float32 embeddings, one row per text."""

    array: np.ndarray

    @property
    def values(self) -> np.ndarray:
        """The ``(N, D)`` array."""
        return self.array

    def one_per_text(self) -> np.ndarray:
        """``(N, D)``: the embeddings themselves."""
        return self.array

    def head(self, n: int) -> Vectors:
        """The first ``n`` texts'."""
        return Vectors(self.array[:n])


@dataclass(frozen=True)
class TokenVectors:
    """One ``(T_i, D)`` float32 array of scored token vectors per text."""

    arrays: list[np.ndarray]

    @property
    def values(self) -> list[np.ndarray]:
        """The ``(T_i, D)`` arrays."""
        return self.arrays

    def head(self, n: int) -> TokenVectors:
        """The first ``n`` texts'."""
        return TokenVectors(self.arrays[:n])

    def one_per_text(self) -> np.ndarray:
        """``(N, D)`` unit means of each text's token vectors (one vector per text, e.g. for a
        mining index)."""
        means = np.stack([t.mean(axis=0) for t in self.arrays]).astype(np.float32)  # (N, D)
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        out: np.ndarray = means / np.maximum(norms, 1e-12)
        return out


Encoded = Vectors | TokenVectors
"""What :meth:`ModelKind.encode` returns."""


class ModelKind(Protocol):
    """What a kind of model can do (see the module docstring)."""

    name: str
    tokens: bool  # representations are token-level (scored with MaxSim)

    def claims(self, folder: str) -> bool:
        """Whether ``folder`` holds a model of this kind."""
        ...

    def load(self, folder: str) -> Any:
        """The model in ``folder``."""
        ...

    def save(self, model: Any, folder: Path, adapter: bool = False) -> Path:
        """Write ``model`` as a folder this kind loads (LoRA merged, or its ``adapter`` alone)."""
        ...

    def encode(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        show_progress: bool = False, max_length: int | None = None,
    ) -> Encoded:  # fmt: skip
        """The representations of ``texts`` (in eval mode, without gradients)."""
        ...

    def embed(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        max_length: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``(N, D)`` float32: one vector per text, on the model's device (a mining index)."""
        ...

    def scorer(self, model: Any, batch_size: int = 32) -> PairScorer:
        """Scores of queries' candidates under ``model``."""
        ...


def _pairwise(
    kind: ModelKind, model: Any, batch_size: int, similarity: Callable[[Any, Any], float]
) -> PairScorer:
    """A scorer that encodes the queries and the distinct candidates once each, then compares
    every (query, candidate) representation pair with ``similarity``."""

    def score(queries: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        docs = list(dict.fromkeys(d for row in candidates for d in row))
        where = {d: i for i, d in enumerate(docs)}
        q = kind.encode(model, queries, "query", batch_size).values
        d = kind.encode(model, docs, "document", batch_size).values
        return [[similarity(q[i], d[where[c]]) for c in row] for i, row in enumerate(candidates)]

    return score


class SingleVector:
    """:data:`SINGLE_VECTOR`."""

    name, tokens = "single_vector", False

    def claims(self, folder: str) -> bool:
        """Any folder no other kind claims (sentence-transformers or a bare transformer)."""
        return True

    def load(self, folder: str) -> DualEncoder:
        """:func:`~dualforge.modeling.load_model`."""
        return load_model(folder)

    def save(self, model: Any, folder: Path, adapter: bool = False) -> Path:
        """:func:`~dualforge.modeling.save_model`."""
        return save_model(model, folder, adapter)

    def encode(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        show_progress: bool = False, max_length: int | None = None,
    ) -> Vectors:  # fmt: skip
        """``(N, D)`` embeddings."""
        return Vectors(model.encode(list(texts), side, batch_size, show_progress, max_length))

    def embed(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        max_length: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The embeddings, left on the model's device."""
        out: torch.Tensor = model.embed(list(texts), side, batch_size, max_length=max_length)
        return out

    def scorer(self, model: Any, batch_size: int = 32) -> PairScorer:
        """Dot products of query and document embeddings."""
        return _pairwise(self, model, batch_size, lambda q, d: float(q @ d))


class LateInteraction:
    """:data:`LATE_INTERACTION`."""

    name, tokens = "late_interaction", True

    def claims(self, folder: str) -> bool:
        """dualforge's ``late_interaction.json`` or PyLate's MaxSim config."""
        return is_late_folder(folder)

    def load(self, folder: str) -> LateInteractionModel:
        """:func:`~dualforge.modeling.late_io.load_late_model`."""
        return load_late_model(folder)

    def save(self, model: Any, folder: Path, adapter: bool = False) -> Path:
        """:func:`~dualforge.modeling.late_io.save_late_model` (always merged)."""
        if adapter:
            raise ValueError("late-interaction models are exported merged, not as adapters")
        return save_late_model(model, folder)

    def encode(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        show_progress: bool = False, max_length: int | None = None,
    ) -> TokenVectors:  # fmt: skip
        """One ``(T_i, D)`` array per text."""
        return TokenVectors(model.encode(list(texts), side, batch_size, show_progress, max_length))

    def embed(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        max_length: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Unit means of each text's token vectors (pooled on the host), on the model's device."""
        pooled = self.encode(model, texts, side, batch_size, False, max_length).one_per_text()
        return torch.from_numpy(pooled).to(model.device)

    def scorer(self, model: Any, batch_size: int = 32) -> PairScorer:
        """MaxSim of query and document token vectors."""
        return _pairwise(self, model, batch_size, lambda q, d: float((q @ d.T).max(axis=1).sum()))


@dataclass(frozen=True)
class CrossEncoderModel:
    """A sequence-classification transformer with one label, and its tokenizer."""

    model: Any
    tokenizer: Any
    max_length: int = 512

    def to(self, device: torch.device) -> CrossEncoderModel:
        """The same model on ``device``."""
        return CrossEncoderModel(self.model.to(device), self.tokenizer, self.max_length)

    def eval(self) -> CrossEncoderModel:
        """The same model in eval mode."""
        self.model.eval()
        return self


class CrossEncoder:
    """:data:`CROSS_ENCODER` (scores only)."""

    name, tokens = "cross_encoder", False

    def claims(self, folder: str) -> bool:
        """A ``config.json`` naming a ``...ForSequenceClassification`` architecture."""
        config = Path(folder) / "config.json"
        if not config.is_file():
            return False
        names = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        return any(str(a).endswith("ForSequenceClassification") for a in names)

    def load(self, folder: str) -> CrossEncoderModel:
        """The model and tokenizer (one label, or a :class:`ModelLoadError`)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(folder)
        if model.config.num_labels != 1:
            labels = model.config.num_labels
            raise ModelLoadError(
                folder, f"a cross-encoder needs one label (a score), it has {labels}"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder)
        limit = min(512, getattr(tokenizer, "model_max_length", 512) or 512)
        return CrossEncoderModel(model, tokenizer, limit)

    def save(self, model: Any, folder: Path, adapter: bool = False) -> Path:
        """Not for a teacher-only kind."""
        raise ValueError("a cross-encoder is a teacher only: dualforge does not train or save it")

    def encode(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        show_progress: bool = False, max_length: int | None = None,
    ) -> Encoded:  # fmt: skip
        """A cross-encoder has no representations of a text alone."""
        raise ValueError("a cross-encoder scores (query, document) pairs; it encodes no text alone")

    def embed(
        self, model: Any, texts: Sequence[str], side: Side, batch_size: int = 32,
        max_length: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """A cross-encoder has no representations of a text alone."""
        raise ValueError("a cross-encoder scores (query, document) pairs; it encodes no text alone")

    def scorer(self, model: Any, batch_size: int = 32) -> PairScorer:
        """The one-label logit on each ``(query, candidate)``."""
        ce: CrossEncoderModel = model
        device = next(ce.model.parameters()).device

        def score(queries: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
            pairs = [(q, c) for q, row in zip(queries, candidates) for c in row]
            values: list[float] = []
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                enc = ce.tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True,
                                   truncation=True, max_length=ce.max_length, return_tensors="pt")  # fmt: skip
                with torch.no_grad():
                    logits = ce.model(**{k: v.to(device) for k, v in enc.items()}).logits  # (b, 1)
                values.extend(logits[:, 0].float().cpu().tolist())
            it = iter(values)
            return [[next(it) for _ in row] for row in candidates]

        return score


SINGLE_VECTOR: ModelKind = SingleVector()
LATE_INTERACTION: ModelKind = LateInteraction()
CROSS_ENCODER: ModelKind = CrossEncoder()


def kind_of_folder(folder: str) -> ModelKind:
    """The kind of the model in ``folder`` (late interaction, cross-encoder, else single
    vector)."""
    return next(k for k in (LATE_INTERACTION, CROSS_ENCODER, SINGLE_VECTOR) if k.claims(folder))
