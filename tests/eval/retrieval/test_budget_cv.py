"""Cross-validated budget mode: folds partition the queries, each pick matches choose_cascade."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge.eval.retrieval import (
    Funnel,
    choose_cascade,
    cross_validate_cascade,
    exact_search,
    qrels_quality,
)


def data() -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, int]], list[str], list[str]]:
    """Dims 0-7 weak, 8-15 carry the ranking; qrels: each query's exact top 3."""
    rng = np.random.default_rng(5)
    d = rng.normal(size=(400, 32)).astype(np.float32)
    d[:, :8] *= 0.05
    q = rng.normal(size=(30, 32)).astype(np.float32)
    _, top = exact_search(q, d, 3)
    qids, doc_ids = [f"q{i}" for i in range(30)], [f"d{j}" for j in range(400)]
    qrels = {qid: {doc_ids[j]: 1 for j in row} for qid, row in zip(qids, top.tolist())}
    return q, d, qrels, qids, doc_ids


def test_folds_partition_the_queries_and_repeat_choose_cascade() -> None:
    q, d, qrels, qids, doc_ids = data()
    cv = cross_validate_cascade(d, q, qrels, qids, doc_ids, folds=3, tolerance=0.05, seed=1)
    assert [f.queries for f in cv.folds] == [10, 10, 10]
    assert cv.exact_quality == pytest.approx(
        qrels_quality(qrels, qids, doc_ids)(*exact_search(q, d, 10))
    )
    assert cv.quality == pytest.approx(np.mean([f.quality for f in cv.folds]))
    assert 0 < cv.flops_ratio <= 1
    # oracle for fold 0: rebuild its split and choose by hand
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1)).tolist()
    test, pick = sorted(order[:10]), sorted(order[10:])
    ids = [qids[i] for i in pick]
    quality = qrels_quality({i: qrels[i] for i in ids}, ids, doc_ids)
    choice = choose_cascade(d, q[pick], quality, tolerance=0.05)
    assert cv.folds[0].spec == choice.chosen.spec
    held = [qids[i] for i in test]
    result = Funnel(d, choice.chosen.spec).search(q[test])
    score = qrels_quality({i: qrels[i] for i in held}, held, doc_ids)(result.scores, result.ids)
    assert cv.folds[0].quality == pytest.approx(score)


def test_tolerance_and_confidence_move_the_choice() -> None:
    q, d, qrels, qids, doc_ids = data()
    strict = cross_validate_cascade(d, q, qrels, qids, doc_ids, folds=2, tolerance=0.0)
    loose = cross_validate_cascade(d, q, qrels, qids, doc_ids, folds=2, tolerance=0.9)
    assert loose.flops_ratio <= strict.flops_ratio
    assert loose.quality <= strict.quality + 1e-12
    sure = cross_validate_cascade(
        d, q, qrels, qids, doc_ids, folds=2, tolerance=0.2, confidence=0.95
    )
    plain = cross_validate_cascade(d, q, qrels, qids, doc_ids, folds=2, tolerance=0.2)
    for a, b in zip(sure.folds, plain.folds):
        assert a.flops_ratio >= b.flops_ratio


def test_errors() -> None:
    q, d, qrels, qids, doc_ids = data()
    with pytest.raises(ValueError, match="folds must be in"):
        cross_validate_cascade(d, q, qrels, qids, doc_ids, folds=1)
    with pytest.raises(ValueError, match="query ids"):
        cross_validate_cascade(d, q, qrels, qids[:-1], doc_ids)
    with pytest.raises(ValueError, match="no judgments"):
        cross_validate_cascade(d, q, {k: v for k, v in qrels.items() if k != "q4"}, qids, doc_ids)
