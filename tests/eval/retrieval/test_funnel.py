"""Matryoshka funnels: exact special cases, a numpy reference cascade, FLOPs, spec parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge.eval.retrieval import (
    AdaptiveSearcher,
    Funnel,
    Stage,
    cascade_flops,
    check_stages,
    exact_flops,
    exact_search,
    format_funnel_spec,
    parse_funnel_spec,
)
from dualforge.eval.retrieval.funnel import top_rows
from tests.eval.retrieval.helpers import PAPER, each_backend, each_metric


def numpy_funnel(q: np.ndarray, d: np.ndarray, stages: list[Stage], metric: str) -> np.ndarray:
    """Reference: each stage rescores the survivors at its prefix, sorted (score desc, id asc)."""

    def prefix(x: np.ndarray, m: int) -> np.ndarray:
        x = x[:, :m].astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cos" else x

    out = []
    for i in range(q.shape[0]):
        survivors = np.arange(d.shape[0])
        for stage in stages:
            scores = prefix(d, stage.dims)[survivors] @ prefix(q[i : i + 1], stage.dims)[0]
            order = np.lexsort((survivors, -scores))[: stage.keep]
            survivors = survivors[order]
        out.append(survivors)
    return np.stack(out)


@each_metric
def test_adaptive_full_dims_equals_exact(
    clustered: tuple[np.ndarray, np.ndarray], metric: str
) -> None:
    q, d = clustered
    searcher = AdaptiveSearcher(d, 32, 32, metric=metric)
    scores, ids = searcher.search(q, k=10, shortlist=10)
    ref_scores, ref_ids = exact_search(q, d, 10, metric=metric)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


@each_metric
def test_adaptive_shortlist_of_whole_corpus_is_exact_at_rerank_dims(
    clustered: tuple[np.ndarray, np.ndarray], metric: str
) -> None:
    q, d = clustered
    searcher = AdaptiveSearcher(torch.from_numpy(d), 4, 16, metric=metric, batch_size=7)
    scores, ids = searcher.search(q, k=15, shortlist=300)
    ref_scores, ref_ids = exact_search(q, d, 15, metric=metric, dims=16)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    assert searcher.flops_per_query(k=15, shortlist=300) == 300 * 4 + 300 * 16


def test_adaptive_matches_numpy_reference(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = clustered
    _, ids = AdaptiveSearcher(d, 8, metric="cos").search(q, k=5, shortlist=30)
    np.testing.assert_array_equal(ids, numpy_funnel(q, d, [Stage(8, 30), Stage(32, 5)], "cos"))


def test_adaptive_errors(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = clustered
    with pytest.raises(ValueError, match="shortlist_dims"):
        AdaptiveSearcher(d, 16, 8)
    with pytest.raises(ValueError, match="shortlist_dims"):
        AdaptiveSearcher(d, 8, 64)
    with pytest.raises(ValueError, match=r"k \(10\) <= shortlist \(5\)"):
        AdaptiveSearcher(d, 8).search(q, k=10, shortlist=5)
    with pytest.raises(ValueError, match="query dim"):
        AdaptiveSearcher(d, 8).search(q[:, :16], k=1)


@each_metric
def test_funnel_keeping_whole_corpus_first_equals_exact_full_dim(
    clustered: tuple[np.ndarray, np.ndarray], metric: str
) -> None:
    q, d = clustered
    result = Funnel(d, "4:300,16:300,32:10", metric=metric).search(q)
    ref_scores, ref_ids = exact_search(q, d, 10, metric=metric)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_allclose(result.scores, ref_scores, atol=1e-4)
    assert result.flops_per_query == 300 * 4 + 300 * 16 + 300 * 32
    assert result.seconds > 0


@each_metric
@each_backend
def test_funnel_matches_numpy_reference(
    clustered: tuple[np.ndarray, np.ndarray], metric: str, backend: str
) -> None:
    q, d = clustered
    stages = parse_funnel_spec("4:80,8:40,16:20,32:5")
    result = Funnel(d, stages, metric=metric, backend=backend, batch_size=6).search(q)
    want = numpy_funnel(q, d, list(stages), metric)
    assert result.ids.shape == (20, 5)
    np.testing.assert_array_equal(result.ids, want)
    exact = exact_search(q, d, 5, metric=metric)[1]
    assert not np.array_equal(result.ids, exact)  # 4 dims first: the funnel is approximate


def test_funnel_with_hnsw_first_stage(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = clustered
    funnel = Funnel(d, "8:100,32:10", factory="HNSW16", metric="cos", params="efSearch=300")
    result = funnel.search(q)
    want = numpy_funnel(q, d, [Stage(8, 100), Stage(32, 10)], "cos")
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(result.ids.tolist(), want.tolist())]
    assert np.mean(overlap) >= 0.95
    assert np.all(np.diff(result.scores, axis=1) <= 0)
    measured = funnel.index.last_scored / len(q) * 8 + 100 * 32  # the only batch's search
    assert result.flops_per_query == pytest.approx(measured)


def test_funnel_reports_the_work_of_an_approximate_first_stage() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(size=(3000, 32)).astype(np.float32)
    q = d[:25] + 0.1 * rng.normal(size=(25, 32)).astype(np.float32)
    every = Funnel(d, "8:50,32:10", factory="IVF16,Flat", params="nprobe=16").search(q)
    assert every.flops_per_query == (3000 + 16) * 8 + 50 * 32  # every list scanned
    few = Funnel(d, "8:50,32:10", factory="IVF16,Flat", params="nprobe=2")
    result = few.search(q)
    assert result.flops_per_query < few.flops_per_query  # below the exact-scan bound
    assert result.flops_per_query > 16 * 8 + 50 * 32


def test_flops_by_hand() -> None:
    stages = parse_funnel_spec(PAPER)
    # 1000*32 + 200*64 + 100*128 + 50*256 + 25*384
    assert cascade_flops(stages, 1000) == 32000 + 12800 + 12800 + 12800 + 9600 == 80000
    # a corpus smaller than the first keep: every stage rescores all 150
    assert cascade_flops(stages, 150) == 150 * 32 + 150 * 64 + 100 * 128 + 50 * 256 + 25 * 384
    assert exact_flops(1000, 384) == 384000
    assert cascade_flops([Stage(384, 10)], 1000) == exact_flops(1000, 384)


def test_spec_round_trip_and_errors() -> None:
    stages = parse_funnel_spec(" 32:200, 64:100 ,384:10")
    assert stages == (Stage(32, 200), Stage(64, 100), Stage(384, 10))
    assert format_funnel_spec(stages) == "32:200,64:100,384:10"
    assert check_stages(PAPER, 384) == parse_funnel_spec(PAPER)
    bad_syntax = ["", " , ", "32-200", "32:200:5", "a:b", "32:1.5"]
    for spec in bad_syntax:
        with pytest.raises(ValueError, match=r"dims:keep|no stage"):
            parse_funnel_spec(spec)
    bad = {
        "64:200,32:100": "dims must increase",
        "32:200,32:100": "dims must increase",
        "32:100,64:200": "keep must not increase",
        "32:0": "keep must be >= 1",
        "32:200,512:10": r"outside 1\.\.384",
        "0:10": r"outside 1\.\.384",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError, match=message):
            check_stages(spec, 384)
    with pytest.raises(ValueError, match="at least one stage"):
        check_stages([], 384)


def test_top_rows_breaks_ties_by_index_and_puts_padding_last() -> None:
    scores = torch.tensor([[0.5, 0.75, 0.5, float("-inf"), 0.5]])
    ids = torch.tensor([[7, 3, 2, -1, 5]])
    s, i = top_rows(scores, ids, 5)
    assert i.tolist() == [[3, 2, 5, 7, -1]]
    assert s[0, :4].tolist() == [0.75, 0.5, 0.5, 0.5]
    assert top_rows(scores, ids, 2)[1].tolist() == [[3, 2]]


def test_funnel_rejects_mismatched_first_index(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    _, d = clustered
    other = Funnel(d, "8:10").index
    with pytest.raises(ValueError, match="first_index holds 300 x 8"):
        Funnel(d, "16:10,32:5", first_index=other)
