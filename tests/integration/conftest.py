"""The real-model tests run on every thread torch would use by default (OMP_NUM_THREADS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _default_threads(torch_default_threads: int) -> Iterator[None]:
    """MiniLM's matmuls (e.g. 8192 x 384 x 1536 when encoding SciFact) do use them; per test, so
    a tiny run's ``run.threads=1`` that ``train`` leaves set cannot leak into the next test."""
    before = torch.get_num_threads()
    torch.set_num_threads(torch_default_threads)
    yield
    torch.set_num_threads(before)
