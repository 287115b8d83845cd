"""Retrieval evaluation: encode queries and corpus once, search exactly, compute metrics.

With Matryoshka ``dims`` the same embeddings are truncated to each prefix and scored again, so
one encoding pass gives the metrics of every prefix size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from dualforge.eval.metrics import DEFAULT_METRICS, Qrels, evaluate, parse_metrics, search_depth
from dualforge.eval.retrieval.exact import BACKENDS, exact_search, run_from_search
from dualforge.eval.retrieval.exact import METRICS as SEARCH_METRICS
from dualforge.matryoshka import distinct_dims

TextEncoder = Callable[[Sequence[str]], np.ndarray]

logger = logging.getLogger(__name__)


@dataclass
class RetrievalReport:
    """Retrieval metrics at full dimension, and per prefix dimension when asked.

    Attributes:
        metrics: ``{metric_name: mean}`` with the full embeddings.
        metrics_by_dim: ``{str(dim): {metric_name: mean}}`` for each prefix dim.
        num_queries: Queries evaluated (judged in the qrels and present in the queries).
        num_docs: Documents in the corpus.
        dims: The prefix dims evaluated, ascending (empty without ``dims``).
        embedding_dim: Size of the full embeddings.
    """

    metrics: dict[str, float]
    metrics_by_dim: dict[str, dict[str, float]] = field(default_factory=dict)
    num_queries: int = 0
    num_docs: int = 0
    dims: list[int] = field(default_factory=list)
    embedding_dim: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict.

        Returns:
            ``{"metrics": {...}, "metrics_by_dim": {...}, "num_queries": ..., "num_docs": ...,
            "dims": [...], "embedding_dim": ...}``.
        """
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON.

        Args:
            indent: JSON indentation (``None`` for one line).

        Returns:
            The JSON text of :meth:`to_dict`.
        """
        return json.dumps(self.to_dict(), indent=indent)


def judged_query_ids(qrels: Qrels, queries: Mapping[str, str]) -> list[str]:
    """Query ids to evaluate: with at least one judgment and with a text.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``.
        queries: ``{query_id: text}``.

    Returns:
        The ids in qrels order. Judged queries without a text are skipped with a warning.
    """
    judged = [qid for qid, judgments in qrels.items() if judgments]
    missing = [qid for qid in judged if qid not in queries]
    if missing:
        logger.warning(
            "%d judged queries have no text and are skipped (e.g. %r)", len(missing), missing[0]
        )
    return [qid for qid in judged if qid in queries]


def judged_split(
    corpus: Mapping[str, str], queries: Mapping[str, str], qrels: Qrels
) -> tuple[list[str], list[str]]:
    """The query ids to evaluate (:func:`judged_query_ids`) and the corpus's document ids.

    Raises:
        ValueError: An empty corpus, or no judged query with a text.
    """
    if not corpus:
        raise ValueError("the corpus is empty")
    qids = judged_query_ids(qrels, queries)
    if not qids:
        raise ValueError("no query with judgments in the qrels has a text in the queries")
    return qids, list(corpus)


def _encode(encoder: TextEncoder, texts: Sequence[str], side: str) -> np.ndarray:
    out: Any = encoder(texts)
    emb = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(
            f"the {side} encoder must return a (len(texts)={len(texts)}, dim) array, "
            f"got shape {emb.shape}"
        )
    return emb


def evaluate_retrieval(
    encode_queries: TextEncoder,
    encode_docs: TextEncoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
    metric: str = "cos",
    backend: str = "auto",
) -> RetrievalReport:
    """Encode the judged queries and the corpus, search exactly and compute ``metrics``.

    Only queries with judgments in ``qrels`` (and a text in ``queries``) are encoded; the corpus
    is encoded once. Each query retrieves ``max(k, largest metric cutoff)`` documents, so that
    e.g. ``recall@100`` is exact even with ``k=10``. Metrics follow :mod:`dualforge.eval.metrics`.

    Args:
        encode_queries: ``texts -> (len(texts), D)`` query embeddings.
        encode_docs: ``texts -> (len(texts), D)`` document embeddings.
        corpus: ``{doc_id: text}``.
        queries: ``{query_id: text}``.
        qrels: ``{query_id: {doc_id: relevance}}``.
        k: Documents retrieved per query.
        metrics: Metric names such as ``"ndcg@10"``.
        dims: Also evaluate these prefix sizes of the same embeddings (Matryoshka); cosine
            renormalises each prefix.
        metric: ``"cos"`` or ``"ip"``.
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see :func:`exact_search`).

    Returns:
        The report; ``metrics_by_dim[str(dim)]`` for each of ``dims``.

    Raises:
        ValueError: For bad arguments, an empty corpus, no judged query with a text, or
            embeddings of the wrong shape.
    """
    parse_metrics(metrics)  # fail on a bad name before any encoding
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if metric not in SEARCH_METRICS or backend not in BACKENDS:
        raise ValueError(
            f"metric={metric!r}, backend={backend!r}; use {SEARCH_METRICS}, {BACKENDS}"
        )
    qids, doc_ids = judged_split(corpus, queries, qrels)
    q_emb = _encode(encode_queries, [queries[q] for q in qids], "query")  # (Q, D)
    d_emb = _encode(encode_docs, [corpus[d] for d in doc_ids], "document")  # (N, D)
    return evaluate_embeddings(
        q_emb,
        d_emb,
        qids,
        doc_ids,
        qrels,
        k=k,
        metrics=metrics,
        dims=dims,
        metric=metric,
        backend=backend,
    )


def evaluate_embeddings(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
    metric: str = "cos",
    backend: str = "auto",
) -> RetrievalReport:
    """The second half of :func:`evaluate_retrieval`, on embeddings computed beforehand.

    Args:
        query_emb: ``(Q, D)`` embeddings of the queries ``query_ids``.
        doc_emb: ``(N, D)`` embeddings of the documents ``doc_ids``.
        query_ids: Id of each query row (see :func:`judged_query_ids`).
        doc_ids: Id of each document row.
        qrels: ``{query_id: {doc_id: relevance}}``.
        k: Documents retrieved per query.
        metrics: Metric names such as ``"ndcg@10"``.
        dims: Also evaluate these prefix sizes (Matryoshka).
        metric: ``"cos"`` or ``"ip"``.
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see :func:`exact_search`).

    Returns:
        The report, as :func:`evaluate_retrieval` makes it.

    Raises:
        ValueError: For bad arguments or embeddings whose shapes disagree with the ids.
    """
    parsed = parse_metrics(metrics)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    qids, q_emb, d_emb = list(query_ids), np.asarray(query_emb), np.asarray(doc_emb)
    if q_emb.ndim != 2 or d_emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-d, got {q_emb.shape} and {d_emb.shape}")
    if (len(qids), len(doc_ids)) != (q_emb.shape[0], d_emb.shape[0]):
        raise ValueError(
            f"{len(qids)} query ids / {len(doc_ids)} doc ids for {q_emb.shape[0]} query / "
            f"{d_emb.shape[0]} document embeddings"
        )
    if q_emb.shape[1] != d_emb.shape[1]:
        raise ValueError(f"query dim {q_emb.shape[1]} != document dim {d_emb.shape[1]}")
    full_dim = q_emb.shape[1]
    chosen = distinct_dims(dims, full_dim)
    depth = search_depth(k, parsed)

    def score(dim: int | None) -> dict[str, float]:
        scores, ids = exact_search(
            q_emb, d_emb, depth, metric=metric, backend=backend, dims=dim
        )  # (Q, depth), (Q, depth)
        return evaluate(qrels, run_from_search(qids, doc_ids, scores, ids), list(parsed))

    full = score(None)
    by_dim = {str(d): dict(full) if d == full_dim else score(d) for d in chosen}
    return RetrievalReport(full, by_dim, len(qids), len(doc_ids), chosen, int(full_dim))
