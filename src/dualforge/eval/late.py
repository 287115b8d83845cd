"""Exhaustive MaxSim retrieval and evaluation for late-interaction (multi-vector) models.

Documents are stored as one flat ``(N_tok, D)`` matrix of token vectors with the owner document
of each row (:class:`TokenIndex`). A query ``(T, D)`` is scored against every token at once,
``(T, N_tok)``, the maximum per document is taken with a scatter-reduce, ``(T, N)``, and summed over
the query tokens: exact MaxSim, the same scores as :func:`dualforge.losses.maxsim`. Matryoshka
token dims score with the first ``m`` channels of every vector, renormalised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dualforge.eval.metrics import DEFAULT_METRICS, Qrels, evaluate, parse_metrics
from dualforge.eval.retrieval.exact import run_from_search
from dualforge.eval.retrieval_eval import RetrievalReport, judged_query_ids
from dualforge.matryoshka import check_dim


@dataclass(frozen=True)
class TokenIndex:
    """Every document's token vectors in one matrix.

    Attributes:
        vectors: ``(N_tok, D)`` float32 token vectors.
        owner: ``(N_tok,)`` the document row of each token.
        num_docs: Number of documents.
    """

    vectors: torch.Tensor
    owner: torch.Tensor
    num_docs: int

    @classmethod
    def build(cls, docs: Sequence[np.ndarray]) -> TokenIndex:
        """From one ``(T_i, D)`` array per document (each with one token at least).

        Raises:
            ValueError: A document without tokens, or dims that disagree.
        """
        if not docs:
            raise ValueError("the corpus is empty")
        if any(len(d) == 0 for d in docs):
            raise ValueError("every document needs at least one scored token")
        if len({d.shape[1] for d in docs}) != 1:
            raise ValueError("documents have token vectors of different dims")
        lengths = torch.tensor([len(d) for d in docs])
        vectors = torch.from_numpy(np.concatenate(docs).astype(np.float32))
        return cls(vectors, torch.repeat_interleave(torch.arange(len(docs)), lengths), len(docs))

    def bytes_per_doc(self, dim: int | None = None, bytes_per_value: int = 4) -> float:
        """Storage of one document's token vectors, on average (fp32 by default)."""
        width = dim or self.vectors.shape[1]
        return self.vectors.shape[0] * width * bytes_per_value / self.num_docs

    def prefix(self, dim: int) -> TokenIndex:
        """The same index with the first ``dim`` channels of every vector, renormalised."""
        check_dim(dim, self.vectors.shape[1])
        return TokenIndex(F.normalize(self.vectors[:, :dim], dim=-1), self.owner, self.num_docs)


def maxsim_scores(query: torch.Tensor, index: TokenIndex) -> torch.Tensor:
    """``(N,)`` MaxSim of one ``(T, D)`` query against every document of ``index``."""
    sims = query @ index.vectors.T  # (T, N_tok)
    best = sims.new_full((query.shape[0], index.num_docs), float("-inf"))  # (T, N)
    best.scatter_reduce_(1, index.owner.expand_as(sims), sims, reduce="amax")
    return best.sum(dim=0)


def maxsim_search(
    queries: Sequence[np.ndarray], index: TokenIndex, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)``, each ``(Q, k)``, best first: exhaustive MaxSim top-k per query."""
    k = min(k, index.num_docs)
    top_scores, top_ids = [], []
    for q in queries:
        query = torch.from_numpy(np.asarray(q, dtype=np.float32))
        query = query[:, : index.vectors.shape[1]]
        if query.shape[1] < q.shape[1]:
            query = F.normalize(query, dim=-1)
        scores, ids = torch.topk(maxsim_scores(query, index), k)
        top_scores.append(scores.numpy())
        top_ids.append(ids.numpy())
    return np.stack(top_scores), np.stack(top_ids)


def evaluate_tokens(
    query_tokens: Sequence[np.ndarray],
    doc_tokens: Sequence[np.ndarray],
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
) -> RetrievalReport:
    """Exhaustive MaxSim search and ``metrics`` (at every token dim of ``dims`` too)."""
    parsed = parse_metrics(metrics)
    index = TokenIndex.build(doc_tokens)
    full_dim = int(index.vectors.shape[1])
    depth = max(k, *(m.k for m in parsed.values()))

    def score(at: TokenIndex) -> dict[str, float]:
        scores, ids = maxsim_search(query_tokens, at, depth)
        return evaluate(qrels, run_from_search(list(query_ids), doc_ids, scores, ids), list(parsed))

    full = score(index)
    chosen = sorted(
        {int(d) for d in dims or () if int(d) <= full_dim} | ({full_dim} if dims else set())
    )
    by_dim = {str(d): dict(full) if d == full_dim else score(index.prefix(d)) for d in chosen}
    return RetrievalReport(full, by_dim, len(query_ids), len(doc_ids), chosen, full_dim)


TokenEncoder = Callable[[Sequence[str]], Sequence[np.ndarray]]
"""``texts -> one (T_i, D) array of scored token vectors per text``."""


def evaluate_late(
    encode_queries: TokenEncoder,
    encode_docs: TokenEncoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
) -> RetrievalReport:
    """Encode the judged queries and the corpus to token vectors and run
    :func:`evaluate_tokens`.

    Raises:
        ValueError: No judged query with a text, an empty corpus, or bad metrics.
    """
    parse_metrics(metrics)  # fail on a bad name before any encoding
    qids = judged_query_ids(qrels, queries)
    if not qids:
        raise ValueError("no query with judgments in the qrels has a text in the queries")
    doc_ids = list(corpus)
    q_tokens = encode_queries([queries[q] for q in qids])
    d_tokens = encode_docs([corpus[d] for d in doc_ids])
    return evaluate_tokens(
        q_tokens, d_tokens, qids, doc_ids, qrels, k=k, metrics=metrics, dims=dims
    )
