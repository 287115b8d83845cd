"""Metrics match pytrec_eval (trec_eval) on real qrels and synthetic runs, edge cases included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytrec_eval

from dualforge.eval.metrics import (
    MetricName,
    evaluate,
    evaluate_per_query,
    map_at_k,
    ndcg_at_k,
    parse_metrics,
    rank,
)
from tests.eval.helpers import Qrels, Run, read_qrels, regrade, synthetic_run, top_k

CUT_METRICS = [
    "ndcg@1", "ndcg@3", "ndcg@10", "ndcg@100",
    "recall@1", "recall@10", "recall@100",
    "precision@1", "precision@10",
    "map@1", "map@10", "map@100",
]  # fmt: skip
MRR_CUTOFFS = [1, 3, 10, 100]
DATASETS = ["scifact", "dbpedia-entity-subset"]


def trec(qrels: Qrels, run: Run, measures: set[str]) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(
        run
    )
    return result


def assert_matches_pytrec(qrels: Qrels, run: Run) -> None:
    names = parse_metrics(CUT_METRICS)
    ours = evaluate_per_query(qrels, run, CUT_METRICS)
    ref = trec(qrels, run, {m.trec_eval_measure for m in names.values()})
    assert set(ours) == set(ref)
    for qid, row in ref.items():
        for name, m in names.items():
            assert ours[qid][name] == pytest.approx(row[m.trec_eval_key], abs=1e-6), (qid, name)
    means = evaluate(qrels, run, CUT_METRICS)
    for name, m in names.items():
        expected = math.fsum(row[m.trec_eval_key] for row in ref.values()) / len(ref)
        assert means[name] == pytest.approx(expected, abs=1e-6), name


def assert_mrr_matches_pytrec(qrels: Qrels, run: Run) -> None:
    names = [f"mrr@{k}" for k in MRR_CUTOFFS]
    ours = evaluate_per_query(qrels, run, names)
    for k, name in zip(MRR_CUTOFFS, names):
        ref = trec(qrels, top_k(run, k), {"recip_rank"})
        assert set(ours) == set(ref)
        for qid, row in ref.items():
            assert ours[qid][name] == pytest.approx(row["recip_rank"], abs=1e-6), (qid, k)


@pytest.fixture(scope="module", params=DATASETS)
def real_qrels(request: pytest.FixtureRequest, shared_data: Path) -> Qrels:
    return read_qrels(shared_data / request.param / "qrels" / "test.tsv")


@pytest.mark.parametrize("seed", [0, 1])
def test_real_qrels_match_pytrec_eval(real_qrels: Qrels, seed: int) -> None:
    run = synthetic_run(real_qrels, seed)
    assert_matches_pytrec(real_qrels, run)
    assert_mrr_matches_pytrec(real_qrels, run)


def test_regraded_real_qrels_match_pytrec_eval(real_qrels: Qrels) -> None:
    qrels = regrade(real_qrels, seed=7)  # graded 0/1/2, some queries without relevant docs
    run = synthetic_run(qrels, seed=3)
    assert_matches_pytrec(qrels, run)
    assert_mrr_matches_pytrec(qrels, run)


def test_run_with_all_relevant_docs_matches(real_qrels: Qrels) -> None:
    run = {q: {d: float(rel) + 0.5 for d, rel in docs.items()} for q, docs in real_qrels.items()}
    assert_matches_pytrec(real_qrels, run)


def test_ties_broken_by_doc_id_descending() -> None:
    qrels = {"q": {"10": 1}}
    assert rank({"9": 0.5, "10": 0.5}) == ["9", "10"]  # "9" > "10" as strings
    assert evaluate(qrels, {"q": {"9": 0.5, "10": 0.5}}, ["mrr@10"])["mrr@10"] == 0.5
    assert trec(qrels, {"q": {"9": 0.5, "10": 0.5}}, {"recip_rank"})["q"]["recip_rank"] == 0.5


@pytest.mark.parametrize("eps", [1e-15, 1e-9, 1e-8, 1e-7, 1e-6])
def test_scores_compared_as_float32(eps: float) -> None:
    qrels, run = {"q": {"b": 1}}, {"q": {"a": 1.0 + eps, "b": 1.0}}
    expected = trec(qrels, run, {"recip_rank"})["q"]["recip_rank"]
    assert expected == (1.0 if eps < 6e-8 else 0.5)  # below float32 precision: a tie, "b" > "a"
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == expected


def test_signed_zero_and_infinite_scores_match() -> None:
    qrels = {"q": {"a": 1, "c": 2}}
    run = {"q": {"a": -0.0, "b": 0.0, "c": -math.inf, "d": math.inf}}
    assert rank(run["q"]) == ["d", "b", "a", "c"]
    assert_matches_pytrec(qrels, run)


def test_query_selection_like_pytrec_eval() -> None:
    qrels = {"all-zero": {"a": 0}, "empty": {}, "ok": {"a": 1}, "not-run": {"a": 1}}
    run = {"all-zero": {"a": 1.0}, "empty": {"a": 1.0}, "ok": {}, "unjudged": {"a": 1.0}}
    table = evaluate_per_query(qrels, run, ["ndcg@10", "recall@10", "map@10", "mrr@10"])
    assert set(table) == set(trec(qrels, run, {"recip_rank"})) == {"all-zero", "ok"}
    assert all(v == 0.0 for row in table.values() for v in row.values())
    run["ok"] = {"a": 1.0}
    assert evaluate(qrels, run, ["ndcg@10"]) == {"ndcg@10": 0.5}  # all-zero query counts as 0


def test_graded_and_negative_judgments() -> None:
    qrels = {"q": {"a": -1, "b": 2, "c": 1, "missing": 2}}
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "x": 0.5}}
    ranking = rank(run["q"])
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, qrels["q"], 10) == pytest.approx(dcg / (2 + 2 / math.log2(3) + 0.5))
    assert map_at_k(ranking, qrels["q"], 10) == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert_matches_pytrec(qrels, run)


def test_precision_divides_by_k_and_per_query_flag() -> None:
    qrels, run = {"q": {"a": 1}}, {"q": {"a": 1.0}}
    assert evaluate(qrels, run, ["p@10", "precision@1"]) == {"p@10": 0.1, "precision@1": 1.0}
    assert evaluate(qrels, run, ["P@10"], per_query=True) == {"q": {"P@10": 0.1}}


def test_metric_names() -> None:
    assert MetricName.parse("NDCG@10") == MetricName("ndcg", 10)
    assert MetricName.parse("p@5") == MetricName("precision", 5)
    assert str(MetricName.parse("map@100")) == "map@100"
    assert MetricName.parse("map@100").trec_eval_measure == "map_cut.100"
    assert MetricName.parse("mrr@10").trec_eval_key == "recip_rank"
    assert list(parse_metrics("recall@5")) == ["recall@5"]
    for bad in ["ndcg", "ndcg@", "ndcg@0", "ndcg@-1", "ndcg@1.5", "bleu@10", "@10"]:
        with pytest.raises(ValueError, match="unknown metric"):
            MetricName.parse(bad)
    with pytest.raises(ValueError, match="no metric"):
        parse_metrics([])


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"a": 1}}, {"q": {"a": math.nan}})
    with pytest.raises(ValueError, match="no query of the run"):
        evaluate({"q": {"a": 1}}, {"other": {"a": 1.0}})
    assert evaluate({"q": {"a": 1}}, {"other": {"a": 1.0}}, per_query=True) == {}
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(["a"], {"a": 1}, 0)
