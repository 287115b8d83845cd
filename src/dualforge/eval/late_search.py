"""Late-interaction search for larger corpora: token-level candidates, then exact MaxSim (PLAID-style).

1. **Candidates.** Every query token searches a token-level index (any faiss factory string, e.g.
   ``"IVF1024,PQ16"``; ``"Flat"`` is exact) for its ``k_token`` nearest document tokens; the
   documents owning them are the query's candidates. The index may hold short Matryoshka prefixes
   of the token vectors (``dim=32``): the shortlist is cheap, the rerank is not affected.
2. **Rerank.** Exact MaxSim of the query against its candidates' full token vectors
   (:class:`~dualforge.eval.late.TokenIndex`).

:func:`candidate_recall` measures the first stage against exhaustive MaxSim: the fraction of the
exhaustive top-k that the candidate stage kept. With an exact index and ``k_token`` covering every
token the result is the exhaustive one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dualforge.eval.late import (
    TokenEncoder,
    TokenIndex,
    encode_judged,
    evaluate_index,
    maxsim_scores,
    maxsim_search,
)
from dualforge.eval.metrics import DEFAULT_METRICS, Qrels, evaluate, parse_metrics, search_depth
from dualforge.eval.retrieval.exact import run_from_search
from dualforge.eval.retrieval.index import VectorIndex, build_index


@dataclass(frozen=True)
class CandidateIndex:
    """A token-level index over (a prefix of) every document token, for the candidate stage.

    Attributes:
        tokens: The full token vectors (for the rerank) and their owner documents.
        index: The token-level index (vectors: prefixes of ``dim`` channels, renormalised).
        dim: Channels the candidate stage uses.
        factory: The faiss factory string it was built from.
    """

    tokens: TokenIndex
    index: VectorIndex
    dim: int
    factory: str

    @classmethod
    def build(
        cls, tokens: TokenIndex, factory: str = "Flat", dim: int | None = None,
        params: str | None = None,
    ) -> CandidateIndex:  # fmt: skip
        """Index every token of ``tokens`` (``dim``: a Matryoshka prefix of the vectors)."""
        width = dim or int(tokens.vectors.shape[1])
        short = tokens.prefix(width) if width < tokens.vectors.shape[1] else tokens
        index = build_index(short.vectors, factory, "ip", params=params)
        return cls(tokens, index, width, factory)

    def candidates(self, query: torch.Tensor, k_token: int) -> np.ndarray:
        """Sorted unique document rows owning the ``k_token`` nearest tokens of each query token."""
        q = F.normalize(query[:, : self.dim], dim=-1) if self.dim < query.shape[1] else query
        _, token_ids = self.index.search(q, min(k_token, self.index.ntotal))  # (T, k_token)
        found = token_ids[token_ids >= 0]
        return np.unique(self.tokens.owner.numpy()[found])


def rerank(
    query: torch.Tensor, tokens: TokenIndex, docs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the top ``k`` of ``docs`` by exact MaxSim (``-inf`` / ``-1`` pad)."""
    chosen = torch.from_numpy(docs)
    keep = torch.isin(tokens.owner, chosen)
    remap = torch.full((tokens.num_docs,), -1, dtype=torch.long)
    remap[chosen] = torch.arange(len(chosen))
    sub = TokenIndex(tokens.vectors[keep], remap[tokens.owner[keep]], len(chosen))
    scores = maxsim_scores(query, sub)  # (C,)
    top = min(k, len(chosen))
    values, order = torch.topk(scores, top)
    out_scores = np.full(k, -np.inf, dtype=np.float32)
    out_ids = np.full(k, -1, dtype=np.int64)
    out_scores[:top], out_ids[:top] = values.numpy(), docs[order.numpy()]
    return out_scores, out_ids


def candidate_search(
    queries: Sequence[np.ndarray], index: CandidateIndex, k: int, k_token: int = 64
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(scores, ids)`` each ``(Q, k)`` after the rerank, and each query's candidate rows."""
    all_scores, all_ids, found = [], [], []
    for q in queries:
        query = torch.from_numpy(np.asarray(q, dtype=np.float32))
        docs = index.candidates(query, k_token)
        scores, ids = rerank(query, index.tokens, docs, k)
        all_scores.append(scores)
        all_ids.append(ids)
        found.append(docs)
    return np.stack(all_scores), np.stack(all_ids), found


def candidate_recall(candidates: Sequence[np.ndarray], exhaustive_ids: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exhaustive top-``k`` documents among its candidates."""
    hits = [np.isin(exhaustive_ids[i, :k], cands).mean() for i, cands in enumerate(candidates)]
    return float(np.mean(hits)) if hits else 0.0


LateSearch = Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]
"""``query token arrays -> (scores, ids)``, each ``(Q, k)``, best first (``-1`` ids pad)."""


def late_searcher(
    docs: Sequence[np.ndarray],
    k: int,
    *,
    dim: int | None = None,
    factory: str | None = None,
    params: str | None = None,
    candidate_dim: int | None = None,
    k_token: int = 64,
) -> LateSearch:
    """Search over the token vectors of ``docs``: exhaustive MaxSim (on the first ``dim`` token
    channels when given), or with ``factory`` token-level candidates reranked exactly.

    Raises:
        ValueError: A bad dim, an empty corpus, or ``dim`` together with ``factory`` (the rerank
            uses the full vectors; ``candidate_dim`` shortens the candidate stage).
    """
    tokens = TokenIndex.build(docs)
    if factory is None:
        index = tokens.prefix(dim) if dim and dim < tokens.vectors.shape[1] else tokens

        def exhaustive(queries: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = maxsim_search(queries, index, k)
            return _pad(scores, ids, k)

        return exhaustive
    if dim is not None:
        raise ValueError("--dims with --candidates: use --candidate-dim for the candidate stage")
    candidates = CandidateIndex.build(tokens, factory, candidate_dim, params)

    def shortlist(queries: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scores, ids, _ = candidate_search(queries, candidates, k, k_token)
        return scores, ids

    return shortlist


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, k)`` arrays: a corpus smaller than ``k`` padded with ``-inf`` / ``-1``."""
    missing = k - ids.shape[1]
    if missing <= 0:
        return scores, ids
    fill = ((0, 0), (0, missing))
    return np.pad(scores, fill, constant_values=-np.inf), np.pad(ids, fill, constant_values=-1)


def late_report(
    encode_queries: TokenEncoder,
    encode_docs: TokenEncoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] | None = None,
    factory: str | None = None,
    params: str | None = None,
    k_token: int = 64,
    candidate_dim: int | None = None,
) -> dict[str, Any]:
    """Encode the judged queries and the corpus once; exhaustive MaxSim metrics (by token dim),
    storage per document, and with ``factory`` the candidate-then-rerank metrics and the
    candidate stage's recall of the exhaustive top-``k``."""
    qids, doc_ids, q_tokens, d_tokens = encode_judged(
        encode_queries, encode_docs, corpus, queries, qrels, metrics
    )
    tokens = TokenIndex.build(d_tokens)
    exhaustive, exact_ids = evaluate_index(
        q_tokens, tokens, qids, doc_ids, qrels, k=k, metrics=metrics, dims=dims
    )
    report = exhaustive.to_dict()
    report["tokens_per_doc"] = tokens.vectors.shape[0] / tokens.num_docs
    report["bytes_per_doc"] = {
        str(d): {"fp32": tokens.bytes_per_doc(d, 4), "fp16": tokens.bytes_per_doc(d, 2)}
        for d in sorted({int(tokens.vectors.shape[1]), *(int(d) for d in dims or ())})
    }  # fmt: skip
    if factory is None:
        return report
    parsed = parse_metrics(metrics)
    index = CandidateIndex.build(tokens, factory, candidate_dim, params)
    scores, ids, found = candidate_search(q_tokens, index, search_depth(k, parsed), k_token)
    report["candidates"] = {
        "factory": factory, "params": params, "dim": index.dim, "k_token": k_token,
        "mean_candidates": float(np.mean([len(f) for f in found])),
        f"recall_of_exhaustive@{k}": candidate_recall(found, exact_ids, k),
        "metrics": evaluate(qrels, run_from_search(qids, doc_ids, scores, ids), list(parsed)),
    }  # fmt: skip
    return report
