"""Helpers of the :mod:`dualforge.eval.retrieval` tests: a numpy search oracle, the paper's funnel."""

from __future__ import annotations

import numpy as np
import pytest

each_metric = pytest.mark.parametrize("metric", ["ip", "cos"])
"""Run a test with inner-product and with cosine search."""

each_backend = pytest.mark.parametrize("backend", ["faiss", "torch"])
"""Run a test with the faiss and the torch backend."""

PAPER = "32:200,64:100,128:50,256:25,384:10"
"""The funnel of Kusupati et al. (2022) for 384-dim embeddings."""


def brute_force(
    q: np.ndarray, d: np.ndarray, k: int, metric: str, dims: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` in float64: ``(scores, ids)``, ties by index ascending."""
    q, d = q.astype(np.float64)[:, :dims], d.astype(np.float64)[:, :dims]
    if metric == "cos":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
    sims = q @ d.T  # (Q, N)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(sims, ids, 1), ids
