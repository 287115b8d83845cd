"""Budget mode without a dev split: k-fold cross-validation of the cascade choice.

The queries of the evaluated split are cut into ``folds`` seeded parts; for each part,
:func:`~dualforge.eval.retrieval.budget.choose_cascade` picks a cascade on the other parts and
the pick is scored on that part only. Pooled over the parts, the held-out quality is what the
budget mode delivers on queries it never saw, which the quality it reports on its own dev queries
overstates (the cheapest of many passing candidates is often a lucky one).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dualforge.eval.metrics import Qrels
from dualforge.eval.retrieval.budget import QualityFn, choose_cascade, qrels_quality
from dualforge.eval.retrieval.exact import Array, prepare
from dualforge.eval.retrieval.funnel import Funnel, as_queries, exact_flops


@dataclass(frozen=True)
class FoldResult:
    """One fold: the cascade chosen on the other folds, scored on this one.

    Attributes:
        spec: The chosen cascade.
        flops_ratio: Its FLOPs per query over exact search's.
        queries: Held-out queries in this fold.
        quality: Its mean metric on them.
        exact_quality: Exact full-dim search's mean metric on them.
    """

    spec: str
    flops_ratio: float
    queries: int
    quality: float
    exact_quality: float


@dataclass(frozen=True)
class CascadeCV:
    """Pooled result of :func:`cross_validate_cascade` (query-weighted means over the folds).

    Attributes:
        quality: Held-out metric of the chosen cascades.
        exact_quality: Exact full-dim search's metric on the same queries.
        flops_ratio: FLOPs of the chosen cascades over exact search's.
        folds: Each fold's choice and scores.
    """

    quality: float
    exact_quality: float
    flops_ratio: float
    folds: tuple[FoldResult, ...]


def cross_validate_cascade(
    docs: Array,
    queries: Array,
    qrels: Qrels,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    *,
    folds: int = 5,
    tolerance: float = 0.01,
    confidence: float | None = None,
    metric: str = "ip",
    quality_metric: str = "ndcg@10",
    seed: int = 0,
) -> CascadeCV:
    """Cross-validate the budget mode over the queries (exact first stages, default grid).

    Args:
        docs: ``(N, D)`` document embeddings.
        queries: ``(Q, D)`` query embeddings; every query needs judgments in ``qrels``.
        qrels: ``{query_id: {doc_id: relevance}}``.
        query_ids: Id of each query row.
        doc_ids: Id of each document row.
        folds: Number of folds, ``2 <= folds <= Q``.
        tolerance: As in :func:`choose_cascade`.
        confidence: As in :func:`choose_cascade` (None: the dev mean).
        metric: ``"ip"`` or ``"cos"``.
        quality_metric: The metric the choice and the scores use.
        seed: Seed of the query shuffle.

    Returns:
        Pooled and per-fold results.

    Raises:
        ValueError: For a bad fold count, mismatched ids, or unjudged queries.
    """
    d = prepare(docs, metric="ip", name="docs")  # (N, D)
    q = as_queries(queries, int(d.shape[1]))  # (Q, D)
    _check(len(q), len(d), folds, query_ids, doc_ids, qrels)
    order = torch.randperm(len(q), generator=torch.Generator().manual_seed(seed)).tolist()
    cuts = [len(order) * i // folds for i in range(folds + 1)]
    results = []
    for lo, hi in itertools.pairwise(cuts):
        test = sorted(order[lo:hi])
        pick = sorted(order[:lo] + order[hi:])
        results.append(_fold(d, q, qrels, query_ids, doc_ids, pick, test, tolerance, confidence,
                             metric, quality_metric))  # fmt: skip
    weights = np.array([r.queries for r in results], dtype=np.float64) / len(q)

    def pooled(values: list[float]) -> float:
        return float(np.dot(weights, values))

    return CascadeCV(
        quality=pooled([r.quality for r in results]),
        exact_quality=pooled([r.exact_quality for r in results]),
        flops_ratio=pooled([r.flops_ratio for r in results]),
        folds=tuple(results),
    )


def _check(
    n_queries: int, n_docs: int, folds: int, query_ids: Sequence[str], doc_ids: Sequence[str],
    qrels: Qrels,
) -> None:  # fmt: skip
    if not 2 <= folds <= n_queries:
        raise ValueError(f"folds must be in [2, {n_queries}] (the number of queries), got {folds}")
    if len(query_ids) != n_queries or len(doc_ids) != n_docs:
        raise ValueError(
            f"{len(query_ids)} query ids for {n_queries} queries / {len(doc_ids)} doc ids for "
            f"{n_docs} documents"
        )
    unjudged = [qid for qid in query_ids if not qrels.get(qid)]
    if unjudged:
        raise ValueError(f"{len(unjudged)} queries have no judgments, e.g. {unjudged[0]!r}")


def _fold(
    d: torch.Tensor, q: torch.Tensor, qrels: Qrels, query_ids: Sequence[str],
    doc_ids: Sequence[str], pick: list[int], test: list[int], tolerance: float,
    confidence: float | None, metric: str, quality_metric: str,
) -> FoldResult:  # fmt: skip
    """Choose on the ``pick`` rows, score on the ``test`` rows."""

    def quality_on(rows: list[int], per_query: bool = False) -> QualityFn:
        ids = [query_ids[i] for i in rows]
        judged = {qid: qrels[qid] for qid in ids}
        return qrels_quality(judged, ids, doc_ids, quality_metric, per_query=per_query)

    choice = choose_cascade(
        d, q[pick], quality_on(pick, confidence is not None),
        tolerance=tolerance, metric=metric, confidence=confidence,
    )  # fmt: skip
    score = quality_on(test)
    chosen = Funnel(d, choice.chosen.spec, metric=metric).search(q[test])
    exact = Funnel(d, f"{d.shape[1]}:10", metric=metric).search(q[test])
    return FoldResult(
        spec=choice.chosen.spec,
        flops_ratio=choice.chosen.flops_per_query / exact_flops(int(d.shape[0]), int(d.shape[1])),
        queries=len(test),
        quality=float(score(chosen.scores, chosen.ids)),
        exact_quality=float(score(exact.scores, exact.ids)),
    )
