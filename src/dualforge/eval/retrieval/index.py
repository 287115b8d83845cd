"""Vector indexes by faiss factory string, with an exact torch fallback of the same interface.

Every index answers ``search(queries, k) -> (scores, ids)``, each ``(Q, k)``, best first (score
descending, equal scores by document index ascending), like faiss. Approximate indexes (IVF,
HNSW) may find fewer than ``k`` documents for a query: the missing slots have id ``-1`` and score
``-inf``. With ``metric="cos"`` the documents are L2-normalised when added and the queries when
searched, so scores are cosine similarities.

Every index also counts its work: ``last_scored`` is the number of (query, vector) scores
computed by the last ``search`` call, summed over its queries. Exact search scores every vector;
for HNSW it is faiss's count of distance computations, for IVF the coarse-quantizer scores plus
the scanned list entries (faiss's own counters), so ``last_scored * dim`` is the multiply-adds the
search spent (for compressed codes such as PQ a code score is cheaper than a dot product). For
other faiss indexes it is the exhaustive-scan bound ``Q * N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch

from dualforge.eval.retrieval.exact import (
    BACKENDS,
    FAISS_HINT,
    METRICS,
    Array,
    _sort_rows,
    exact_search,
    faiss_available,
    prepare,
)
from dualforge.matryoshka import check_dim


class VectorIndex(Protocol):
    """What the searchers need from an index."""

    @property
    def dim(self) -> int:
        """Vector size."""
        ...

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        ...

    @property
    def last_scored(self) -> int:
        """(Query, vector) scores computed by the last ``search``, over all its queries."""
        ...

    def search(self, queries: Array, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(Q, min(k, ntotal))``, best first."""
        ...


def _check_queries(q: torch.Tensor, dim: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if q.shape[1] != dim:
        raise ValueError(f"query dim {q.shape[1]} != index dim {dim}")


class TorchFlatIndex:
    """Exact inner-product / cosine search with torch (no faiss needed).

    Args:
        vectors: ``(N, D)`` document vectors (a torch tensor keeps its device).
        metric: ``"ip"`` or ``"cos"``.
        batch_size: Queries per matmul.

    Raises:
        ValueError: For a bad metric or shape, or ``batch_size < 1``.
    """

    def __init__(self, vectors: Array, metric: str = "ip", batch_size: int = 1024) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.metric = metric
        self.batch_size = batch_size
        self._vectors = prepare(vectors, metric=metric, name="vectors")  # (N, D)
        self.last_scored = 0

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self._vectors.shape[1])

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self._vectors.shape[0])

    def search(self, queries: Array, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of each query.

        Args:
            queries: ``(Q, D)`` query vectors.
            k: Results per query; clipped to :attr:`ntotal`.

        Returns:
            ``(scores, ids)``: ``(Q, min(k, N))`` float32 and int64, best first.

        Raises:
            ValueError: For ``k < 1`` or a dim mismatch.
        """
        q = prepare(queries, metric=self.metric, name="queries")  # (Q, D)
        _check_queries(q, self.dim, k)
        self.last_scored = q.shape[0] * self.ntotal
        return exact_search(
            q, self._vectors, k, metric="ip", backend="torch", batch_size=self.batch_size
        )


class FaissIndex:
    """A built (trained and filled) faiss index with the metric's query preparation.

    Args:
        index: A faiss index of inner-product metric, trained and filled.
        metric: ``"ip"`` or ``"cos"`` (queries are L2-normalised for ``"cos"``).
    """

    def __init__(self, index: Any, metric: str) -> None:
        self.index = index
        self.metric = metric
        self.last_scored = 0

    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    def search(self, queries: Array, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query as the faiss index finds them.

        Args:
            queries: ``(Q, D)`` query vectors.
            k: Results per query; clipped to :attr:`ntotal`.

        Returns:
            ``(scores, ids)``: ``(Q, min(k, N))`` float32 and int64, best first; id ``-1`` and
            score ``-inf`` where an approximate index found fewer documents.

        Raises:
            ValueError: For ``k < 1`` or a dim mismatch.
        """
        q = prepare(queries, metric=self.metric, name="queries")  # (Q, D)
        _check_queries(q, self.dim, k)
        k = min(k, self.ntotal)
        if k == 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], k), np.float32), np.zeros((q.shape[0], k), np.int64)
        q_np = np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)  # (Q, D)
        with _count_work(self.index, q.shape[0]) as work:
            scores, ids = self.index.search(q_np, k)  # (Q, k), (Q, k)
        self.last_scored = work.scored
        scores = np.asarray(scores, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.where(ids < 0, np.float32(-np.inf), scores)  # (Q, k)
        return _sort_rows(scores, ids)


class PrefixRescorer:
    """Exact scores of given candidate documents with a prefix of the vectors (reranking).

    The full ``(N, D)`` vectors are held once; for cosine each prefix's inverse norms are
    computed on first use and cached, so no normalised copy per prefix is stored.

    Args:
        vectors: ``(N, D)`` document vectors (a torch tensor keeps its device).
        metric: ``"ip"`` or ``"cos"`` (query and document prefixes L2-normalised).

    Raises:
        ValueError: For a bad metric or shape.
    """

    def __init__(self, vectors: Array, metric: str = "ip") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}; use one of {METRICS}")
        self.metric = metric
        self._vectors = prepare(vectors, metric="ip", name="vectors")  # (N, D)
        self._inv_norms: dict[int, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        """Full vector size."""
        return int(self._vectors.shape[1])

    @property
    def ntotal(self) -> int:
        """Number of documents."""
        return int(self._vectors.shape[0])

    def _inv_norm(self, dims: int) -> torch.Tensor:
        if dims not in self._inv_norms:
            norms = self._vectors[:, :dims].norm(p=2, dim=1).clamp_min(1e-12)  # (N,)
            self._inv_norms[dims] = norms.reciprocal()
        return self._inv_norms[dims]

    def rescore(self, queries: Array, ids: Array, dims: int) -> torch.Tensor:
        """Scores of each query's candidates with the first ``dims`` dimensions.

        Args:
            queries: ``(Q, D)`` full query vectors (truncated and, for cosine, normalised here).
            ids: ``(Q, S)`` candidate document indices; ``-1`` marks an empty slot.
            dims: Prefix size.

        Returns:
            ``(Q, S)`` float32 scores on the vectors' device, ``-inf`` at empty slots.

        Raises:
            ValueError: For shapes that disagree, a bad ``dims`` or an index out of range.
        """
        q = prepare(queries, metric=self.metric, dims=dims, name="queries")  # (Q, d)
        idx = torch.as_tensor(ids, dtype=torch.int64).to(self._vectors.device)  # (Q, S)
        if idx.ndim != 2 or idx.shape[0] != q.shape[0]:
            raise ValueError(f"ids {tuple(idx.shape)} must be (Q={q.shape[0]}, candidates)")
        check_dim(dims, self.dim)
        if idx.numel() and int(idx.max()) >= self.ntotal:
            raise ValueError(f"document index {int(idx.max())} >= {self.ntotal} documents")
        safe = idx.clamp_min(0)  # (Q, S)
        docs = self._vectors[:, :dims][safe]  # (Q, S, d)
        scores = torch.bmm(docs, q.to(docs.device).unsqueeze(2)).squeeze(2)  # (Q, S)
        if self.metric == "cos":
            scores = scores * self._inv_norm(dims)[safe]  # (Q, S)
        return scores.masked_fill(idx < 0, float("-inf"))


class _Work:
    """Scores computed by one faiss search (filled in when the ``with`` block ends)."""

    scored: int = 0


@contextmanager
def _count_work(index: Any, n_queries: int) -> Iterator[_Work]:
    """Count the (query, vector) scores of the faiss searches run inside the block.

    HNSW and IVF searches are counted with faiss's global statistics (reset on entry, so do not
    search other such indexes concurrently); any other index counts as an exhaustive scan.
    """
    import faiss

    cvar: Any = faiss.cvar  # the bundled stubs do not declare the statistics globals
    ivf = faiss.try_extract_index_ivf(index)
    if hasattr(faiss.downcast_index(index), "hnsw"):
        counter, coarse = cvar.hnsw_stats, 0
    elif ivf is not None:
        counter, coarse = cvar.indexIVF_stats, n_queries * int(ivf.nlist)  # centroid scores
    else:
        counter, coarse = None, 0
    work = _Work()
    if counter is not None:
        counter.reset()
    yield work
    work.scored = n_queries * int(index.ntotal) if counter is None else int(counter.ndis) + coarse


def _faiss_index(vectors: np.ndarray, factory: str, params: str | None) -> Any:
    """Build, train when needed, and fill a faiss inner-product index."""
    import faiss

    n, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"faiss cannot build factory={factory!r}: {err}") from None
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as err:
            raise ValueError(
                f"training factory={factory!r} on {n} vectors failed (an IVF index needs at "
                f"least as many vectors as lists): {err}"
            ) from None
    index.add(vectors)
    if params:
        space: Any = faiss.ParameterSpace()  # the bundled stubs mistype the description
        try:
            space.set_index_parameters(index, params)
        except RuntimeError as err:
            raise ValueError(f"bad faiss search params {params!r}: {err}") from None
    return index


def build_index(
    vectors: Array,
    factory: str = "Flat",
    metric: str = "ip",
    *,
    backend: str = "auto",
    params: str | None = None,
) -> VectorIndex:
    """An index over ``vectors`` searched by inner product (or cosine).

    Args:
        vectors: ``(N, D)`` document vectors.
        factory: faiss factory string: ``"Flat"`` (exact), ``"IVF256,Flat"``, ``"HNSW32"``, ...
            Indexes that need training are trained on ``vectors``.
        metric: ``"ip"`` or ``"cos"`` (vectors and queries L2-normalised).
        backend: ``"faiss"``, ``"torch"`` (exact, ``factory`` must be ``"Flat"``) or ``"auto"``
            (faiss when importable, else torch).
        params: faiss search-time parameters, e.g. ``"nprobe=16"`` or ``"efSearch=128"``.

    Returns:
        A :class:`FaissIndex` or a :class:`TorchFlatIndex`.

    Raises:
        ValueError: For a bad metric, backend, shape or factory, no vectors, or a
            non-``"Flat"`` factory with ``backend="torch"``.
        ImportError: When faiss is needed (``backend="faiss"``, or a non-``"Flat"`` factory)
            and not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; use one of {BACKENDS}")
    prepared = prepare(vectors, metric=metric, name="vectors")  # (N, D)
    if prepared.shape[0] == 0:
        raise ValueError("cannot build an index over 0 vectors")
    has_faiss = faiss_available()
    if backend == "torch" or (backend == "auto" and not has_faiss):
        if factory != "Flat":
            if backend == "torch":
                raise ValueError(f"backend='torch' only does exact search: factory={factory!r}")
            raise ImportError(f"factory={factory!r} needs faiss: {FAISS_HINT}")
        return TorchFlatIndex(prepared, metric)
    if not has_faiss:
        raise ImportError(f"backend='faiss' needs faiss: {FAISS_HINT}")
    x = np.ascontiguousarray(prepared.cpu().numpy(), dtype=np.float32)  # (N, D)
    return FaissIndex(_faiss_index(x, factory, params), metric)
