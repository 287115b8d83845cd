"""Searching one corpus: the embedding cache and the queries -> top-k functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualforge.eval.retrieval import Funnel, corpus_embeddings, make_search
from tests.eval.retrieval.helpers import brute_force, each_metric


def test_cache_is_written_once_then_read_and_checked(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return emb

    cache = tmp_path / "sub" / "corpus.npy"
    ids, texts = ["a", "b", "c"], ["ta", "tb", "tc"]
    first = corpus_embeddings(encode, ids, texts, 4, cache)
    again = corpus_embeddings(encode, ids, texts, 4, cache)
    assert calls == [texts]  # encoded once, then read back
    np.testing.assert_array_equal(first, emb)
    np.testing.assert_array_equal(again, emb)
    assert cache.with_suffix(".ids.txt").read_text() == "a\nb\nc\n"
    assert not list(cache.parent.glob("*.tmp"))
    with pytest.raises(
        ValueError, match=r"--cache .* does not match this corpus and model \(2 x 4\)"
    ):
        corpus_embeddings(encode, ["a", "b"], texts[:2], 4, cache)
    with pytest.raises(ValueError, match=r"\(3 x 8\)"):
        corpus_embeddings(encode, ids, texts, 8, cache)
    np.testing.assert_array_equal(corpus_embeddings(encode, ids, texts, 4, None), emb)
    assert len(calls) == 2


@each_metric
def test_search_by_all_dims_a_prefix_or_a_funnel(
    clustered: tuple[np.ndarray, np.ndarray], metric: str
) -> None:
    q, d = clustered
    for dims in (None, 8):
        scores, ids = make_search(d, 5, metric, dims=dims)(q)  # (Q, 5)
        want_scores, want_ids = brute_force(q, d, 5, metric, dims)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    scores, ids = make_search(d, 3, metric, funnel="8:60,32:10", dims=8)(q)  # dims ignored
    result = Funnel(d, "8:60,32:10", metric=metric).search(q)
    np.testing.assert_array_equal(ids, result.ids[:, :3])
    np.testing.assert_array_equal(scores, result.scores[:, :3])
    with pytest.raises(ValueError, match=r"dims=64 is outside 1\.\.32"):
        make_search(d, 3, metric, dims=64)
    with pytest.raises(ValueError, match="dims:keep"):
        make_search(d, 3, metric, funnel="8-60")
