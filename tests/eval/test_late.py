"""Exhaustive MaxSim search equals the training-side MaxSim (itself checked against a loop)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualforge.eval.late import TokenIndex, evaluate_tokens, maxsim_search
from dualforge.losses import maxsim, token_prefix
from dualforge.tokens import join_tokens


def unit_tokens(n: int, dim: int, seed: int, most: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = rng.standard_normal((int(rng.integers(1, most)), dim)).astype(np.float32)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


def padded(arrays: list[np.ndarray]) -> torch.Tensor:
    """The (B, T, D + 1) training layout of variable-length token arrays."""
    longest = max(len(a) for a in arrays)
    vectors = torch.zeros(len(arrays), longest, arrays[0].shape[1])
    mask = torch.zeros(len(arrays), longest, dtype=torch.bool)
    for i, a in enumerate(arrays):
        vectors[i, : len(a)], mask[i, : len(a)] = torch.from_numpy(a), True
    return join_tokens(vectors, mask)


def test_search_scores_are_the_training_maxsim_at_every_token_dim() -> None:
    queries, docs = unit_tokens(4, 16, seed=0), unit_tokens(30, 16, seed=1)
    index = TokenIndex.build(docs)
    for dim in (16, 8):
        at = index if dim == 16 else index.prefix(dim)
        scores, ids = maxsim_search(queries, at, k=30)
        q, d = padded(queries), padded(docs)
        if dim < 16:
            q, d = token_prefix(q, dim, True), token_prefix(d, dim, True)
        expected = maxsim(q, d)  # (4, 30)
        got = torch.full_like(expected, float("nan"))
        got.scatter_(1, torch.from_numpy(ids), torch.from_numpy(scores))
        assert torch.allclose(got, expected, atol=1e-5)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_evaluation_finds_the_documents_that_contain_the_query_tokens() -> None:
    docs = unit_tokens(20, 8, seed=2)
    queries = [docs[3][:1], docs[11]]  # each query is a subset of one document's tokens
    report = evaluate_tokens(queries, docs, ["a", "b"], [f"d{i}" for i in range(20)],
                             {"a": {"d3": 1}, "b": {"d11": 1}}, metrics=["mrr@10"], dims=[4, 8])  # fmt: skip
    assert report.metrics["mrr@10"] == 1.0
    assert set(report.metrics_by_dim) == {"4", "8"} and report.embedding_dim == 8
    assert TokenIndex.build(docs).bytes_per_doc() == sum(len(d) for d in docs) * 8 * 4 / 20


def test_prefix_renormalises_each_token() -> None:
    index = TokenIndex.build(unit_tokens(5, 12, seed=3))
    short = index.prefix(4)
    assert short.vectors.shape[1] == 4
    assert torch.allclose(short.vectors.norm(dim=-1), torch.ones(len(short.vectors)), atol=1e-6)
    assert torch.allclose(short.vectors, F.normalize(index.vectors[:, :4], dim=-1))


def test_candidates_then_rerank_equal_exhaustive_when_the_candidate_stage_is_exhaustive() -> None:
    from dualforge.eval.late_search import CandidateIndex, candidate_recall, candidate_search

    queries, docs = unit_tokens(6, 16, seed=4), unit_tokens(40, 16, seed=5)
    tokens = TokenIndex.build(docs)
    exact_scores, exact_ids = maxsim_search(queries, tokens, k=10)
    every = int(tokens.vectors.shape[0])
    scores, ids, found = candidate_search(queries, CandidateIndex.build(tokens, "Flat"), 10, every)
    assert np.array_equal(ids, exact_ids) and np.allclose(scores, exact_scores, atol=1e-5)
    assert candidate_recall(found, exact_ids, 10) == 1.0
    # a real shortlist: 8-dim token prefixes, 2 nearest tokens per query token
    short = CandidateIndex.build(tokens, "Flat", dim=8)
    _, ids8, found8 = candidate_search(queries, short, 10, k_token=2)
    recall = candidate_recall(found8, exact_ids, 10)
    assert 0.0 < recall < 1.0 and all(len(f) < 40 for f in found8)
    kept = [set(f) for f in found8]
    assert all(set(row[row >= 0]) <= kept[i] for i, row in enumerate(ids8))  # reranked within


def test_an_ivf_pq_candidate_stage_is_built_from_a_factory_string() -> None:
    from dualforge.eval.late_search import CandidateIndex, candidate_recall, candidate_search

    queries, docs = unit_tokens(8, 16, seed=6), unit_tokens(120, 16, seed=7, most=12)
    tokens = TokenIndex.build(docs)
    _, exact_ids = maxsim_search(queries, tokens, k=10)
    index = CandidateIndex.build(tokens, "IVF8,PQ4x4", params="nprobe=8")
    _, _, found = candidate_search(queries, index, 10, k_token=32)
    assert index.factory == "IVF8,PQ4x4" and candidate_recall(found, exact_ids, 10) > 0.5
