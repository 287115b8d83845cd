"""Test helpers: clustered data on the sphere, exact softmax oracles and goodness-of-fit tests."""

from __future__ import annotations

import numpy as np
import torch

from dualforge.mining import TreeIndex


def clustered(n: int, d: int, clusters: int = 20, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 unit vectors: a mixture of Gaussians around random unit centres."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(clusters, d))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    x = mu[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def near(x: np.ndarray, q: int, noise: float = 0.2, seed: int = 1) -> np.ndarray:
    """``(q, d)`` unit queries near random rows of ``x``."""
    rng = np.random.default_rng(seed)
    y = x[rng.integers(0, len(x), q)] + noise * rng.normal(size=(q, x.shape[1])) / np.sqrt(
        x.shape[1]
    )
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def softmax(
    q: np.ndarray, x: np.ndarray, tau: float, exclude: list[list[int]] | None = None
) -> np.ndarray:
    """``(Q, N)`` float64 exact softmax of ``q·x / tau``, excluded ids at 0."""
    logits = (q.astype(np.float64) @ x.astype(np.float64).T) / tau  # (Q, N)
    for i, row in enumerate(exclude or []):
        logits[i, row] = -np.inf
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def chi_square_p(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson chi-square p-value of ``counts`` against ``p`` (cells with expected count < 5 are
    pooled; an observation in a zero-probability cell gives 0)."""
    n = counts.sum()
    if np.any(counts[p == 0] > 0):
        return 0.0
    expected = p * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    if dof < 1:
        return 1.0
    return float(
        torch.special.gammaincc(
            torch.tensor(dof / 2.0, dtype=torch.float64),
            torch.tensor(stat / 2.0, dtype=torch.float64),
        )
    )


def tv_bound(p: np.ndarray, n: int) -> float:
    """A generous upper bound on the total-variation distance of ``n`` exact draws from ``p``:
    its mean is at most ``sum(sqrt(p)) / (2 sqrt(n))``, and it moves by at most ``1/n`` per draw."""
    return float(np.sqrt(p).sum() / (2.0 * np.sqrt(n)) + 5.0 / np.sqrt(n))


def check_sampler(
    index: TreeIndex, x: np.ndarray, q: np.ndarray, tau: float, n: int, seed: int = 0, **kw: object
) -> None:
    """Draw ``n`` samples per query and assert they fit the exact softmax over ``x``."""
    exclude = kw.get("exclude")
    scores, ids, stats = index.sample(q, n, temperature=tau, seed=seed, **kw)  # type: ignore[arg-type]
    assert ids.shape == scores.shape == (len(q), n)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), atol=1e-5)
    p = softmax(q, x, tau, exclude)  # type: ignore[arg-type]
    for i in range(len(q)):
        counts = np.bincount(ids[i], minlength=len(x))
        assert chi_square_p(counts, p[i]) > 1e-4, f"query {i}: draws do not fit the softmax"
        tv = 0.5 * np.abs(counts / n - p[i]).sum()
        assert tv < tv_bound(p[i], n), f"query {i}: total variation {tv:.4f}"
    assert stats.accepted >= len(q) * n and stats.proposals >= stats.accepted
