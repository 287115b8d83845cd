"""Nyström drift correction: carry stale target embeddings into the current encoder's space.

During training the target encoder drifts, and re-encoding all ``N`` targets after every few
steps is what makes dynamic indexes expensive. Re-encode only ``m << N`` landmarks instead, and
estimate every other target's fresh embedding by kernel regression from the stale space::

    Y_hat = K(X, X_L) (K(X_L, X_L) + λ I)^+ Y_L

with ``X`` the stale embeddings, ``X_L`` the landmarks' stale rows and ``Y_L`` their fresh ones
(rank-truncated pseudo-inverse, ridge ``λ = ridge · trace(K_LL) / m``). For the linear kernel
``K(a, b) = a·b`` this is the ridge-regularised linear map ``Y_hat = X A``,
``A = V diag(s / (s² + λ)) U^T Y_L`` from the thin SVD ``X_L = U diag(s) V^T`` (cost
``O(m d²)`` to fit, ``O(N d d')`` to apply). The ``"rbf"`` and ``"poly"`` kernels cost
``O(m³)`` to fit and ``O(N m d)`` to apply: use a few thousand landmarks at most. The map is
applied in chunks of rows, so memory stays at the output plus one chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from dualforge.mining._arrays import Array, as_matrix

NystromKernel = Literal["linear", "rbf", "poly"]
KERNELS: tuple[str, ...] = get_args(NystromKernel)
METHODS = ("uniform", "kmeans")
Tensor = torch.Tensor


@dataclass(frozen=True)
class NystromMap:
    """A fitted stale-to-current map.

    Attributes:
        kernel: ``"linear"``, ``"rbf"`` or ``"poly"``.
        weights: ``(d, d')`` float64 matrix ``A`` (linear) or ``(m, d')`` ``K_LL^+ Y_L``.
        landmarks: ``(m, d)`` float64 stale landmark vectors (unused by the linear kernel).
        gamma: RBF width: ``exp(-gamma ||a - b||²)``.
        degree: Polynomial degree: ``(a·b + coef0) ** degree``.
        coef0: Polynomial offset.
        rank: Singular / eigen-values kept by the pseudo-inverse.
    """

    kernel: str
    weights: Tensor
    landmarks: Tensor
    gamma: float
    degree: int
    coef0: float
    rank: int

    def kernel_matrix(self, x: Tensor) -> Tensor:
        """``K(x, X_L)``: ``(n, m)`` float64 for ``(n, d)`` rows."""
        return _kernel(x.double(), self.landmarks, self.kernel, self.gamma, self.degree, self.coef0)

    def apply(self, stale: Array, *, chunk_size: int = 65536) -> np.ndarray:
        """Map stale embeddings into the current space.

        Args:
            stale: ``(N, d)`` stale embeddings.
            chunk_size: Rows per chunk.

        Returns:
            ``(N, d')`` float32 estimates.

        Raises:
            ValueError: For a wrong dimension or ``chunk_size < 1``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        dim = self.landmarks.shape[1] if self.kernel != "linear" else self.weights.shape[0]
        x = as_matrix(stale, "stale embeddings", dim)
        out = np.empty((x.shape[0], self.weights.shape[1]), dtype=np.float32)
        for lo in range(0, x.shape[0], chunk_size):
            rows = x[lo : lo + chunk_size]  # (c, d)
            if self.kernel == "linear":
                out[lo : lo + chunk_size] = (rows @ self.weights.float()).numpy()
            else:
                out[lo : lo + chunk_size] = (self.kernel_matrix(rows) @ self.weights).numpy()
        return out


def _kernel(a: Tensor, b: Tensor, kernel: str, gamma: float, degree: int, coef0: float) -> Tensor:
    """Kernel matrix ``(len(a), len(b))`` in float64."""
    dots = a @ b.T
    if kernel == "linear":
        return dots
    if kernel == "poly":
        return (dots + coef0) ** degree
    sq = (a * a).sum(1, keepdim=True) - 2.0 * dots + (b * b).sum(1).unsqueeze(0)
    return torch.exp(-gamma * sq.clamp(min=0.0))


def _keep(values: Tensor, rcond: float, rank: int | None) -> Tensor:
    """Mask of the values above ``rcond * max`` (and among the ``rank`` largest), descending."""
    keep = values > rcond * values.max().clamp(min=1e-300)
    if rank is not None:
        keep &= torch.arange(len(values)) < rank
    return keep


def fit_nystrom(
    stale_landmarks: Array,
    fresh_landmarks: Array,
    *,
    kernel: str = "linear",
    ridge: float = 1e-3,
    rank: int | None = None,
    rcond: float = 1e-6,
    gamma: float | None = None,
    degree: int = 2,
    coef0: float = 1.0,
) -> NystromMap:
    """Fit the map from the landmarks' stale and fresh embeddings.

    Args:
        stale_landmarks: ``(m, d)`` the landmarks' stale embeddings ``X_L``.
        fresh_landmarks: ``(m, d')`` their fresh embeddings ``Y_L``.
        kernel: ``"linear"``, ``"rbf"`` or ``"poly"``.
        ridge: ``λ`` relative to the mean eigenvalue of ``K(X_L, X_L)`` (>= 0).
        rank: Keep at most this many singular / eigen-values (None: all above ``rcond``).
        rcond: Drop values below ``rcond`` times the largest (relative to ``s²`` for linear).
        gamma: RBF width; default ``1 / (d · var(X_L))``.
        degree: Polynomial degree (>= 1).
        coef0: Polynomial offset.

    Returns:
        The fitted map.

    Raises:
        ValueError: For bad shapes, kernel or parameters.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}; use one of {KERNELS}")
    if ridge < 0 or rcond < 0 or degree < 1 or (rank is not None and rank < 1):
        raise ValueError(f"need ridge, rcond >= 0, degree >= 1, rank >= 1 or None; got {ridge}, "
                         f"{rcond}, {degree}, {rank}")  # fmt: skip
    x = as_matrix(stale_landmarks, "stale landmarks").double()  # (m, d)
    y = as_matrix(fresh_landmarks, "fresh landmarks").double()  # (m, d')
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need as many (>= 1) stale as fresh landmarks, got {x.shape[0]} and "
                         f"{y.shape[0]}")  # fmt: skip
    if gamma is None:
        gamma = 1.0 / max(1e-12, x.shape[1] * float(x.var()))
    if kernel == "linear":
        weights, kept = _fit_linear(x, y, ridge, rank, rcond)
    else:
        gram = _kernel(x, x, kernel, gamma, degree, coef0)  # (m, m)
        weights, kept = _fit_kernel(gram, y, ridge, rank, rcond)
    return NystromMap(kernel, weights, x, float(gamma), degree, coef0, kept)


def _fit_linear(
    x: Tensor, y: Tensor, ridge: float, rank: int | None, rcond: float
) -> tuple[Tensor, int]:
    """``A = X_L^T (X_L X_L^T + λ I)^+ Y_L`` through the thin SVD of ``X_L``: ``(d, d')``."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # (m, r), (r,), (r, d)
    keep = _keep(s * s, rcond, rank)
    lam = ridge * float((s * s).sum()) / x.shape[0]
    scale = s[keep] / (s[keep] ** 2 + lam)  # (k,)
    return vh[keep].T @ (scale.unsqueeze(1) * (u[:, keep].T @ y)), int(keep.sum())


def _fit_kernel(
    gram: Tensor, y: Tensor, ridge: float, rank: int | None, rcond: float
) -> tuple[Tensor, int]:
    """``(K_LL + λ I)^+ Y_L`` through the eigendecomposition of ``K_LL``: ``(m, d')``."""
    w, v = torch.linalg.eigh(gram)  # ascending
    w, v = w.flip(0), v.flip(1)
    keep = _keep(w, rcond, rank)
    lam = ridge * float(torch.diagonal(gram).sum()) / gram.shape[0]
    return v[:, keep] @ ((v[:, keep].T @ y) / (w[keep] + lam).unsqueeze(1)), int(keep.sum())


def correct_drift(
    stale: Array,
    landmark_ids: Array,
    fresh_landmarks: Array,
    *,
    chunk_size: int = 65536,
    residual: bool = False,
    **fit_kwargs: float | int | str | None,
) -> np.ndarray:
    """Estimate every target's fresh embedding from re-encoded landmarks.

    Args:
        stale: ``(N, d)`` stale embeddings of all targets.
        landmark_ids: ``(m,)`` rows of ``stale`` that were re-encoded.
        fresh_landmarks: ``(m, d')`` their fresh embeddings, in the same order.
        chunk_size: Rows per chunk when applying the map.
        residual: Fit the map to the drift ``Y_L - X_L`` and add it to ``X`` (needs
            ``d' = d``): ``Ŷ = X + K(X, X_L)(K_LL + λI)^+ (Y_L - X_L)``. The plain map sends
            every target into the span of the fitted directions, which loses the components
            outside it when ``m < d`` (linear kernel); the residual map leaves them stale.
        **fit_kwargs: Passed to ``fit_nystrom`` (kernel, ridge, rank, ...).

    Returns:
        ``(N, d')`` float32 estimates (landmark rows included, estimated like the others).

    Raises:
        ValueError: For bad shapes or out-of-range landmark ids.
    """
    x = as_matrix(stale, "stale embeddings")
    ids = torch.as_tensor(np.asarray(landmark_ids), dtype=torch.int64).view(-1)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= x.shape[0]):
        raise ValueError(f"landmark ids must be in 0..{x.shape[0] - 1}")
    target = as_matrix(fresh_landmarks, "fresh landmarks")
    if residual:
        if target.shape != x[ids].shape:
            raise ValueError(f"residual needs fresh landmarks of shape {tuple(x[ids].shape)}")
        target = target - x[ids]
    fitted = fit_nystrom(x[ids], target, **fit_kwargs)  # type: ignore[arg-type]
    out = fitted.apply(x, chunk_size=chunk_size)
    if residual:
        out += x.numpy()
    return out


def drift_error(estimate: Array, truth: Array, *, chunk_size: int = 65536) -> float:
    """Mean relative L2 error ``mean_i ||estimate_i - truth_i|| / ||truth_i||``.

    Args:
        estimate: ``(N, d)`` estimated embeddings.
        truth: ``(N, d)`` true embeddings (no zero rows).
        chunk_size: Rows per chunk.

    Returns:
        The mean relative error.

    Raises:
        ValueError: For mismatched shapes, an empty input or a zero row in ``truth``.
    """
    est, ref = as_matrix(estimate, "estimates"), as_matrix(truth, "true embeddings")
    if est.shape != ref.shape or est.shape[0] == 0:
        raise ValueError(f"estimate {tuple(est.shape)} and truth {tuple(ref.shape)} must match")
    total = 0.0
    for lo in range(0, est.shape[0], chunk_size):
        e, t = est[lo : lo + chunk_size].double(), ref[lo : lo + chunk_size].double()
        norm = torch.linalg.vector_norm(t, dim=1)
        if bool((norm == 0).any()):
            raise ValueError("truth has an all-zero row; relative error is undefined")
        total += float((torch.linalg.vector_norm(e - t, dim=1) / norm).sum())
    return total / est.shape[0]


def choose_landmarks(
    vectors: Array | int, m: int, *, method: str = "uniform", seed: int = 0, iters: int = 5
) -> np.ndarray:
    """Pick ``m`` distinct landmark rows.

    Args:
        vectors: ``(N, d)`` stale embeddings, or just ``N`` for ``method="uniform"``.
        m: Landmarks wanted (1..N).
        method: ``"uniform"`` (a seeded uniform sample) or ``"kmeans"`` (the rows nearest to
            the centres of a seeded k-means with ``m`` centres, trained on a sample of
            ``min(N, 32 m)`` rows; duplicates are topped up uniformly).
        seed: Random seed.
        iters: k-means iterations.

    Returns:
        ``(m,)`` int64 sorted row ids.

    Raises:
        ValueError: For a bad ``m`` or method, or ``"kmeans"`` without vectors.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    n = vectors if isinstance(vectors, int) else int(np.shape(vectors)[0])
    if not 1 <= m <= n:
        raise ValueError(f"m={m} must be in 1..{n}")
    gen = torch.Generator().manual_seed(seed)
    if method == "uniform":
        return np.sort(torch.randperm(n, generator=gen)[:m].numpy())
    if isinstance(vectors, int):
        raise ValueError("method='kmeans' needs the vectors, not just their number")
    x = as_matrix(vectors, "vectors")
    chosen = _kmeans_nearest(x, m, iters, gen)
    if len(chosen) < m:  # several centres shared a nearest row
        rest = torch.randperm(n, generator=gen)
        rest = rest[~torch.isin(rest, chosen)][: m - len(chosen)]
        chosen = torch.cat([chosen, rest])
    return np.sort(chosen.numpy())


def _kmeans_nearest(x: Tensor, m: int, iters: int, gen: torch.Generator) -> Tensor:
    """Unique ids of the rows nearest to the centres of a k-means on a row sample."""
    sample = torch.randperm(x.shape[0], generator=gen)[: min(x.shape[0], 32 * m)]
    pts = x[sample]  # (S, d)
    centres = pts[:m].clone()  # (m, d)
    step = max(1, (1 << 22) // m)
    for _ in range(max(0, iters) + 1):
        half_sq = 0.5 * (centres * centres).sum(1)  # (m,)
        labels = torch.cat([
            (pts[lo : lo + step] @ centres.T - half_sq).argmax(1)
            for lo in range(0, len(pts), step)
        ])  # fmt: skip
        sums = torch.zeros_like(centres).index_add_(0, labels, pts)
        sizes = torch.bincount(labels, minlength=m).unsqueeze(1)
        centres = torch.where(sizes > 0, sums / sizes.clamp(min=1), centres)
    best = torch.full((m,), -math.inf)
    arg = torch.zeros(m, dtype=torch.int64)
    for lo in range(0, len(pts), step):  # nearest sample row to each centre
        d = -(torch.cdist(centres, pts[lo : lo + step]) ** 2)  # (m, s)
        val, idx = d.max(1)
        better = val > best
        best, arg = torch.where(better, val, best), torch.where(better, idx + lo, arg)
    ids: Tensor = torch.unique(sample[arg])
    return ids
