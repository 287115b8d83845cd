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

from dualforge.eval.metrics import DEFAULT_METRICS, Qrels, evaluate, parse_metrics, search_depth
from dualforge.eval.retrieval.exact import run_from_search
from dualforge.eval.retrieval_eval import RetrievalReport, judged_split
from dualforge.matryoshka import check_dim, distinct_dims


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


TokenEncoder = Callable[[Sequence[str]], Sequence[np.ndarray]]
"""``texts -> one (T_i, D) array of scored token vectors per text``."""


def encode_judged(
    encode_queries: TokenEncoder,
    encode_docs: TokenEncoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> tuple[list[str], list[str], Sequence[np.ndarray], Sequence[np.ndarray]]:
    """``(query_ids, doc_ids, query_tokens, doc_tokens)``: the judged queries and the corpus,
    encoded to token vectors.

    Raises:
        ValueError: Bad metrics (before any encoding), an empty corpus, or no judged query
            with a text.
    """
    parse_metrics(metrics)
    qids, doc_ids = judged_split(corpus, queries, qrels)
    q_tokens = encode_queries([queries[q] for q in qids])
    d_tokens = encode_docs([corpus[d] for d in doc_ids])
    return qids, doc_ids, q_tokens, d_tokens


def evaluate_index(
    query_tokens: Sequence[np.ndarray],
    index: TokenIndex,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
) -> tuple[RetrievalReport, np.ndarray]:
    """Exhaustive MaxSim search over ``index`` and ``metrics`` (at every token dim of ``dims``
    too, and the full dim); the report and the full-dim search's ``(Q, depth)`` document rows."""
    parsed = parse_metrics(metrics)
    full_dim = int(index.vectors.shape[1])
    depth = search_depth(k, parsed)

    def score(scores: np.ndarray, ids: np.ndarray) -> dict[str, float]:
        return evaluate(qrels, run_from_search(list(query_ids), doc_ids, scores, ids), list(parsed))

    scores, exact_ids = maxsim_search(query_tokens, index, depth)
    full = score(scores, exact_ids)
    chosen = distinct_dims([*dims, full_dim], full_dim) if dims else []
    by_dim = {
        str(d): dict(full) if d == full_dim else score(*maxsim_search(query_tokens, index.prefix(d), depth))
        for d in chosen
    }  # fmt: skip
    report = RetrievalReport(full, by_dim, len(query_ids), len(doc_ids), chosen, full_dim)
    return report, exact_ids


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
    index = TokenIndex.build(doc_tokens)
    report, _ = evaluate_index(
        query_tokens, index, query_ids, doc_ids, qrels, k=k, metrics=metrics, dims=dims
    )
    return report


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
    """Encode the judged queries and the corpus to token vectors (:func:`encode_judged`) and
    run :func:`evaluate_tokens`."""
    qids, doc_ids, q_tokens, d_tokens = encode_judged(
        encode_queries, encode_docs, corpus, queries, qrels, metrics
    )
    return evaluate_tokens(
        q_tokens, d_tokens, qids, doc_ids, qrels, k=k, metrics=metrics, dims=dims
    )
