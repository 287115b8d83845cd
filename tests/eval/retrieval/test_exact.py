"""Exact search: faiss and torch backends agree with a numpy brute force; run conversion."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dualforge.eval.retrieval.exact import exact_search, faiss_available, run_from_search
from tests.eval.retrieval.helpers import brute_force, each_backend, each_metric


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 32)).astype(np.float32)  # (Q, D)
    d = rng.normal(size=(500, 32)).astype(np.float32) * rng.uniform(0.5, 2.0, (500, 1))  # (N, D)
    return q, d.astype(np.float32)


@each_backend
@each_metric
@pytest.mark.parametrize("dims", [None, 8])
def test_backends_match_brute_force(
    data: tuple[np.ndarray, np.ndarray], backend: str, metric: str, dims: int | None
) -> None:
    q, d = data
    scores, ids = exact_search(q, d, 20, metric=metric, backend=backend, dims=dims, batch_size=7)
    ref_scores, ref_ids = brute_force(q, d, 20, metric, dims)
    assert scores.shape == ids.shape == (37, 20)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4, rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_cos_differs_from_ip_on_unnormalised_docs(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    _, ip_ids = exact_search(q, d, 10, metric="ip", backend="torch")
    cos_scores, cos_ids = exact_search(q, d, 10, metric="cos", backend="torch")
    assert not np.array_equal(ip_ids, cos_ids)
    assert np.all(np.abs(cos_scores) <= 1.0 + 1e-5)


def test_torch_tensors_and_auto_backend(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    ref = exact_search(q, d, 5, metric="cos", backend="torch")
    auto = exact_search(torch.from_numpy(q), torch.from_numpy(d), 5, metric="cos")
    np.testing.assert_array_equal(auto[1], ref[1])
    np.testing.assert_allclose(auto[0], ref[0], atol=1e-5)


@each_backend
def test_k_larger_than_corpus_is_clipped(backend: str) -> None:
    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))
    scores, ids = exact_search(q, d, 10, backend=backend)
    assert scores.shape == ids.shape == (4, 3)
    assert all(sorted(row) == [0, 1, 2] for row in ids.tolist())


@each_backend
def test_ties_sorted_by_index(backend: str) -> None:
    d = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
    scores, ids = exact_search(np.array([[1.0, 0.0]]), d, 4, backend=backend)
    assert ids.tolist() == [[0, 2, 3, 1]]
    assert scores.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_dims_renormalise_prefix_for_cosine() -> None:
    d = np.array([[1.0, 0.0, 100.0], [0.6, 0.8, 0.0]], np.float32)
    q = np.array([[0.0, 1.0, 0.0]], np.float32)
    scores, ids = exact_search(q, d, 2, metric="cos", dims=2, backend="torch")
    assert ids.tolist() == [[1, 0]]
    np.testing.assert_allclose(scores, [[0.8, 0.0]], atol=1e-6)


def test_faiss_missing(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]
) -> None:
    q, d = data
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes ``import faiss`` fail
    assert not faiss_available()
    with pytest.raises(ImportError, match=r"pip install 'dualforge\[faiss\]'"):
        exact_search(q, d, 3, backend="faiss")
    _, ids = exact_search(q, d, 3, backend="auto")
    np.testing.assert_array_equal(ids, brute_force(q, d, 3, "ip")[1])


def test_invalid_arguments(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = data
    cases: list[tuple[dict[str, object], str]] = [
        ({"k": 0}, "k must be"),
        ({"metric": "l2"}, "metric="),
        ({"backend": "annoy"}, "backend="),
        ({"dims": 0}, "dims=0"),
        ({"dims": 33}, "dims=33"),
        ({"batch_size": 0}, "batch_size"),
    ]
    for kwargs, message in cases:
        args: dict[str, object] = {"k": 3, **kwargs}
        with pytest.raises(ValueError, match=message):
            exact_search(q, d, **args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query dim"):
        exact_search(q[:, :5], d, 3)
    with pytest.raises(ValueError, match="queries must be a 2-d"):
        exact_search(q[0], d, 3)


def test_empty_inputs() -> None:
    scores, ids = exact_search(np.zeros((0, 4)), np.ones((5, 4)), 3)
    assert scores.shape == ids.shape == (0, 3)
    scores, ids = exact_search(np.ones((2, 4)), np.zeros((0, 4)), 3)
    assert scores.shape == ids.shape == (2, 0)


def test_run_from_search() -> None:
    scores = np.array([[0.9, 0.5], [0.7, -1.0]], np.float32)
    ids = np.array([[1, 0], [2, -1]], np.int64)
    run = run_from_search(["q1", "q2"], ["a", "b", "c"], scores, ids)
    assert run == {"q1": {"b": pytest.approx(0.9), "a": 0.5}, "q2": {"c": pytest.approx(0.7)}}
    with pytest.raises(ValueError, match="must both be"):
        run_from_search(["q1"], ["a", "b", "c"], scores, ids)
    with pytest.raises(ValueError, match="document index 2"):
        run_from_search(["q1", "q2"], ["a", "b"], scores, ids)
