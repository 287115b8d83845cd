"""Load encoders from local folders, hub names or the packaged MiniLM; save in sentence-transformers format.

A tied model is saved as a standard sentence-transformers folder (modules.json, 1_Pooling,
optional 2_Dense (a linear projection with identity activation), optional Normalize,
sentence_bert_config.json, prompts in config_sentence_transformers.json), so
``SentenceTransformer(path)`` loads it. Separate towers are saved as two such folders,
``query/`` and ``document/``, described by ``dualforge.json``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dualforge.modeling.adapters import (
    ADAPTER_FILE,
    has_adapters,
    is_peft,
    load_adapter,
    merged_copy,
    save_adapter,
)
from dualforge.modeling.decoder import PaddingSide, is_decoder, prepare_tokenizer
from dualforge.modeling.encoder import DualEncoder, Encoder
from dualforge.modeling.names import (
    ModelLoadError,
    check_model_name,
    resolve_model_path,
)

ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "last": "pooling_mode_lasttoken",
}
ST_MODULE = "sentence_transformers.models"
DUALFORGE_FILE = "dualforge.json"
IDENTITY_ACTIVATION = "torch.nn.modules.linear.Identity"
DENSE_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class StSettings:
    """What a sentence-transformers folder says about pooling, normalisation, length and prompts."""

    pooling: str | None = None
    normalize: bool = False
    max_seq_length: int = 256
    query_prefix: str = ""
    doc_prefix: str = ""
    dense_path: str | None = None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    return data if isinstance(data, dict) else {"modules": data}


def read_st_settings(folder: Path) -> StSettings:
    """Settings from a sentence-transformers folder; defaults for a plain transformers folder."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return StSettings()
    modules = read_json(modules_file)["modules"]
    pooling: str | None = None
    normalize, dense = False, None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling = _pooling_mode(read_json(folder / module["path"] / "config.json"))
        elif kind == "Dense":
            if dense is not None or normalize:
                raise ValueError(
                    f"{modules_file}: only one Dense module, before Normalize, is supported"
                )
            dense = str(module["path"])
        normalize = normalize or kind == "Normalize"
    bert_cfg = folder / "sentence_bert_config.json"
    max_len = int(read_json(bert_cfg).get("max_seq_length", 256)) if bert_cfg.is_file() else 256
    st_cfg = folder / "config_sentence_transformers.json"
    prompts = read_json(st_cfg).get("prompts", {}) if st_cfg.is_file() else {}
    return StSettings(
        pooling, normalize, max_len, prompts.get("query", ""), prompts.get("document", ""), dense
    )


def load_dense(folder: Path, in_features: int) -> nn.Linear:
    """The linear layer of a sentence-transformers ``Dense`` folder (identity activation only)."""
    from safetensors.torch import load_file

    config = read_json(folder / "config.json")
    missing = [key for key in ("in_features", "out_features") if key not in config]
    if missing:
        raise ValueError(f"{folder / 'config.json'}: missing {', '.join(missing)}")
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation != IDENTITY_ACTIVATION:
        raise ValueError(
            f"{folder / 'config.json'}: activation_function {activation!r} is not supported "
            f"(only {IDENTITY_ACTIVATION!r}, a plain linear projection)"
        )
    if int(config["in_features"]) != in_features:
        raise ValueError(
            f"{folder / 'config.json'}: in_features={config['in_features']} but the pooled "
            f"vectors have {in_features} dims"
        )
    layer = nn.Linear(in_features, int(config["out_features"]), bias=bool(config.get("bias", True)))
    weights = folder / DENSE_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{folder}: no {DENSE_WEIGHTS} (the Dense layer's weights)")
    state = {k.removeprefix("linear."): v for k, v in load_file(str(weights)).items()}
    try:
        layer.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not match {config}: {err}") from err
    return layer


def _pooling_mode(config: dict[str, Any]) -> str:
    chosen = [mode for mode, key in ST_POOLING_KEYS.items() if config.get(key)]
    if len(chosen) != 1:
        raise ValueError(f"unsupported sentence-transformers pooling config: {config}")
    return chosen[0]


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


@dataclass(frozen=True)
class Reading:
    """How to read a tower (None: what the folder says, else the default).

    Attributes:
        pooling: ``mean``, ``cls`` or ``last`` (default: ``last`` for decoders, else ``mean``).
        normalize: L2-normalise the output vectors.
        attention_dropout: Attention-probability dropout (0.0 lets PyTorch use its fused
            attention kernels; on CPU that halves the cost of a training step).
        append_eos: End every text with EOS (default: for decoders pooled ``last``;
            :mod:`dualforge.modeling.decoder`).
        padding_side: ``left`` or ``right`` for decoders (default: the tokenizer's).
    """

    pooling: str | None = None
    normalize: bool | None = None
    attention_dropout: float | None = None
    append_eos: bool | None = None
    padding_side: PaddingSide | None = None


def _load_config(name: str, path: str) -> Any:
    """The transformers config of ``path`` (the base model's for an adapter folder)."""
    from transformers import AutoConfig

    adapter = Path(path) / ADAPTER_FILE
    source = path
    if adapter.is_file() and not (Path(path) / "config.json").is_file():
        source = str(read_json(adapter).get("base_model_name_or_path") or "")
        if not source:
            raise ModelLoadError(name, f"{adapter} names no base_model_name_or_path")
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:  # transformers: no such folder / hub name, no config
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(name, f"cannot be loaded: {reason}") from err


def _set_attention_dropout(name: str, config: Any, dropout: float | None) -> None:
    if dropout is None:
        return
    keys = [k for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)]
    if not keys:
        raise ValueError(
            f"{name}: config has no attention dropout setting {ATTENTION_DROPOUT_KEYS}"
        )
    for key in keys:
        setattr(config, key, dropout)


def load_encoder(name: str, reading: Reading | None = None) -> tuple[Encoder, Any, StSettings]:
    """One tower, its tokenizer and its folder settings (``reading`` overrides them).

    A folder holding a peft adapter (``adapter_config.json``, no base weights) loads its base
    model and puts the adapter on it.
    """
    from transformers import AutoModel, AutoTokenizer

    how = reading or Reading()
    path = resolve_model_path(name)
    folder = Path(path)
    settings = read_st_settings(folder) if folder.is_dir() else StSettings()
    config = _load_config(name, path)
    _set_attention_dropout(name, config, how.attention_dropout)
    adapter = (folder / ADAPTER_FILE).is_file()
    base = config.name_or_path if adapter else path
    transformer = AutoModel.from_pretrained(base, config=config)
    if adapter:
        transformer = load_adapter(transformer, folder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    decoder = is_decoder(config)
    pooling = how.pooling or settings.pooling or ("last" if decoder else "mean")
    if decoder:
        config.use_cache = False  # embedding: no key/value cache
        eos = how.append_eos if how.append_eos is not None else pooling == "last"
        prepare_tokenizer(tokenizer, eos=eos, padding_side=how.padding_side)
    hidden = int(getattr(config, "hidden_size", 0))
    projection = load_dense(folder / settings.dense_path, hidden) if settings.dense_path else None
    encoder = Encoder(
        transformer,
        pooling=pooling,
        normalize=settings.normalize if how.normalize is None else how.normalize,
        projection=projection,
        mask_positions=decoder,
    )
    return encoder, tokenizer, settings


def load_model(
    name: str = "minilm",
    *,
    tied: bool = True,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
    query_prefix: str | None = None,
    doc_prefix: str | None = None,
    attention_dropout: float | None = None,
    append_eos: bool | None = None,
    padding_side: PaddingSide | None = None,
) -> DualEncoder:
    """Load a :class:`DualEncoder` from ``minilm``, a local folder or a hub name.

    Args:
        name: ``"minilm"`` (packaged all-MiniLM-L6-v2), a folder (transformers,
            sentence-transformers, dualforge two-tower layout, or a peft adapter folder written
            by :func:`save_model` with ``adapter=True``), or a hub name when online.
        tied: Share one tower for queries and documents; False copies it into two towers.
        pooling: Override the folder's pooling (``mean``, ``cls``, ``last``).
        normalize: Override the folder's L2 normalisation.
        max_seq_length: Override the folder's truncation length.
        query_prefix: Override the query prompt.
        doc_prefix: Override the document prompt.
        attention_dropout: Override the attention dropout (see :class:`Reading`).
        append_eos: Decoders: end every text with EOS (see :class:`Reading`).
        padding_side: Decoders: ``left`` or ``right`` padding.

    Raises:
        ModelLoadError: When ``name`` is neither a model folder nor a loadable hub name.
    """
    check_model_name(name)
    folder = Path(resolve_model_path(name))
    how = Reading(pooling, normalize, attention_dropout, append_eos, padding_side)
    if (folder / DUALFORGE_FILE).is_file():
        q_enc, tokenizer, settings = load_encoder(str(folder / "query"), how)
        d_enc: Encoder | None
        d_enc, _, _ = load_encoder(str(folder / "document"), how)
    else:
        q_enc, tokenizer, settings = load_encoder(str(folder), how)
        d_enc = None if tied else copy.deepcopy(q_enc)
    return DualEncoder(
        tokenizer,
        q_enc,
        d_enc,
        max_seq_length=max_seq_length or settings.max_seq_length,
        query_prefix=settings.query_prefix if query_prefix is None else query_prefix,
        doc_prefix=settings.doc_prefix if doc_prefix is None else doc_prefix,
    )


def save_model(model: DualEncoder, path: str | Path, adapter: bool = False) -> Path:
    """Save ``model`` so that ``load_model(path)`` (and, when tied, ``SentenceTransformer``) reads it.

    A model with LoRA adapters is saved merged (a plain folder), or with ``adapter`` as its
    adapters alone (peft files in place of the transformer weights; loading needs the base
    model the adapter names, and peft).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if not adapter and has_adapters(model):
        merged: Any = merged_copy(model)
        model = merged
    if model.tied:
        _save_tower(model, model.query_encoder, out)
        return out
    _save_tower(model, model.query_encoder, out / "query")
    _save_tower(model, model.doc_encoder, out / "document")
    (out / DUALFORGE_FILE).write_text(json.dumps({"tied": False}, indent=2) + "\n")
    return out


def _save_tower(model: DualEncoder, encoder: Encoder, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    transformer: Any = encoder.transformer
    if is_peft(transformer):
        save_adapter(transformer, out)
    else:
        transformer.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{ST_MODULE}.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{ST_MODULE}.Pooling"},
    ]
    if encoder.projection is not None:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": f"{ST_MODULE}.Dense"})
        save_dense(encoder.projection, out / "2_Dense")
    if encoder.normalize:
        idx = len(modules)
        path = f"{idx}_Normalize"
        modules.append(
            {"idx": idx, "name": str(idx), "path": path, "type": f"{ST_MODULE}.Normalize"}
        )
        (out / path).mkdir(exist_ok=True)
    write_json(out / "modules.json", modules)
    write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": model.max_seq_length, "do_lower_case": False},
    )
    pooling = {key: encoder.pooling == mode for mode, key in ST_POOLING_KEYS.items()}
    pooling.update(pooling_mode_max_tokens=False, pooling_mode_mean_sqrt_len_tokens=False)
    (out / "1_Pooling").mkdir(exist_ok=True)
    write_json(
        out / "1_Pooling" / "config.json",
        {"word_embedding_dimension": encoder.hidden_dim, **pooling},
    )
    prompts = {"query": model.query_prefix, "document": model.doc_prefix}
    similarity = "cosine" if encoder.normalize else "dot"
    write_json(
        out / "config_sentence_transformers.json",
        {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": similarity},
    )


def save_dense(layer: nn.Linear, out: Path) -> None:
    """Write ``layer`` as a sentence-transformers ``Dense`` folder with identity activation."""
    from safetensors.torch import save_file

    out.mkdir(exist_ok=True)
    config = {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "bias": layer.bias is not None,
        "activation_function": IDENTITY_ACTIVATION,
    }
    write_json(out / "config.json", config)
    state = {f"linear.{k}": v.detach().cpu().contiguous() for k, v in layer.state_dict().items()}
    save_file(state, str(out / DENSE_WEIGHTS))


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
