"""The two kinds of model a run trains, by ``model.kind``: what differs between them, in one place.

``single_vector`` (a :class:`~dualforge.modeling.DualEncoder`: one pooled vector per text, dot or
cosine scores) and ``late_interaction`` (a :class:`~dualforge.modeling.LateInteractionModel`: one
vector per token, MaxSim). The loop asks the run's :class:`Kind` how to build, save, reload and
evaluate its model and whether its representations are token-level; it never branches on the name.
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
from dualforge.modeling import DualEncoder, LateInteractionModel, Model, load_model, save_model
from dualforge.modeling.adapters import LoraSettings, add_lora
from dualforge.modeling.encoder import Side
from dualforge.modeling.late_interaction import PUNCTUATION
from dualforge.modeling.late_io import build_late_model, load_late_model, save_late_model
from dualforge.modeling.rotation import add_identity_projection
from dualforge.train.distributed import ProcessInfo
from dualforge.train.evaluation import evaluate_split, text_encoder


@dataclass(frozen=True)
class Kind:
    """How a run handles its kind of model.

    Attributes:
        tokens: Representations are token-level ``(B, T, D + 1)`` (the loss scores with MaxSim).
        build: The model named by a ``model:`` config section.
        save: ``save(model, folder, adapter)``: write the model as a folder (LoRA models merged,
            or with ``adapter`` as their adapters alone).
        load: Read a folder written by ``save``.
        evaluate: ``evaluate(model, split, eval_cfg, show_progress, proc)``, a retrieval report.
    """

    tokens: bool
    build: Callable[[ModelConfig], Any]
    save: Callable[[Any, Path, bool], Path]
    load: Callable[[str], Any]
    evaluate: Callable[[Any, EvalSet, EvalConfig, bool, ProcessInfo | None], RetrievalReport]


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


def save_late(model: LateInteractionModel, folder: Path, adapter: bool = False) -> Path:
    """:func:`save_late_model` (late-interaction folders are always written merged)."""
    if adapter:
        raise ValueError("late-interaction models are exported merged, not as adapters")
    return save_late_model(model, folder)


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
        return text_encoder(model, side, cfg.batch_size, show_progress, proc)

    return evaluate_late(
        encoder("query"), encoder("document"), data.corpus, data.queries, data.qrels,
        k=cfg.k, metrics=cfg.metrics, dims=list(cfg.dims) or None,
    )  # fmt: skip


KINDS: dict[str, Kind] = {
    "single_vector": Kind(False, build_single, save_model, load_model, evaluate_split),
    "late_interaction": Kind(True, build_late, save_late, load_late_model, evaluate_late_split),
}


def kind_of(cfg: ModelConfig) -> Kind:
    """The :class:`Kind` of ``model.kind``."""
    return KINDS[cfg.kind]


def reload(kind: Kind, folder: Path) -> Model:
    """A saved model folder, read back."""
    out: Model = kind.load(str(folder))
    return out
