"""LoRA adapters: frozen base, trainable adapters, merged and adapter exports that
sentence-transformers reads with the stored prompts, partial checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dualforge.modeling import load_model, save_model
from dualforge.modeling.adapters import (
    ADAPTER_FILE,
    LoraSettings,
    add_lora,
    has_adapters,
    trainable_names,
)
from dualforge.train.checkpoint import ModelWeights
from dualforge.train.schedule import build_optimizer

PROMPT = "Instruct: retrieve a supporting abstract\nQuery: "
QUERIES = ["gene therapy", "vitamin D and the immune response"]


def lora_model(folder: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    """The tiny decoder with a prompt and LoRA whose B matrices are random (so it differs from
    the base model)."""
    model = load_model(str(folder), query_prefix=PROMPT, doc_prefix="")
    torch.manual_seed(seed)
    add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.eval()
    return model


def test_only_adapters_train(tiny_decoder_dir: Path) -> None:
    model = lora_model(tiny_decoder_dir)
    names = trainable_names(model)
    assert names and all("lora_" in n for n in names)
    assert has_adapters(model)
    optimizer = build_optimizer(model.named_parameters(), 1e-3, 0.01)
    in_optimizer = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert in_optimizer == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert in_optimizer < sum(p.numel() for p in model.parameters()) / 5


def test_targets_restrict_the_adapted_layers(tiny_decoder_dir: Path) -> None:
    model = load_model(str(tiny_decoder_dir))
    add_lora(model, LoraSettings(r=2, target_modules=("q_proj", "v_proj")))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable_names(model)}
    assert adapted == {"q_proj", "v_proj"}


def _st_encode(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    out: np.ndarray = st.encode(texts, prompt_name="query", convert_to_numpy=True)
    return out


@pytest.mark.parametrize("adapter", [False, True])
def test_export_loads_in_dualforge_and_sentence_transformers(
    tiny_decoder_dir: Path, tmp_path: Path, adapter: bool
) -> None:
    model = lora_model(tiny_decoder_dir)
    ours = model.encode(QUERIES, "query")
    save_model(model, tmp_path / "out", adapter=adapter)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert (ADAPTER_FILE in files) is adapter
    assert ("model.safetensors" in files) is not adapter
    back = load_model(str(tmp_path / "out"))
    assert back.query_prefix == PROMPT
    np.testing.assert_allclose(back.encode(QUERIES, "query"), ours, atol=1e-5)
    np.testing.assert_allclose(_st_encode(tmp_path / "out", QUERIES), ours, atol=1e-5)


def test_adapters_change_the_embeddings(tiny_decoder_dir: Path) -> None:
    """Sanity check that the export test can fail: the base model encodes differently."""
    ours = lora_model(tiny_decoder_dir).encode(QUERIES, "query")
    base = load_model(str(tiny_decoder_dir), query_prefix=PROMPT).encode(QUERIES, "query")
    assert np.abs(ours - base).max() > 1e-3


def test_checkpoint_holds_the_adapters_alone(tiny_decoder_dir: Path) -> None:
    model = lora_model(tiny_decoder_dir, seed=0)
    state = ModelWeights(model).state_dict()
    assert set(state) == set(trainable_names(model))
    fresh = lora_model(tiny_decoder_dir, seed=1)
    assert not np.allclose(fresh.encode(QUERIES), model.encode(QUERIES))
    ModelWeights(fresh).load_state_dict(state)
    np.testing.assert_allclose(fresh.encode(QUERIES), model.encode(QUERIES), atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        ModelWeights(fresh).load_state_dict(dict(list(state.items())[1:]))
