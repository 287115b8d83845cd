"""Ranking metrics with trec_eval semantics (as computed by pytrec_eval and BEIR).

- Ranking: by score descending; ties broken by document id descending (trec_eval's order).
- Relevant: judgment >= 1. nDCG uses the graded judgment as linear gain and a log2 discount;
  the ideal ranking sorts all judgments of the query.
- A query counts when it appears in both the run and the qrels; means are over those queries.
- ``mrr@k``: reciprocal rank of the first relevant document within the top k (0 if none).
- ``map@k``: trec_eval's ``map_cut_k``: precision at each relevant rank <= k, divided by the
  number of relevant documents of the query.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]
MetricFn = Callable[[list[str], Mapping[str, int], int], float]

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")


def rank(scores: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then id descending."""
    return sorted(scores, key=lambda d: (scores[d], d), reverse=True)


def ndcg(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear graded gains."""
    dcg = sum(max(judged.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    """Fraction of relevant documents found in the top k."""
    relevant = sum(1 for g in judged.values() if g >= 1)
    found = sum(1 for d in ranking[:k] if judged.get(d, 0) >= 1)
    return found / relevant if relevant else 0.0


def precision(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top k, divided by k."""
    return sum(1 for d in ranking[:k] if judged.get(d, 0) >= 1) / k


def mrr(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k."""
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def average_precision(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    """Average precision over the top k (trec_eval ``map_cut``)."""
    relevant = sum(1 for g in judged.values() if g >= 1)
    hits, total = 0, 0.0
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) >= 1:
            hits += 1
            total += hits / (i + 1)
    return total / relevant if relevant else 0.0


METRICS: dict[str, MetricFn] = {
    "ndcg": ndcg,
    "recall": recall,
    "precision": precision,
    "mrr": mrr,
    "map": average_precision,
}


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name such as ``ndcg@10``."""

    kind: str
    k: int

    @classmethod
    def parse(cls, name: str) -> MetricName:
        """``"ndcg@10"`` -> ``MetricName("ndcg", 10)``."""
        kind, sep, k = name.lower().partition("@")
        if not sep or kind not in METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"bad metric {name!r}; use <{'|'.join(METRICS)}>@<k>, e.g. ndcg@10")
        return cls(kind, int(k))


def evaluate(
    qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS, per_query: bool = False
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean metrics over queries in both ``run`` and ``qrels`` (or per query when asked)."""
    parsed = {name: MetricName.parse(name) for name in metrics}
    table: dict[str, dict[str, float]] = {}
    for qid, scores in run.items():
        if qid not in qrels:
            continue
        ranking = rank(scores)
        table[qid] = {n: METRICS[m.kind](ranking, qrels[qid], m.k) for n, m in parsed.items()}
    if per_query:
        return table
    count = len(table)
    return {n: (sum(row[n] for row in table.values()) / count if count else 0.0) for n in parsed}
