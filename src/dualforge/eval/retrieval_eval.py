"""Retrieval evaluation: encode queries and corpus once, search, score, optionally per prefix dim."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dualforge.eval.metrics import DEFAULT_METRICS, evaluate
from dualforge.eval.retrieval.exact import exact_search, run_from_search

TextEncoder = Callable[[Sequence[str]], np.ndarray]


@dataclass
class RetrievalReport:
    """Metrics at full dimension, and per prefix dimension when asked."""

    metrics: dict[str, float]
    metrics_by_dim: dict[str, dict[str, float]] = field(default_factory=dict)
    num_queries: int = 0
    num_docs: int = 0
    dims: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``{"metrics": {...}, "metrics_by_dim": {...}, ...}``)."""
        return asdict(self)

    def to_json(self) -> str:
        """The dict as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)


def evaluate_retrieval(
    encode_queries: TextEncoder,
    encode_docs: TextEncoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
    metric: str = "cos",
    backend: str = "auto",
) -> RetrievalReport:
    """Encode the judged queries and the corpus, search exactly, and compute ``metrics``.

    With ``dims``, the same embeddings are truncated to each prefix (and renormalised for
    cosine) and scored again: ``metrics_by_dim[str(dim)]``.
    """
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise ValueError("no query of the qrels is in the queries")
    doc_ids = list(corpus)
    q_emb = encode_queries([queries[q] for q in qids])  # (Q, D)
    d_emb = encode_docs([corpus[d] for d in doc_ids])  # (N, D)
    needed = max((int(m.split("@")[1]) for m in metrics), default=k)

    def score(dim: int | None) -> dict[str, float]:
        scores, ids = exact_search(q_emb, d_emb, max(k, needed), metric=metric, backend=backend, dims=dim)
        result = evaluate(qrels, run_from_search(qids, doc_ids, scores, ids), metrics)
        return {name: float(v) for name, v in result.items()}  # type: ignore[arg-type]

    full = score(None)
    by_dim = {str(dim): (full if dim == q_emb.shape[1] else score(dim)) for dim in dims or ()}
    return RetrievalReport(full, by_dim, len(qids), len(doc_ids), sorted(dims or []))
