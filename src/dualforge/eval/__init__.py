"""Evaluation: trec_eval-compatible metrics, exact search, retrieval evaluation."""

from dualforge.eval.metrics import (
    DEFAULT_METRICS,
    MetricName,
    evaluate,
    evaluate_per_query,
    parse_metrics,
    rank,
)
from dualforge.eval.retrieval import exact_search, run_from_search
from dualforge.eval.retrieval_eval import RetrievalReport, evaluate_retrieval

__all__ = [
    "DEFAULT_METRICS",
    "MetricName",
    "RetrievalReport",
    "evaluate",
    "evaluate_per_query",
    "evaluate_retrieval",
    "exact_search",
    "parse_metrics",
    "rank",
    "run_from_search",
]
