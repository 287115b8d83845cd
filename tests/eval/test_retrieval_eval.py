"""evaluate_retrieval on a toy corpus with a deterministic bag-of-characters encoder."""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from dualforge.eval import RetrievalReport, evaluate, evaluate_retrieval, exact_search
from dualforge.eval.retrieval import run_from_search

DIM = 32
LETTERS = string.ascii_lowercase[:8]
CORPUS = {f"d{i}": c * (i + 2) for i, c in enumerate(LETTERS)}  # "aa", "bbb", ...
QUERIES = {f"q{i}": c for i, c in enumerate(LETTERS)} | {"unjudged": "zz"}
QRELS = {f"q{i}": {f"d{i}": 1, f"d{(i + 1) % 8}": 0} for i in range(8)}
AT_1 = ("ndcg@1", "recall@1", "mrr@1", "map@1", "precision@1")


class CharEncoder:
    """Bag of characters hashed into ``DIM`` buckets; records what it encodes."""

    def __init__(self, as_tensor: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.as_tensor = as_tensor

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), DIM), np.float32)  # (B, DIM)
        for row, text in enumerate(texts):
            for ch in text:
                out[row, ord(ch) % DIM] += 1.0
        return torch.from_numpy(out) if self.as_tensor else out  # type: ignore[return-value]


def test_identical_texts_give_perfect_scores() -> None:
    enc_q, enc_d = CharEncoder(), CharEncoder(as_tensor=True)
    report = evaluate_retrieval(enc_q, enc_d, CORPUS, QUERIES, QRELS, k=5, backend="torch")
    assert report.metrics == {
        "ndcg@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map@100": 1.0
    }  # fmt: skip
    assert (report.num_queries, report.num_docs, report.embedding_dim) == (8, 8, DIM)
    assert enc_q.calls == [list(LETTERS)]  # only judged queries, once
    assert enc_d.calls == [list(CORPUS.values())]  # the corpus, once


def test_wrong_judgments_give_zero_at_1() -> None:
    shifted = {f"q{i}": {f"d{(i + 1) % 8}": 2} for i in range(8)}
    report = evaluate_retrieval(
        CharEncoder(), CharEncoder(), CORPUS, QUERIES, shifted, metrics=AT_1
    )
    assert report.metrics == dict.fromkeys(AT_1, 0.0)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_metrics_by_dim(backend: str) -> None:
    dims = [16, 4, DIM, 4]
    report = evaluate_retrieval(
        CharEncoder(), CharEncoder(), CORPUS, QUERIES, QRELS, k=3, dims=dims, backend=backend
    )
    assert report.dims == [4, 16, DIM]
    assert list(report.metrics_by_dim) == ["4", "16", str(DIM)]
    assert report.metrics_by_dim[str(DIM)] == report.metrics
    qids = [f"q{i}" for i in range(8)]
    q = CharEncoder()([QUERIES[x] for x in qids])
    d = CharEncoder()(list(CORPUS.values()))
    for dim in (4, 16):
        scores, ids = exact_search(q, d, 100, metric="cos", backend=backend, dims=dim)
        expected = evaluate(QRELS, run_from_search(qids, list(CORPUS), scores, ids))
        assert report.metrics_by_dim[str(dim)] == pytest.approx(expected)
    assert report.metrics_by_dim["4"]["mrr@10"] < 1.0  # 4 buckets cannot separate 8 letters


def test_report_serialisation() -> None:
    report = evaluate_retrieval(
        CharEncoder(), CharEncoder(), CORPUS, QUERIES, QRELS, metrics=AT_1[:2], dims=[8]
    )
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert set(data) == {
        "metrics", "metrics_by_dim", "num_queries", "num_docs", "dims", "embedding_dim"
    }  # fmt: skip
    assert data["dims"] == [8] and set(data["metrics_by_dim"]["8"]) == set(AT_1[:2])
    assert RetrievalReport(**data) == report


def test_queries_without_text_or_judgments_are_skipped() -> None:
    qrels = {**QRELS, "no-text": {"d0": 1}, "no-judgments": {}}
    enc_q = CharEncoder()
    report = evaluate_retrieval(
        enc_q, CharEncoder(), CORPUS, QUERIES | {"no-judgments": "a"}, qrels
    )
    assert report.num_queries == 8 and enc_q.calls == [list(LETTERS)]


def test_bad_arguments_fail_before_encoding() -> None:
    enc = CharEncoder()
    bad: list[dict[str, object]] = [
        {"metrics": ["ndcg@ten"]},
        {"k": 0},
        {"metric": "l2"},
        {"backend": "annoy"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            evaluate_retrieval(enc, enc, CORPUS, QUERIES, QRELS, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="corpus is empty"):
        evaluate_retrieval(enc, enc, {}, QUERIES, QRELS)
    with pytest.raises(ValueError, match="no query"):
        evaluate_retrieval(enc, enc, CORPUS, {"x": "a"}, QRELS)
    assert enc.calls == []
    with pytest.raises(ValueError, match=r"outside 1\.\.32"):
        evaluate_retrieval(enc, enc, CORPUS, QUERIES, QRELS, dims=[64])


def test_encoder_output_shape_checked() -> None:
    def broken(texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts) + 1, 4), np.float32)

    with pytest.raises(ValueError, match="query encoder must return"):
        evaluate_retrieval(broken, CharEncoder(), CORPUS, QUERIES, QRELS)
    with pytest.raises(ValueError, match="query dim 4 != document dim 32"):
        evaluate_retrieval(lambda t: np.ones((len(t), 4)), CharEncoder(), CORPUS, QUERIES, QRELS)
