"""Evaluation: trec_eval-compatible metrics, exact search, retrieval evaluation."""

from dualforge.eval.metrics import DEFAULT_METRICS, MetricName, evaluate, rank
from dualforge.eval.retrieval_eval import RetrievalReport, evaluate_retrieval

__all__ = ["DEFAULT_METRICS", "MetricName", "RetrievalReport", "evaluate", "evaluate_retrieval", "rank"]
