"""ColBERT-style tokenization and encoding: markers, query augmentation, skiplist, token vectors."""

from __future__ import annotations

import copy

import pytest
import torch

from dualforge.modeling.late_interaction import (
    DOC_MARKER,
    QUERY_MARKER,
    LateInteractionModel,
    TokenEncoder,
    add_markers,
)
from dualforge.tokens import split_tokens
from tests.conftest import make_tiny_bert


def late_model(tokenizer, dropout: float = 0.0, **kwargs) -> LateInteractionModel:  # type: ignore[no-untyped-def]
    """A tiny random BERT behind a 16-dim token projection, with its own tokenizer copy."""
    tok = copy.deepcopy(tokenizer)
    bert = make_tiny_bert(len(tok), dropout=dropout, seed=0)
    add_markers(tok, bert)
    torch.manual_seed(1)
    settings = {"query_max_length": 12, "doc_max_length": 24, **kwargs}
    return LateInteractionModel(tok, TokenEncoder(bert, dim=16), **settings)


@pytest.fixture(scope="module")
def model(tokenizer) -> LateInteractionModel:  # type: ignore[no-untyped-def]
    return late_model(tokenizer)


def test_markers_are_single_added_tokens_after_cls(model: LateInteractionModel) -> None:
    tok = model.tokenizer
    q = model.tokenize(["gene therapy"], "query")
    d = model.tokenize(["a cell, a virus."], "document")
    assert q["input_ids"][0, 1] == tok.convert_tokens_to_ids(QUERY_MARKER)
    assert d["input_ids"][0, 1] == tok.convert_tokens_to_ids(DOC_MARKER)
    assert model.encoder.transformer.get_input_embeddings().num_embeddings == len(tok)


def test_queries_are_augmented_with_mask_tokens_that_are_scored(
    model: LateInteractionModel,
) -> None:
    q = model.tokenize(["gene therapy", "a much longer query about the immune response"], "query")
    assert q["input_ids"].shape == (2, 12)
    expansion = q["input_ids"] == model.tokenizer.mask_token_id
    assert expansion[0].sum() > expansion[1].sum()  # the short query gets more expansion
    assert torch.all(q["token_mask"] == 1)  # every position is scored
    assert torch.all(q["attention_mask"][expansion] == 0)  # and does not attend by default
    attending = late_model(model.tokenizer, attend_to_expansion=True)
    assert torch.all(attending.tokenize(["gene therapy"], "query")["attention_mask"] == 1)


def test_skiplist_tokens_are_encoded_but_not_scored(model: LateInteractionModel) -> None:
    d = model.tokenize(["cell, virus; blood."], "document")
    words = model.tokenizer.convert_ids_to_tokens(d["input_ids"][0])
    scored = [w for w, m in zip(words, d["token_mask"][0].tolist()) if m]
    assert "," not in scored and ";" not in scored and "." not in scored
    assert {"cell", "virus", "blood"} <= set(scored)
    assert int(d["attention_mask"].sum()) == len(words)  # punctuation still attends


def test_encode_returns_the_scored_unit_vectors_of_each_text(model: LateInteractionModel) -> None:
    texts = ["cell, virus.", "a long document about proteins in the brain"]
    out = model.encode(texts, "document", batch_size=1)
    batch = model.tokenize(texts, "document")
    for vectors, mask in zip(out, batch["token_mask"]):
        assert vectors.shape == (int(mask.sum()), 16)
        assert torch.allclose(
            torch.from_numpy(vectors).norm(dim=-1), torch.ones(len(vectors)), atol=1e-5
        )
    reps = model(batch, "document")
    v, m = split_tokens(reps)
    assert torch.allclose(torch.from_numpy(out[1]), v[1][m[1]], atol=1e-5)


def test_save_and_load_give_the_same_token_vectors(model: LateInteractionModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dualforge.modeling.late_io import build_late_model, load_late_model, save_late_model

    save_late_model(model, tmp_path / "late")
    again = load_late_model(tmp_path / "late")
    assert (again.dim, again.query_max_length, again.skiplist) == (16, 12, model.skiplist)
    texts = ["cell, virus.", "proteins in the brain"]
    for side in ("query", "document"):
        for a, b in zip(model.encode(texts, side), again.encode(texts, side)):
            assert a.shape == b.shape and float(abs(a - b).max()) < 1e-6
    assert build_late_model(str(tmp_path / "late")).dim == 16  # a saved folder loads as saved
