"""Factory indexes: Flat and the torch fallback match brute force; IVF/HNSW; prefix rescoring."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dualforge.eval.retrieval import (
    FaissIndex,
    PrefixRescorer,
    TorchFlatIndex,
    build_index,
    exact_search,
)
from tests.eval.retrieval.helpers import brute_force, each_backend, each_metric


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(23, 16)).astype(np.float32)  # (Q, D)
    d = rng.normal(size=(400, 16)) * rng.uniform(0.5, 2.0, (400, 1))  # (N, D)
    return q, d.astype(np.float32)


@each_metric
@each_backend
def test_flat_matches_brute_force_and_exact_search(
    data: tuple[np.ndarray, np.ndarray], metric: str, backend: str
) -> None:
    q, d = data
    index = build_index(d, "Flat", metric, backend=backend)
    assert isinstance(index, FaissIndex if backend == "faiss" else TorchFlatIndex)
    assert (index.dim, index.ntotal) == (16, 400)
    scores, ids = index.search(q, 12)
    ref_scores, ref_ids = brute_force(q, d, 12, metric)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    ex_scores, ex_ids = exact_search(q, d, 12, metric=metric)
    np.testing.assert_array_equal(ids, ex_ids)
    np.testing.assert_allclose(scores, ex_scores, atol=1e-5)


def test_torch_fallback_equals_faiss(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    a = build_index(d, "Flat", "cos", backend="faiss").search(torch.from_numpy(q), 30)
    b = build_index(torch.from_numpy(d), "Flat", "cos", backend="torch").search(q, 30)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)


def test_ivf_probing_every_list_is_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    index = build_index(d, "IVF8,Flat", "cos", params="nprobe=8")
    _, ids = index.search(q, 10)
    np.testing.assert_array_equal(ids, brute_force(q, d, 10, "cos")[1])


def test_ivf_pads_missing_results_last(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    scores, ids = build_index(d, "IVF8,Flat", "ip", params="nprobe=1").search(q, 400)
    assert (ids == -1).any()  # one list holds fewer than 400 documents
    assert np.all(np.isneginf(scores[ids == -1]))
    for row_s, row_i in zip(scores, ids):
        found = row_i >= 0
        assert found[: found.sum()].all()  # padding only at the end
        assert np.all(np.diff(row_s[found]) <= 0)


def test_hnsw_recall(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    _, ids = build_index(d, "HNSW16", "cos", params="efSearch=200").search(q, 10)
    ref = brute_force(q, d, 10, "cos")[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), ref.tolist())])
    assert recall >= 0.95


@each_backend
def test_exact_index_counts_every_vector(data: tuple[np.ndarray, np.ndarray], backend: str) -> None:
    q, d = data
    index = build_index(d, "Flat", "ip", backend=backend)
    assert index.last_scored == 0
    index.search(q, 5)
    assert index.last_scored == len(q) * len(d)
    index.search(q[:3], 5)
    assert index.last_scored == 3 * len(d)  # the last search only


def test_ivf_counts_coarse_and_scanned_vectors(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    every = build_index(d, "IVF8,Flat", "ip", params="nprobe=8")
    every.search(q, 5)
    assert every.last_scored == len(q) * (len(d) + 8)  # 8 centroids + every list
    one = build_index(d, "IVF8,Flat", "ip", params="nprobe=1")
    one.search(q, 5)
    assert len(q) * 8 < one.last_scored < len(q) * (len(d) + 8)


def test_hnsw_counts_distance_computations() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(size=(4000, 16)).astype(np.float32)
    index = build_index(d, "HNSW16", "ip", params="efSearch=32")
    index.search(d[:20], 10)
    assert 20 * 10 < index.last_scored < 20 * len(d)


def test_bad_factories(data: tuple[np.ndarray, np.ndarray]) -> None:
    _, d = data
    with pytest.raises(ValueError, match="factory='NotAnIndex'"):
        build_index(d, "NotAnIndex")
    with pytest.raises(ValueError, match="at least as many vectors as lists"):
        build_index(d, "IVF1024,Flat")
    with pytest.raises(ValueError, match="only does exact search"):
        build_index(d, "HNSW32", backend="torch")
    with pytest.raises(ValueError, match="search params"):
        build_index(d, "IVF4,Flat", params="nosuchparam=3")
    with pytest.raises(ValueError, match="0 vectors"):
        build_index(d[:0], "Flat")
    with pytest.raises(ValueError, match="backend="):
        build_index(d, backend="annoy")


@each_backend
def test_search_argument_errors(data: tuple[np.ndarray, np.ndarray], backend: str) -> None:
    q, d = data
    index = build_index(d, backend=backend)
    with pytest.raises(ValueError, match="k must be"):
        index.search(q, 0)
    with pytest.raises(ValueError, match="query dim 8 != index dim 16"):
        index.search(q[:, :8], 3)
    scores, ids = index.search(q, 1000)  # clipped to N
    assert scores.shape == ids.shape == (23, 400)


def test_faiss_missing(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]
) -> None:
    q, d = data
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes ``import faiss`` fail
    index = build_index(d, "Flat", "cos")
    assert isinstance(index, TorchFlatIndex)
    np.testing.assert_array_equal(index.search(q, 5)[1], brute_force(q, d, 5, "cos")[1])
    with pytest.raises(ImportError, match=r"pip install 'dualforge\[faiss\]'"):
        build_index(d, "HNSW32")
    with pytest.raises(ImportError, match=r"pip install 'dualforge\[faiss\]'"):
        build_index(d, backend="faiss")


@each_metric
def test_prefix_rescorer_matches_numpy(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    q, d = data
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 400, size=(23, 7))  # (Q, S)
    ids[0, 3] = -1
    got = PrefixRescorer(d, metric).rescore(q, ids, 6).numpy()  # (Q, S)
    qp, dp = q[:, :6].astype(np.float64), d[:, :6].astype(np.float64)
    if metric == "cos":
        qp = qp / np.linalg.norm(qp, axis=1, keepdims=True)
        dp = dp / np.linalg.norm(dp, axis=1, keepdims=True)
    want = np.einsum("qd,qsd->qs", qp, dp[ids])  # (Q, S)
    assert np.isneginf(got[0, 3])
    mask = ids >= 0
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)


def test_prefix_rescorer_errors(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    rescorer = PrefixRescorer(d, "cos")
    with pytest.raises(ValueError, match="document index 400"):
        rescorer.rescore(q, np.full((23, 2), 400), 4)
    with pytest.raises(ValueError, match=r"ids \(3, 2\) must be"):
        rescorer.rescore(q, np.zeros((3, 2), np.int64), 4)
    with pytest.raises(ValueError, match="metric="):
        PrefixRescorer(d, "l2")
