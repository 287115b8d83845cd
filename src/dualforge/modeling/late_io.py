"""Build, save and load late-interaction models.

Folder format (the sentence-transformers / PyLate layout: a transformer and a bias-free ``Dense``):

    config.json, model.safetensors, tokenizer files    the transformer (``save_pretrained``), its
                                                       tokenizer with the [Q] / [D] markers
    modules.json                                       Transformer at "", Dense at "1_Dense"
    1_Dense/config.json, 1_Dense/model.safetensors     the projection (in_features -> dim, no bias)
    late_interaction.json                              {"kind": "late_interaction", markers,
                                                       lengths, query augmentation, skiplist}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualforge.modeling.io import (
    ST_MODULE,
    check_model_name,
    load_dense,
    load_encoder,
    read_json,
    resolve_model_path,
    save_dense,
    write_json,
)
from dualforge.modeling.late_interaction import (
    PUNCTUATION,
    LateInteractionModel,
    TokenEncoder,
    add_markers,
)

KIND = "late_interaction"
LATE_FILE = "late_interaction.json"


def is_late_folder(name: str) -> bool:
    """Whether ``name`` is a folder saved by :func:`save_late_model`."""
    path = Path(name) / LATE_FILE
    return path.is_file() and read_json(path).get("kind") == KIND


def build_late_model(
    name: str = "minilm",
    *,
    dim: int = 128,
    query_max_length: int = 32,
    doc_max_length: int = 180,
    augment_queries: bool = True,
    attend_to_expansion: bool = False,
    skiplist: Sequence[str] = PUNCTUATION,
    attention_dropout: float | None = None,
) -> LateInteractionModel:
    """A late-interaction model over the transformer of ``name`` (``minilm``, a folder, a hub
    name), with a fresh ``dim`` projection; a folder saved by :func:`save_late_model` is loaded
    as it was saved instead (its own settings win)."""
    check_model_name(name)
    if is_late_folder(resolve_model_path(name)):
        return load_late_model(resolve_model_path(name), attention_dropout=attention_dropout)
    encoder, tokenizer, _ = load_encoder(resolve_model_path(name), None, None, attention_dropout)
    add_markers(tokenizer, encoder.transformer)
    return LateInteractionModel(
        tokenizer, TokenEncoder(encoder.transformer, dim), query_max_length=query_max_length,
        doc_max_length=doc_max_length, augment_queries=augment_queries,
        attend_to_expansion=attend_to_expansion, skiplist=skiplist,
    )  # fmt: skip


def save_late_model(model: LateInteractionModel, path: str | Path) -> Path:
    """Write ``model`` in the folder format of the module docstring."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    transformer: Any = model.encoder.transformer
    transformer.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    save_dense(model.encoder.projection, out / "1_Dense")
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": f"{ST_MODULE}.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": f"{ST_MODULE}.Dense"},
        ],
    )
    write_json(out / LATE_FILE, settings(model))
    return out


def settings(model: LateInteractionModel) -> dict[str, Any]:
    """What ``dualforge.json`` records of a late-interaction model."""
    return {
        "kind": KIND, "dim": model.dim, "query_marker": "[Q]", "doc_marker": "[D]",
        "query_max_length": model.query_max_length, "doc_max_length": model.doc_max_length,
        "augment_queries": model.augment_queries,
        "attend_to_expansion": model.attend_to_expansion, "skiplist": list(model.skiplist),
    }  # fmt: skip


def load_late_model(
    path: str | Path, attention_dropout: float | None = None
) -> LateInteractionModel:
    """Load a folder written by :func:`save_late_model`.

    Raises:
        ValueError: The folder is not a late-interaction folder, or its parts disagree.
    """
    folder = Path(path)
    meta = read_json(folder / LATE_FILE)
    if meta.get("kind") != KIND:
        raise ValueError(f"{folder / LATE_FILE}: not a late-interaction model")
    encoder, tokenizer, _ = load_encoder(str(folder), None, None, attention_dropout)
    projection = load_dense(folder / "1_Dense", encoder.hidden_dim)
    return LateInteractionModel(
        tokenizer, TokenEncoder(encoder.transformer, projection=projection),
        query_max_length=int(meta["query_max_length"]), doc_max_length=int(meta["doc_max_length"]),
        augment_queries=bool(meta["augment_queries"]),
        attend_to_expansion=bool(meta["attend_to_expansion"]), skiplist=meta["skiplist"],
    )  # fmt: skip
