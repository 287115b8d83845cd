"""The two kinds of model a run trains, by ``model.kind``: what differs between them, in one place.

``single_vector`` (a :class:`~dualforge.modeling.DualEncoder`: one pooled vector per text, dot or
cosine scores) and ``late_interaction`` (a :class:`~dualforge.modeling.LateInteractionModel`: one
vector per token, MaxSim). A :class:`Kind` is the model kind of :mod:`dualforge.modeling.kinds`
(load, save, encode, score) plus what a run adds: how to build the model from its ``model:``
section and how to evaluate it. The loop asks it; it never branches on the name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualforge.config import EvalConfig, ModelConfig
from dualforge.data import EvalSet
from dualforge.eval import RetrievalReport
from dualforge.eval.late import evaluate_late
from dualforge.modeling import DualEncoder, LateInteractionModel, Model, load_model
from dualforge.modeling.adapters import LoraSettings, add_lora
from dualforge.modeling.encoder import Side
from dualforge.modeling.kinds import LATE_INTERACTION, SINGLE_VECTOR, ModelKind
from dualforge.modeling.late_interaction import PUNCTUATION
from dualforge.modeling.late_io import build_late_model
from dualforge.modeling.rotation import add_identity_projection
from dualforge.train.distributed import ProcessInfo
from dualforge.train.evaluation import evaluate_split, text_encoder


@dataclass(frozen=True)
class Kind:
    """How a run handles its kind of model.

    Attributes:
        model: The model kind (load, save, encode, score).
        build: The model named by a ``model:`` config section.
        evaluate: ``evaluate(model, split, eval_cfg, show_progress, proc)``, a retrieval report.
    """

    model: ModelKind
    build: Callable[[ModelConfig], Any]
    evaluate: Callable[[Any, EvalSet, EvalConfig, bool, ProcessInfo | None], RetrievalReport]

    @property
    def tokens(self) -> bool:
        """Representations are token-level ``(B, T, D + 1)`` (the loss scores with MaxSim)."""
        return self.model.tokens

    def save(self, model: Any, folder: Path, adapter: bool = False) -> Path:
        """Write ``model`` as a folder (LoRA merged, or with ``adapter`` its adapters alone)."""
        return self.model.save(model, folder, adapter)

    def load(self, folder: str) -> Any:
        """Read a folder written by :meth:`save`."""
        return self.model.load(folder)


def build_single(cfg: ModelConfig) -> DualEncoder:
    """The encoder named by the config (with an identity projection if one is asked for;
    ``"pca"`` is fitted when training starts)."""
    model = load_model(
        cfg.name, tied=cfg.tied, pooling=cfg.pooling, normalize=cfg.normalize,
        max_seq_length=cfg.doc_max_length, query_prefix=cfg.query_prompt,
        doc_prefix=cfg.doc_prefix, attention_dropout=cfg.attention_dropout,
        append_eos=cfg.append_eos, padding_side=cfg.padding_side,
    )  # fmt: skip
    if cfg.projection is not None:
        add_identity_projection(model)
    add_configured_lora(model, cfg)
    return model


def add_configured_lora(model: Model, cfg: ModelConfig) -> None:
    """LoRA adapters on the towers when ``model.lora.enabled``."""
    lora = cfg.lora
    if lora.enabled:
        add_lora(model, LoraSettings(lora.r, lora.alpha, lora.dropout, lora.target_modules))


def build_late(cfg: ModelConfig) -> LateInteractionModel:
    """A late-interaction model over the transformer of ``model.name``."""
    model = build_late_model(
        cfg.name, dim=cfg.token_dim, query_max_length=cfg.query_max_length,
        doc_max_length=cfg.doc_max_length, augment_queries=cfg.augment_queries,
        attend_to_expansion=cfg.attend_to_expansion,
        skiplist=cfg.skiplist if cfg.skiplist is not None else PUNCTUATION,
        attention_dropout=cfg.attention_dropout,
    )  # fmt: skip
    add_configured_lora(model, cfg)
    return model


def evaluate_late_split(
    model: LateInteractionModel,
    data: EvalSet,
    cfg: EvalConfig,
    show_progress: bool = True,
    proc: ProcessInfo | None = None,
) -> RetrievalReport:
    """Exhaustive MaxSim on ``data`` (encoding sharded under several processes), at every token
    dim of ``eval.dims``."""

    def encoder(side: Side) -> Callable[[Sequence[str]], Any]:
        return text_encoder(LATE_INTERACTION, model, side, cfg.batch_size, show_progress, proc)

    return evaluate_late(
        encoder("query"), encoder("document"), data.corpus, data.queries, data.qrels,
        k=cfg.k, metrics=cfg.metrics, dims=list(cfg.dims) or None,
    )  # fmt: skip


KINDS: dict[str, Kind] = {
    "single_vector": Kind(SINGLE_VECTOR, build_single, evaluate_split),
    "late_interaction": Kind(LATE_INTERACTION, build_late, evaluate_late_split),
}


def kind_of(cfg: ModelConfig) -> Kind:
    """The :class:`Kind` of ``model.kind``."""
    return KINDS[cfg.kind]


def reload(kind: Kind, folder: Path) -> Model:
    """A saved model folder, read back."""
    out: Model = kind.model.load(str(folder))
    return out
