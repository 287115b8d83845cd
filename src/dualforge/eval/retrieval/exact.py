"""Exact nearest-neighbour search by inner product or cosine: faiss ``IndexFlatIP`` or torch top-k.

Results follow faiss: ``(scores, ids)``, each ``(Q, k)``, best first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Array = np.ndarray | torch.Tensor
BACKENDS = ("auto", "faiss", "torch")


def _as_numpy(x: Array) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def prepare(x: Array, dims: int | None, metric: str) -> np.ndarray:
    """``(N, dims)`` float32 prefix of ``x``, L2-normalised for ``metric="cos"``."""
    if metric not in ("ip", "cos"):
        raise ValueError(f"metric={metric!r}; use 'ip' or 'cos'")
    arr = _as_numpy(x)
    if dims is not None:
        if not 0 < dims <= arr.shape[1]:
            raise ValueError(f"dims={dims} outside 1..{arr.shape[1]}")
        arr = np.ascontiguousarray(arr[:, :dims])
    if metric == "cos":
        arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return arr


def faiss_available() -> bool:
    """True when faiss imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_search(q: np.ndarray, d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend='faiss' needs faiss: pip install 'dualforge[faiss]'") from err
    index = faiss.IndexFlatIP(d.shape[1])
    index.add(d)
    scores, ids = index.search(q, k)
    return scores.astype(np.float32), ids.astype(np.int64)


def _torch_search(q: np.ndarray, d: np.ndarray, k: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    docs = torch.from_numpy(d)  # (N, D)
    scores, ids = [], []
    for start in range(0, q.shape[0], batch_size):
        sims = torch.from_numpy(q[start : start + batch_size]) @ docs.T  # (b, N)
        top = torch.topk(sims, k, dim=1)
        scores.append(top.values.numpy())
        ids.append(top.indices.numpy())
    return np.concatenate(scores).astype(np.float32), np.concatenate(ids).astype(np.int64)


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
    """Top-``k`` documents per query.

    Args:
        queries: ``(Q, D)`` query vectors.
        docs: ``(N, D)`` document vectors.
        k: Results per query (clipped to N).
        metric: ``"ip"`` inner product or ``"cos"`` cosine.
        backend: ``"faiss"`` (IndexFlatIP), ``"torch"`` (batched top-k) or ``"auto"``.
        dims: Search with only the first ``dims`` dimensions (Matryoshka prefix).
        batch_size: Queries per torch matmul.

    Returns:
        ``(scores, ids)``: ``(Q, k')`` float32 and int64, best first, ``k' = min(k, N)``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; use one of {BACKENDS}")
    q, d = prepare(queries, dims, metric), prepare(docs, dims, metric)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != document dim {d.shape[1]}")
    k = min(k, d.shape[0])
    if k < 1 or q.shape[0] == 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    use_faiss = backend == "faiss" or (backend == "auto" and faiss_available())
    return _faiss_search(q, d, k) if use_faiss else _torch_search(q, d, k, batch_size)


def run_from_search(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, ids: np.ndarray
) -> dict[str, dict[str, float]]:
    """A ``{query_id: {doc_id: score}}`` run from search results (faiss' -1 ids skipped)."""
    return {
        qid: {doc_ids[j]: float(s) for s, j in zip(scores[i], ids[i]) if j >= 0}
        for i, qid in enumerate(query_ids)
    }
