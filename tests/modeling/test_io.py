"""Loading and saving: sentence-transformers reads our folders and gives the same embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualforge.modeling import DualEncoder, Encoder, load_model, save_model
from tests.conftest import make_tiny_bert

TEXTS = ["a short one", "a much longer sentence about protein folding in yeast cells", "x"]


def tiny_model(tokenizer, tied: bool = True, pooling: str = "mean") -> DualEncoder:  # type: ignore[no-untyped-def]
    q = Encoder(make_tiny_bert(len(tokenizer), seed=0), pooling=pooling, normalize=True)
    d = None if tied else Encoder(make_tiny_bert(len(tokenizer), seed=1), pooling=pooling)
    return DualEncoder(
        tokenizer, q, d, max_seq_length=32, query_prefix="query: ", doc_prefix="doc: "
    )


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_sentence_transformers_round_trip(tokenizer, tmp_path: Path, pooling: str) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    model = tiny_model(tokenizer, pooling=pooling)
    save_model(model, tmp_path / "m")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    for side, prompt in (("query", "query"), ("document", "document")):
        ours = model.encode(TEXTS, side=side)
        theirs = st.encode(TEXTS, prompt_name=prompt, convert_to_numpy=True)
        assert np.abs(ours - theirs).max() < 1e-5


def test_reload_gives_same_settings_and_embeddings(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(tokenizer)
    save_model(model, tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert (again.max_seq_length, again.query_prefix, again.doc_prefix) == (32, "query: ", "doc: ")
    assert again.tied and again.query_encoder.normalize
    assert np.abs(again.encode(TEXTS) - model.encode(TEXTS)).max() < 1e-6


def test_separate_towers_round_trip(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(tokenizer, tied=False)
    save_model(model, tmp_path / "two")
    again = load_model(str(tmp_path / "two"))
    assert not again.tied
    for side in ("query", "document"):
        assert np.abs(again.encode(TEXTS, side) - model.encode(TEXTS, side)).max() < 1e-6
    assert np.abs(model.encode(TEXTS, "query") - model.encode(TEXTS, "document")).max() > 1e-3


def test_packaged_minilm_matches_sentence_transformers(minilm_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = load_model("minilm")
    assert (model.dim, model.max_seq_length, model.query_encoder.pooling) == (384, 256, "mean")
    assert model.query_encoder.normalize
    st = SentenceTransformer(str(minilm_path), device="cpu")
    assert np.abs(model.encode(TEXTS) - st.encode(TEXTS, convert_to_numpy=True)).max() < 1e-5


def test_untied_load_copies_weights() -> None:
    model = load_model("minilm", tied=False, query_prefix="q: ")
    assert not model.tied and model.query_prefix == "q: "
    p_q = next(model.query_encoder.parameters())
    p_d = next(model.doc_encoder.parameters())
    assert p_q is not p_d and np.allclose(p_q.detach().numpy(), p_d.detach().numpy())
