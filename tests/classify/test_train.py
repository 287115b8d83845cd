"""Head training on synthetic separable embeddings, save/load, the embedding cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dualforge.classify import (
    FitConfig,
    HeadTrainConfig,
    LabelledSet,
    encode_texts,
    evaluate_classifier,
    fit_classifier,
    head_logits,
    load_heads,
    save_heads,
    train_heads,
)
from dualforge.classify.train import init_heads
from dualforge.modeling import load_model

DIMS = (4, 8, 16, 32)
FAST = HeadTrainConfig(epochs=40, lr=3e-2, batch_size=64)


def _separable(
    n: int, seed: int, classes: int = 5, d: int = 32
) -> tuple[torch.Tensor, LabelledSet]:
    """Unit vectors around fixed class centres; the first 4 dims carry only a weak signal."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(0))
    centres[:, :4] *= 0.1
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    emb = F.normalize(centres[y] + 0.4 * torch.randn(n, d, generator=g), dim=-1)  # (n, d)
    labels = tuple(f"class-{int(c)}" for c in y)
    texts = tuple(f"text {i}" for i in range(n))
    return emb, LabelledSet("synthetic.jsonl", texts, labels, tuple(range(1, n + 1)))


@pytest.mark.parametrize("kind", ["mrl", "mrle"])
def test_fit_and_evaluate_reach_high_accuracy(kind: str) -> None:
    emb, data = _separable(400, seed=1)
    cfg = FitConfig(kind=kind, dims=DIMS, heldout=0.25, tolerances=(0.0, 0.02, 0.1), train=FAST)
    fitted = fit_classifier(emb, data, cfg, show_progress=False)
    assert fitted.labels == tuple(f"class-{c}" for c in range(5))
    assert fitted.heads.kind == kind and fitted.heads.dims == DIMS
    assert fitted.history[-1] < fitted.history[0]
    held = fitted.heldout_report
    assert held["num_examples"] == 100 and held["num_fit"] == 300
    full_held = held["fixed"][-1]["accuracy"]
    assert all(c["accuracy"] >= full_held - c["tolerance"] - 1e-12 for c in held["cascade"])
    test_emb, test_data = _separable(300, seed=2)
    report = evaluate_classifier(fitted.heads, test_emb, test_data, fitted.labels, fitted.points)
    assert report["fixed"][-1]["accuracy"] >= 0.95
    assert report["fixed"][0]["accuracy"] < report["fixed"][-1]["accuracy"]
    assert report["cascade"][0]["accuracy"] >= 0.93
    assert report["cascade"][0]["expected_dims"] < DIMS[-1]  # easy examples stop early
    assert report["oracle"]["accuracy"] >= report["fixed"][-1]["accuracy"]


def test_training_is_seeded_and_leaves_rng_and_threads_alone() -> None:
    emb, _ = _separable(100, seed=3)
    y = torch.arange(100) % 5
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = init_heads("mrl", DIMS, 5, True, seed=7)
    assert torch.equal(torch.rand(1), before)  # init did not consume the global RNG
    b = init_heads("mrl", DIMS, 5, True, seed=7)
    assert FAST.threads == 1
    torch.set_num_threads(2)  # not the 1 of the suite and of FAST: a missing restore would show
    try:
        train_heads(a, emb, y, FAST, show_progress=False)
        train_heads(b, emb, y, FAST, show_progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(head_logits(a, emb), head_logits(b, emb), rtol=0, atol=0)
    with pytest.raises(ValueError, match="targets"):
        train_heads(a, emb, y + 5, FAST, show_progress=False)
    with pytest.raises(ValueError, match="epochs"):
        HeadTrainConfig(epochs=0)


@pytest.mark.parametrize("kind", ["mrl", "mrle"])
def test_save_and_load_round_trip(tmp_path: Path, kind: str) -> None:
    emb, _ = _separable(20, seed=4)
    heads = init_heads(kind, DIMS, 5, False, seed=0)
    labels = [f"c{i}" for i in range(5)]
    save_heads(tmp_path / "h", heads, labels, {"model": "m", "operating_points": []})
    loaded, meta = load_heads(tmp_path / "h")
    assert meta["kind"] == kind and meta["dims"] == list(DIMS) and meta["labels"] == labels
    assert meta["normalize"] is False and meta["model"] == "m"
    assert loaded.kind == kind and loaded.normalize is False
    torch.testing.assert_close(head_logits(loaded, emb), head_logits(heads, emb), rtol=0, atol=0)
    with pytest.raises(ValueError, match="labels"):
        save_heads(tmp_path / "bad", heads, labels[:2])
    meta_path = tmp_path / "h" / "heads.json"
    meta["dims"] = [4, 8, 16]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match"):
        load_heads(tmp_path / "h")
    with pytest.raises(FileNotFoundError, match=r"heads\.json"):
        load_heads(tmp_path / "missing")


def test_fit_rejects_an_empty_heldout_split() -> None:
    emb, data = _separable(10, seed=5)
    with pytest.raises(ValueError, match="held-out split is empty"):
        fit_classifier(emb, data, FitConfig(dims=DIMS, heldout=0.0, train=FAST), False)
    with pytest.raises(ValueError, match="embeddings"):
        fit_classifier(emb[:5], data, FitConfig(dims=DIMS, train=FAST), False)


def test_encode_texts_uses_the_cache_only_when_it_matches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = load_model(str(tiny_model_dir))
    texts = ["alpha beta", "gamma", "delta protein cell"]
    cache = tmp_path / "cache" / "train.safetensors"
    first = encode_texts(model, texts, 2, False, cache, "tiny")
    assert first.shape == (3, 64) and cache.is_file()
    torch.testing.assert_close(
        first, torch.from_numpy(model.encode(texts, batch_size=2)), rtol=0, atol=0
    )
    stored = load_file(str(cache))["embeddings"]
    marked = torch.full_like(stored, 7.0)  # same fingerprint, other values: must be read back
    with safe_open(str(cache), framework="pt") as fh:
        metadata = fh.metadata()
    save_file({"embeddings": marked}, str(cache), metadata=metadata)
    assert (encode_texts(model, texts, 2, False, cache, "tiny") == 7.0).all()
    other = encode_texts(model, [*texts, "new"], 2, False, cache, "tiny")  # other texts: re-encode
    assert other.shape == (4, 64) and not (other == 7.0).any()
