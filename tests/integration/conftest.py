"""The real-model tests run on every core torch would use by default.

Training runs with ``run.threads=1`` (the tiny-model tests' setting) leave torch at one thread
(``train`` does not restore it), so without this fixture the full-corpus SciFact encoding ran
on one core of two whenever ``tests/cli`` or ``tests/train`` had run first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# Read while conftest files are imported, before any test has changed it (honours OMP_NUM_THREADS).
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True, scope="package")
def _default_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(before)
