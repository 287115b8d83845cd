"""Fixtures shared by the tests of :mod:`dualforge.eval.retrieval`."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """300 documents in 6 clusters, 20 queries near them, 32 dims, unnormalised."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 32)) * 3.0  # (C, D)
    docs = centers[rng.integers(0, 6, 300)] + rng.normal(size=(300, 32))  # (N, D)
    queries = centers[rng.integers(0, 6, 20)] + rng.normal(size=(20, 32)) * 1.5  # (Q, D)
    return queries.astype(np.float32), docs.astype(np.float32)
