"""Principal-axes rotation: orthogonal, ordered like an SVD, scores unchanged, saved as a Dense layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dualforge.modeling import DualEncoder, Encoder, load_model, save_model
from dualforge.modeling.rotation import (
    add_identity_projection,
    add_rotation,
    principal_axes,
    rotate_model,
)
from tests.conftest import make_tiny_bert

DOCS = [
    f"document {i} about {w} and {v}"
    for i, (w, v) in enumerate(
        zip(["yeast", "protein", "cells", "genes", "virus", "tumour"] * 4, ["mice", "rna"] * 12)
    )
]
QUERIES = ["what do yeast cells do", "protein folding", "x"]


def anisotropic(n: int = 500, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * np.geomspace(4.0, 0.25, d)) @ basis.T + 0.5


def test_principal_axes_match_svd_and_order_energy() -> None:
    x = anisotropic()
    rot = principal_axes(x).double().numpy()
    assert np.allclose(rot @ rot.T, np.eye(8), atol=1e-5)
    _, sing, vt = np.linalg.svd(x, full_matrices=False)  # oracle: right singular vectors
    assert np.allclose(np.abs(np.sum(rot * vt, axis=1)), 1.0, atol=1e-4)
    energy = ((x @ rot.T) ** 2).mean(0)
    assert np.allclose(energy, sing**2 / len(x), rtol=1e-4)
    assert np.all(np.diff(energy) <= 0)
    centred = principal_axes(x, center=True).double().numpy()
    _, _, vt_c = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert np.allclose(np.abs(np.sum(centred * vt_c, axis=1)), 1.0, atol=1e-4)


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros(4), np.full((3, 2), np.nan)])
def test_principal_axes_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="principal_axes"):
        principal_axes(bad)


def tiny(tokenizer, tied: bool = True) -> DualEncoder:  # type: ignore[no-untyped-def]
    q = Encoder(make_tiny_bert(len(tokenizer), seed=0), "mean", normalize=True)
    d = None if tied else Encoder(make_tiny_bert(len(tokenizer), seed=1), "mean", normalize=True)
    return DualEncoder(tokenizer, q, d, max_seq_length=32)


@pytest.mark.parametrize("tied", [True, False])
def test_rotate_model_keeps_full_scores_and_front_loads_prefixes(tokenizer, tied: bool) -> None:  # type: ignore[no-untyped-def]
    model = tiny(tokenizer, tied)
    before_q, before_d = model.encode(QUERIES, "query"), model.encode(DOCS, "document")
    rot = rotate_model(model, DOCS)
    after_q, after_d = model.encode(QUERIES, "query"), model.encode(DOCS, "document")
    assert np.abs(after_q @ after_d.T - before_q @ before_d.T).max() < 1e-5
    assert np.abs(after_d - before_d @ rot.numpy().T).max() < 1e-5
    m = 8  # the first m coordinates now hold at least as much as any m before
    kept_after = (after_d[:, :m] ** 2).sum() / (after_d**2).sum()
    best_before = np.sort((before_d**2).sum(0))[::-1][:m].sum() / (before_d**2).sum()
    assert kept_after >= best_before - 1e-6
    assert model.query_encoder.projection is not None and model.doc_encoder.projection is not None


def test_add_rotation_composes_in_place(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny(tokenizer)
    add_identity_projection(model)
    layer = model.query_encoder.projection
    assert layer is not None
    weight = layer.weight
    before = model.encode(DOCS, "document")
    rot = principal_axes(anisotropic(d=model.dim, n=200))
    add_rotation(model.query_encoder, rot)
    add_rotation(model.query_encoder, rot.T)  # undoing it: R^T R = I
    assert model.query_encoder.projection.weight is weight  # same Parameter: optimizers keep it
    assert np.abs(model.encode(DOCS, "document") - before).max() < 1e-5
    with pytest.raises(ValueError, match="rotation must be"):
        add_rotation(model.query_encoder, torch.eye(model.dim + 1))


def test_projected_model_round_trips_and_loads_in_sentence_transformers(
    tokenizer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    model = tiny(tokenizer)
    rotate_model(model, DOCS)
    save_model(model, tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "Dense",
        "Normalize",
    ]
    again = load_model(str(tmp_path / "m"))
    assert again.query_encoder.projection is not None
    assert np.abs(again.encode(DOCS) - model.encode(DOCS)).max() < 1e-6
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.abs(st.encode(DOCS, convert_to_numpy=True) - model.encode(DOCS)).max() < 1e-5


def test_unsupported_dense_layers_are_named(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny(tokenizer)
    add_identity_projection(model)
    save_model(model, tmp_path / "m")
    config_file = tmp_path / "m" / "2_Dense" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(
        json.dumps({**config, "activation_function": "torch.nn.modules.activation.Tanh"})
    )
    with pytest.raises(ValueError, match=r"2_Dense.*activation_function"):
        load_model(str(tmp_path / "m"))
    config_file.write_text(json.dumps({**config, "in_features": 7}))
    with pytest.raises(ValueError, match="in_features=7"):
        load_model(str(tmp_path / "m"))
    config_file.write_text(json.dumps({"out_features": 64}))
    with pytest.raises(ValueError, match="missing in_features"):
        load_model(str(tmp_path / "m"))


def test_rotate_model_needs_documents(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 2 documents"):
        rotate_model(tiny(tokenizer), ["one"])
