"""Build, save and load late-interaction models.

Folder format: PyLate's (``pylate.models.ColBERT``, seen in pylate 1.6.0), plus dualforge's own record:

    config.json, model.safetensors, tokenizer files    the transformer (``save_pretrained``), its
                                                       tokenizer with the "[Q] " / "[D] " markers
    modules.json                                       Transformer at "", pylate Dense at "1_Dense"
    1_Dense/config.json, 1_Dense/model.safetensors     the projection (in_features -> dim, no bias)
    config_sentence_transformers.json                  PyLate's settings: query_prefix,
                                                       document_prefix, query_length,
                                                       document_length, do_query_expansion,
                                                       attend_to_expansion_tokens, skiplist_words,
                                                       similarity_fn_name "MaxSim"
    late_interaction.json                              {"kind": "late_interaction", the same
                                                       settings under dualforge's names}

A folder saved by PyLate (no ``late_interaction.json``) loads from its PyLate settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualforge.modeling.adapters import has_adapters, merged_copy
from dualforge.modeling.io import (
    ST_MODULE,
    Reading,
    load_dense,
    load_encoder,
    read_json,
    save_dense,
    write_json,
)
from dualforge.modeling.late_interaction import (
    PUNCTUATION,
    LateInteractionModel,
    TokenEncoder,
    add_markers,
)
from dualforge.modeling.names import check_model_name, resolve_model_path

KIND = "late_interaction"
LATE_FILE = "late_interaction.json"
ST_CONFIG = "config_sentence_transformers.json"
PYLATE_DENSE = "pylate.models.Dense.Dense"


def is_late_folder(name: str) -> bool:
    """Whether ``name`` is a late-interaction folder (saved by :func:`save_late_model`, or by
    PyLate: a MaxSim sentence-transformers config)."""
    folder = Path(name)
    if (folder / LATE_FILE).is_file():
        return read_json(folder / LATE_FILE).get("kind") == KIND
    st = folder / ST_CONFIG
    return st.is_file() and read_json(st).get("similarity_fn_name") == "MaxSim"


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
    if is_late_folder(resolve_model_path(name)):  # dualforge's or PyLate's
        return load_late_model(resolve_model_path(name), attention_dropout=attention_dropout)
    encoder, tokenizer, _ = load_encoder(
        resolve_model_path(name), Reading(attention_dropout=attention_dropout)
    )
    add_markers(tokenizer, encoder.transformer)
    return LateInteractionModel(
        tokenizer, TokenEncoder(encoder.transformer, dim), query_max_length=query_max_length,
        doc_max_length=doc_max_length, augment_queries=augment_queries,
        attend_to_expansion=attend_to_expansion, skiplist=skiplist,
    )  # fmt: skip


def save_late_model(model: LateInteractionModel, path: str | Path) -> Path:
    """Write ``model`` in the folder format of the module docstring (LoRA adapters merged)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if has_adapters(model):
        merged: Any = merged_copy(model)
        model = merged
    transformer: Any = model.encoder.transformer
    transformer.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    save_dense(model.encoder.projection, out / "1_Dense")
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": f"{ST_MODULE}.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": PYLATE_DENSE},
        ],
    )
    write_json(out / ST_CONFIG, pylate_settings(model))
    write_json(out / LATE_FILE, settings(model))
    return out


def pylate_settings(model: LateInteractionModel) -> dict[str, Any]:
    """``config_sentence_transformers.json`` as PyLate reads it."""
    return {
        "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "MaxSim", "query_prefix": model.query_marker,
        "document_prefix": model.doc_marker, "query_length": model.query_max_length,
        "document_length": model.doc_max_length,
        "attend_to_expansion_tokens": model.attend_to_expansion,
        "skiplist_words": list(model.skiplist), "do_query_expansion": model.augment_queries,
    }  # fmt: skip


def settings(model: LateInteractionModel) -> dict[str, Any]:
    """What ``dualforge.json`` records of a late-interaction model."""
    return {
        "kind": KIND, "dim": model.dim, "query_marker": model.query_marker,
        "doc_marker": model.doc_marker,
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
    meta = _settings(folder)
    encoder, tokenizer, _ = load_encoder(str(folder), Reading(attention_dropout=attention_dropout))
    projection = load_dense(folder / "1_Dense", encoder.hidden_dim)
    markers = (str(meta["query_marker"]), str(meta["doc_marker"]))
    add_markers(tokenizer, encoder.transformer, markers)  # no-op when the folder has them
    return LateInteractionModel(
        tokenizer, TokenEncoder(encoder.transformer, projection=projection),
        query_max_length=int(meta["query_max_length"]), doc_max_length=int(meta["doc_max_length"]),
        augment_queries=bool(meta["augment_queries"]),
        attend_to_expansion=bool(meta["attend_to_expansion"]), skiplist=meta["skiplist"],
        query_marker=markers[0], doc_marker=markers[1],
    )  # fmt: skip


def _settings(folder: Path) -> dict[str, Any]:
    """dualforge's record of a folder, or the same settings read from PyLate's config.

    Raises:
        ValueError: The folder is neither.
    """
    if (folder / LATE_FILE).is_file():
        meta = read_json(folder / LATE_FILE)
        if meta.get("kind") != KIND:
            raise ValueError(f"{folder / LATE_FILE}: not a late-interaction model")
        return meta
    if not is_late_folder(str(folder)):
        raise ValueError(
            f"{folder}: not a late-interaction model (no {LATE_FILE}, no MaxSim {ST_CONFIG})"
        )
    st = read_json(folder / ST_CONFIG)
    return {
        "query_marker": st.get("query_prefix", "[Q] "), "doc_marker": st.get("document_prefix", "[D] "),
        "query_max_length": st.get("query_length", 32), "doc_max_length": st.get("document_length", 180),
        "augment_queries": st.get("do_query_expansion", True),
        "attend_to_expansion": st.get("attend_to_expansion_tokens", False),
        "skiplist": st.get("skiplist_words", list(PUNCTUATION)),
    }  # fmt: skip
