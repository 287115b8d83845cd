"""``dualforge eval``'s reports from plain values: option checks, funnel and budget-CV reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualforge.eval import evaluate
from dualforge.eval.reports import (
    EncodedSplit,
    budget_cv_report,
    check_budget,
    evaluate_encoded,
    funnel_report,
)
from dualforge.eval.retrieval import exact_search, parse_funnel_spec, run_from_search


def encoded(metric: str = "cos") -> tuple[EncodedSplit, dict[str, dict[str, int]]]:
    """120 documents, 12 queries; each query's judged documents are its exact top 3."""
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(120, 16)).astype(np.float32)
    queries = rng.normal(size=(12, 16)).astype(np.float32)
    qids, doc_ids = [f"q{i}" for i in range(12)], [f"d{j}" for j in range(120)]
    _, top = exact_search(queries, docs, 3, metric=metric)
    qrels = {q: {doc_ids[j]: 1 for j in row} for q, row in zip(qids, top.tolist())}
    return EncodedSplit(qids, doc_ids, queries, docs, metric), qrels


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tolerance": 0.1, "confidence": None, "folds": 1}, "--budget-cv needs at least 2 folds"),
        ({"tolerance": 0.1, "confidence": None, "folds": None}, "--budget needs a dev split"),
        ({"tolerance": 1.0, "confidence": None, "folds": 2}, r"--budget must be in \[0, 1\)"),
        ({"tolerance": 0.1, "confidence": 1.5, "folds": 2}, "--budget-confidence must be in"),
    ],
)
def test_check_budget_names_the_option(
    tiny_beir: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_budget(**kwargs, folder=tiny_beir, split="test", dev_split="dev")  # type: ignore[arg-type]


def test_check_budget_accepts_and_rejects_the_evaluated_split(tiny_beir: Path) -> None:
    check_budget(0.0, 0.9, None, folder=tiny_beir, split="test", dev_split="train")
    check_budget(0.5, None, 2, folder=tiny_beir, split="test", dev_split="dev")
    with pytest.raises(ValueError, match="other than --split 'test'"):
        check_budget(0.1, None, None, folder=tiny_beir, split="test", dev_split="test")


def test_funnel_report_against_exact_search() -> None:
    enc, qrels = encoded()
    metrics = ["ndcg@10", "recall@5"]
    report = funnel_report(enc, qrels, parse_funnel_spec("4:120,16:5"), metrics)
    exact = exact_search(enc.queries, enc.docs, 5, metric="cos")  # (12, 5) each
    oracle = evaluate(qrels, run_from_search(enc.query_ids, enc.doc_ids, *exact), metrics)
    assert report["metrics"] == report["exact_metrics"] == oracle  # first stage keeps all
    assert oracle["recall@5"] == 1.0
    assert report["spec"] == "4:120,16:5" and report["depth"] == 5
    assert report["flops_per_query"] == 120 * 4 + 120 * 16
    assert report["exact_flops_per_query"] == 120 * 16
    assert report["flops_ratio"] == pytest.approx((120 * 20) / (120 * 16))
    with pytest.raises(ValueError, match=r"outside 1\.\.16"):
        funnel_report(enc, qrels, parse_funnel_spec("8:20,32:5"))


def test_evaluate_encoded_and_budget_cv_report() -> None:
    enc, qrels = encoded("ip")
    full = evaluate_encoded(enc, qrels, metrics=["recall@3"], dims=(8, 16, 8))
    assert full.metrics == {"recall@3": 1.0} and full.dims == [8, 16]
    assert full.metrics_by_dim["16"] == full.metrics
    cv = budget_cv_report(enc, qrels, folds=3, tolerance=0.2)
    assert [f["queries"] for f in cv["folds"]] == [4, 4, 4]
    assert cv["exact_quality"] == pytest.approx(1.0) and cv["select_metric"] == "ndcg@10"
    assert 0 < cv["flops_ratio"] <= 1 and cv["tolerance"] == 0.2 and cv["confidence"] is None
    with pytest.raises(ValueError, match="--budget-cv 13 exceeds the 12 judged queries"):
        budget_cv_report(enc, qrels, folds=13, tolerance=0.2)
