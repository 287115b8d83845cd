"""Ranking metrics with trec_eval semantics, as computed by pytrec_eval and BEIR.

Every value matches ``pytrec_eval.RelevanceEvaluator`` (package ``pytrec-eval-terrier``) to
floating-point rounding; the rules below were checked against it by experiment.

Ranking:
    trec_eval compares scores as 32-bit floats: documents are sorted by ``float32(score)``
    descending, and equal float32 scores are broken by document id descending (byte-wise
    ``strcmp``, the same as Python's code-point order), so ``"9"`` ranks above ``"10"`` and
    ``1.0 + 1e-9`` ties with ``1.0``. NaN scores are rejected.

Relevance:
    A judgment ``>= 1`` is relevant (recall, precision, MAP, MRR). nDCG uses the judgment as a
    linear gain with a ``log2(rank + 1)`` discount; judgments ``<= 0`` and unjudged documents
    gain nothing. The ideal ranking sorts all of the query's positive judgments, including
    relevant documents that the run never retrieved.

Queries:
    A query is evaluated when it is in the run and has at least one judgment (even if all its
    judgments are 0) in the qrels. Queries of the qrels missing from the run are skipped, and so
    are run queries without judgments, exactly as pytrec_eval does; BEIR averages the values of
    the evaluated queries, and so does :func:`evaluate`. A query whose judgments are all 0 scores
    0 on every metric and counts in the mean. A run query with no documents scores 0.

Metrics (``name@k``):
    ``ndcg@k`` = trec_eval ``ndcg_cut_k``; ``recall@k`` = ``recall_k``; ``precision@k`` (or
    ``p@k``) = ``P_k`` (always divided by ``k``); ``map@k`` = ``map_cut_k`` (precision at each
    relevant rank ``<= k``, summed and divided by the query's number of relevant documents);
    ``mrr@k`` = reciprocal rank of the first relevant document within the top ``k``, 0 if there
    is none, i.e. trec_eval ``recip_rank`` on the run cut to its top ``k``. (BEIR's own
    ``MRR@k`` breaks ties by insertion order and divides by ``len(qrels)``; this one does not.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]
MetricFn = Callable[[Sequence[str], Mapping[str, int], int], float]

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")
RELEVANCE_LEVEL = 1


def rank(scores: Mapping[str, float]) -> list[str]:
    """Order a query's documents as trec_eval does.

    Args:
        scores: ``{doc_id: score}`` of one query.

    Returns:
        Document ids by ``float32(score)`` descending, ties by document id descending.

    Raises:
        ValueError: If a score is NaN.
    """
    docs = sorted(scores, reverse=True)  # id descending; the stable sort below keeps it for ties
    values = np.fromiter((scores[d] for d in docs), dtype=np.float64, count=len(docs))
    if np.isnan(values).any():
        raise ValueError("run scores must not be NaN")
    order = np.argsort(-values.astype(np.float32), kind="stable")
    return [docs[i] for i in order.tolist()]


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cutoff k must be >= 1, got {k}")


def _num_relevant(judgments: Mapping[str, int]) -> int:
    return sum(1 for rel in judgments.values() if rel >= RELEVANCE_LEVEL)


def _hits(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> list[bool]:
    return [judgments.get(doc, 0) >= RELEVANCE_LEVEL for doc in ranking[:k]]


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear graded gains (trec_eval ``ndcg_cut_k``).

    Args:
        ranking: Document ids, best first (see :func:`rank`).
        judgments: ``{doc_id: relevance}`` of the query.
        k: Cutoff.

    Returns:
        DCG of the top ``k`` over the DCG of the ideal top ``k``; 0 without positive judgments.
    """
    _check_k(k)
    dcg = sum(max(judgments.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    ideal = sorted((rel for rel in judgments.values() if rel > 0), reverse=True)[:k]
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top ``k`` over all relevant documents (trec_eval ``recall_k``).

    Args:
        ranking: Document ids, best first.
        judgments: ``{doc_id: relevance}`` of the query.
        k: Cutoff.

    Returns:
        The recall; 0 when the query has no relevant document.
    """
    _check_k(k)
    relevant = _num_relevant(judgments)
    return sum(_hits(ranking, judgments, k)) / relevant if relevant else 0.0


def precision_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top ``k`` over ``k`` (trec_eval ``P_k``), even if fewer ranked.

    Args:
        ranking: Document ids, best first.
        judgments: ``{doc_id: relevance}`` of the query.
        k: Cutoff.

    Returns:
        The precision.
    """
    _check_k(k)
    return sum(_hits(ranking, judgments, k)) / k


def mrr_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top ``k``.

    Args:
        ranking: Document ids, best first.
        judgments: ``{doc_id: relevance}`` of the query.
        k: Cutoff.

    Returns:
        ``1 / rank`` of the first relevant document, 0 if none is in the top ``k``.
    """
    _check_k(k)
    for i, hit in enumerate(_hits(ranking, judgments, k)):
        if hit:
            return 1.0 / (i + 1)
    return 0.0


def map_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Average precision cut at ``k`` (trec_eval ``map_cut_k``).

    Args:
        ranking: Document ids, best first.
        judgments: ``{doc_id: relevance}`` of the query.
        k: Cutoff.

    Returns:
        Sum of the precision at each relevant rank ``<= k``, over the number of relevant
        documents of the query (retrieved or not); 0 when it has none.
    """
    _check_k(k)
    relevant = _num_relevant(judgments)
    if not relevant:
        return 0.0
    found, total = 0, 0.0
    for i, hit in enumerate(_hits(ranking, judgments, k)):
        if hit:
            found += 1
            total += found / (i + 1)
    return total / relevant


METRICS: dict[str, MetricFn] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
}
_ALIASES = {"p": "precision", "prec": "precision", "rr": "mrr", "ap": "map"}
_TREC_NAMES = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name such as ``ndcg@10``.

    Attributes:
        kind: One of ``ndcg``, ``recall``, ``precision``, ``mrr``, ``map``.
        k: Cutoff, ``>= 1``.
    """

    kind: str
    k: int

    @classmethod
    def parse(cls, name: str) -> MetricName:
        """Parse ``"<kind>@<k>"`` (case-insensitive; ``p@k`` means ``precision@k``).

        Args:
            name: The metric name, e.g. ``"ndcg@10"``.

        Returns:
            The parsed name, e.g. ``MetricName("ndcg", 10)``.

        Raises:
            ValueError: If the name is not ``<kind>@<k>`` with a known kind and ``k >= 1``.
        """
        kind, sep, cutoff = name.strip().lower().partition("@")
        kind = _ALIASES.get(kind, kind)
        if not sep or kind not in METRICS or not cutoff.isdigit() or int(cutoff) < 1:
            raise ValueError(
                f"unknown metric {name!r}: use <{'|'.join(METRICS)}>@<k> with k >= 1, "
                "e.g. 'ndcg@10' or 'recall@100'"
            )
        return cls(kind, int(cutoff))

    def __str__(self) -> str:
        return f"{self.kind}@{self.k}"

    @property
    def trec_eval_measure(self) -> str:
        """The pytrec_eval measure that computes this metric (``mrr``: on the top-k run)."""
        return "recip_rank" if self.kind == "mrr" else f"{_TREC_NAMES[self.kind]}.{self.k}"

    @property
    def trec_eval_key(self) -> str:
        """The key of this metric in pytrec_eval's per-query results."""
        return self.trec_eval_measure.replace(".", "_")

    def compute(self, ranking: Sequence[str], judgments: Mapping[str, int]) -> float:
        """The metric of one query.

        Args:
            ranking: Document ids, best first (see :func:`rank`).
            judgments: ``{doc_id: relevance}`` of the query.

        Returns:
            The metric value.
        """
        return METRICS[self.kind](ranking, judgments, self.k)


def search_depth(k: int, parsed: Mapping[str, MetricName]) -> int:
    """Documents to retrieve per query: ``k``, or more when a metric cuts deeper (so that e.g.
    ``recall@100`` is exact with ``k=10``)."""
    return max(k, *(m.k for m in parsed.values()))


def parse_metrics(metrics: Iterable[str]) -> dict[str, MetricName]:
    """Parse metric names, keyed by the names as given.

    Args:
        metrics: Names such as ``"ndcg@10"``.

    Returns:
        ``{name: MetricName}`` in the given order (repeated names once).

    Raises:
        ValueError: If a name is invalid or no metric is given.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    parsed = {name: MetricName.parse(name) for name in metrics}
    if not parsed:
        raise ValueError("no metric given")
    return parsed


def evaluated_queries(qrels: Qrels, run: Run) -> list[str]:
    """Query ids that pytrec_eval evaluates: in the run and with at least one judgment.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``.
        run: ``{query_id: {doc_id: score}}``.

    Returns:
        The ids, in run order.
    """
    return [qid for qid in run if qrels.get(qid)]


def evaluate_per_query(
    qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """Metrics of each evaluated query (see :func:`evaluated_queries`).

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``.
        run: ``{query_id: {doc_id: score}}``.
        metrics: Metric names such as ``"ndcg@10"``.

    Returns:
        ``{query_id: {metric_name: value}}``.

    Raises:
        ValueError: For an invalid metric name or a NaN score.
    """
    parsed = parse_metrics(metrics)
    table: dict[str, dict[str, float]] = {}
    for qid in evaluated_queries(qrels, run):
        ranking = rank(run[qid])
        table[qid] = {name: m.compute(ranking, qrels[qid]) for name, m in parsed.items()}
    return table


@overload
def evaluate(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str] = ...,
    *,
    per_query: Literal[False] = ...,
) -> dict[str, float]: ...


@overload
def evaluate(
    qrels: Qrels, run: Run, metrics: Iterable[str] = ..., *, per_query: Literal[True]
) -> dict[str, dict[str, float]]: ...


def evaluate(
    qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS, *, per_query: bool = False
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean metrics over the evaluated queries, as BEIR averages pytrec_eval's values.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``.
        run: ``{query_id: {doc_id: score}}``.
        metrics: Metric names such as ``"ndcg@10"``; results are keyed by these names.
        per_query: Return ``{query_id: {metric_name: value}}`` instead of the means.

    Returns:
        ``{metric_name: mean}``, or the per-query table.

    Raises:
        ValueError: For an invalid metric name, a NaN score, or (for means) when no query of
            the run is judged in the qrels.
    """
    parsed = parse_metrics(metrics)
    table = evaluate_per_query(qrels, run, parsed)
    if per_query:
        return table
    if not table:
        raise ValueError(
            f"no query of the run ({len(run)} queries) has judgments in the qrels "
            f"({len(qrels)} queries); check that the query ids match"
        )
    return {name: math.fsum(row[name] for row in table.values()) / len(table) for name in parsed}
