"""Exact nearest-neighbour search by inner product or cosine: faiss ``IndexFlatIP`` or torch.

Results follow faiss: ``(scores, ids)``, each ``(Q, k)``, best first. Rows are sorted by score
descending and equal scores by document index ascending, whatever the backend. Which of several
documents tied at the k-th score makes the cut depends on the backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dualforge.matryoshka import prefix

Array = np.ndarray | torch.Tensor
METRICS = ("ip", "cos")
BACKENDS = ("auto", "faiss", "torch")
FAISS_HINT = "pip install 'dualforge[faiss]'"


def faiss_available() -> bool:
    """Whether faiss can be imported.

    Returns:
        True when ``import faiss`` succeeds.
    """
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _as_tensor(x: Array, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x, dtype=np.float32)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (rows, dim) array, got shape {tuple(t.shape)}")
    return t.to(dtype=torch.float32)


def prepare(
    x: Array, *, metric: str = "ip", dims: int | None = None, name: str = "vectors"
) -> torch.Tensor:
    """Float32 vectors ready for inner-product search.

    Args:
        x: ``(N, D)`` vectors (numpy or torch; torch keeps its device).
        metric: ``"ip"`` keeps the vectors, ``"cos"`` L2-normalises them (after truncation).
        dims: Keep only the first ``dims`` dimensions (Matryoshka prefix).
        name: What ``x`` holds, for error messages.

    Returns:
        ``(N, dims or D)`` float32 tensor.

    Raises:
        ValueError: For a bad metric, shape or ``dims``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; use one of {METRICS}")
    t = _as_tensor(x, name)  # (N, D)
    t = prefix(t, t.shape[1] if dims is None else dims, renormalize=metric == "cos")  # (N, dims)
    return t.contiguous()


def _faiss_search(q: torch.Tensor, d: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(f"backend='faiss' needs faiss: {FAISS_HINT}") from err
    q_np = np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)  # (Q, D)
    d_np = np.ascontiguousarray(d.cpu().numpy(), dtype=np.float32)  # (N, D)
    index = faiss.IndexFlatIP(d_np.shape[1])
    index.add(d_np)
    scores, ids = index.search(q_np, k)  # (Q, k), (Q, k)
    return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)


def _torch_search(
    q: torch.Tensor, d: torch.Tensor, k: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    d = d.to(q.device)  # (N, D)
    scores, ids = [], []
    with torch.inference_mode():
        for start in range(0, q.shape[0], batch_size):
            sims = q[start : start + batch_size] @ d.T  # (b, N)
            top = torch.topk(sims, k, dim=1, largest=True, sorted=True)  # (b, k)
            scores.append(top.values.cpu().numpy())
            ids.append(top.indices.cpu().numpy())
    return np.concatenate(scores).astype(np.float32), np.concatenate(ids).astype(np.int64)


def _sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, then index ascending (faiss' -1 padding last)."""
    padded = np.where(ids < 0, np.iinfo(np.int64).max, ids)  # (Q, k)
    order = np.lexsort((padded, -scores), axis=-1)  # (Q, k)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _use_faiss(backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; use one of {BACKENDS}")
    if backend == "faiss" and not faiss_available():
        raise ImportError(f"backend='faiss' needs faiss: {FAISS_HINT}")
    return backend == "faiss" or (backend == "auto" and faiss_available())


def exact_search(
    queries: Array,
    docs: Array,
    k: int,
    *,
    metric: str = "ip",
    backend: str = "auto",
    dims: int | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` documents of each query.

    Args:
        queries: ``(Q, D)`` query vectors.
        docs: ``(N, D)`` document vectors.
        k: Results per query; clipped to ``N``.
        metric: ``"ip"`` (inner product) or ``"cos"`` (cosine: both sides L2-normalised).
        backend: ``"faiss"`` (``IndexFlatIP``), ``"torch"`` (batched matmul and top-k, on the
            queries' device when they are a tensor) or ``"auto"`` (faiss when importable).
        dims: Search with the first ``dims`` dimensions only (Matryoshka prefix),
            renormalised for cosine.
        batch_size: Queries per matmul with the torch backend.

    Returns:
        ``(scores, ids)``: ``(Q, min(k, N))`` float32 scores and int64 document indices, best
        first.

    Raises:
        ValueError: For bad shapes, ``k < 1``, ``batch_size < 1``, metric, backend or ``dims``.
        ImportError: If ``backend="faiss"`` and faiss is not installed.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    use_faiss = _use_faiss(backend)
    q = prepare(queries, metric=metric, dims=dims, name="queries")  # (Q, D')
    d = prepare(docs, metric=metric, dims=dims, name="docs")  # (N, D')
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != document dim {d.shape[1]}")
    k = min(k, d.shape[0])
    if k == 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], k), np.float32), np.zeros((q.shape[0], k), np.int64)
    found = _faiss_search(q, d, k) if use_faiss else _torch_search(q, d, k, batch_size)
    return _sort_rows(*found)


def run_from_search(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, ids: np.ndarray
) -> dict[str, dict[str, float]]:
    """Turn search results into a ``{query_id: {doc_id: score}}`` run.

    Args:
        query_ids: Id of each query row, ``len == Q``.
        doc_ids: Id of each document index, ``len == N``.
        scores: ``(Q, k)`` scores.
        ids: ``(Q, k)`` document indices; negative indices (faiss padding) are skipped.

    Returns:
        The run.

    Raises:
        ValueError: If the shapes disagree or an index is out of range.
    """
    scores, ids = np.asarray(scores), np.asarray(ids)
    if scores.ndim != 2 or scores.shape != ids.shape or scores.shape[0] != len(query_ids):
        raise ValueError(
            f"scores {scores.shape} and ids {ids.shape} must both be (len(query_ids)="
            f"{len(query_ids)}, k)"
        )
    if ids.size and ids.max() >= len(doc_ids):
        raise ValueError(f"document index {int(ids.max())} >= len(doc_ids)={len(doc_ids)}")
    return {
        qid: {doc_ids[j]: float(s) for s, j in zip(row_s.tolist(), row_i.tolist()) if j >= 0}
        for qid, row_s, row_i in zip(query_ids, scores, ids)
    }
