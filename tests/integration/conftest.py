"""Torch threads for the real-model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture()
def default_threads(torch_default_threads: int) -> Iterator[int]:
    """Torch's starting thread count (OMP_NUM_THREADS) for one test, then the suite's one again.

    Only for work made of large matmuls, such as encoding the SciFact corpus (8192 x 384 x 1536
    per layer), where two threads beat one even on a busy 2-core machine (855 s against 1297 s
    for the zero-shot test, run side by side). Small chunks (check-grad, the short training run:
    at most 512 rows) stay on one thread: there, on a busy machine, two threads were 2-5x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(torch_default_threads)
    yield torch_default_threads
    torch.set_num_threads(before)
