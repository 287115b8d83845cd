"""The shared Matryoshka helpers: one default, one check, one prefix for every caller."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge import classify, losses
from dualforge.classify import FitConfig, HeadTrainConfig, LabelledSet, fit_classifier
from dualforge.eval.retrieval import exact_search, prepare
from dualforge.matryoshka import (
    SMALLEST_DIM,
    check_dim,
    check_dims,
    distinct_dims,
    nesting_dims,
    prefix,
)


def test_one_default_for_losses_and_classify() -> None:
    assert SMALLEST_DIM == 32
    assert nesting_dims(384) == (32, 64, 128, 256, 384)
    assert nesting_dims(768) == (32, 64, 128, 256, 512, 768)
    assert nesting_dims(32) == (32,) and nesting_dims(20) == (20,)
    assert nesting_dims(48, smallest=16) == (16, 32, 48)
    for full in (16, 64, 100, 384, 1024):
        assert losses.default_dims(full) == classify.nesting_dims(full) == nesting_dims(full)
    with pytest.raises(ValueError, match="positive"):
        nesting_dims(64, smallest=0)


def test_classify_without_dims_uses_the_shared_default() -> None:
    """A behaviour change: ``fit_classifier`` (and ``classify train`` without ``--dims``) used
    powers of two from 8; it now uses :func:`nesting_dims`, from 32."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    emb = torch.randn(2, 64, generator=g)[y] + 0.1 * torch.randn(40, 64, generator=g)  # (40, 64)
    data = LabelledSet("x.jsonl", tuple(f"t{i}" for i in range(40)), tuple(map(str, y.tolist())),
                       tuple(range(1, 41)))  # fmt: skip
    cfg = FitConfig(tolerances=(0.0,), train=HeadTrainConfig(epochs=1, batch_size=None))
    fitted = fit_classifier(emb, data, cfg, show_progress=False)
    assert fitted.heads.dims == (32, 64)


@pytest.mark.parametrize(
    ("dims", "weights", "full", "match"),
    [
        ((), None, None, "at least one dim"),
        ((0, 8), None, None, "positive and strictly increasing"),
        ((16, 8), None, None, "strictly increasing"),
        ((8, 8), None, None, "strictly increasing"),
        ((8, 16), (1.0,), None, "1 Matryoshka weights for 2 dims"),
        ((8, 16), (1.0, -1.0), None, ">= 0"),
        ((8, 128), None, 64, r"dims=128 is outside 1\.\.64"),
    ],
)
def test_check_dims_rejects(
    dims: tuple[int, ...], weights: tuple[float, ...] | None, full: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        check_dims(dims, weights, full=full)


def test_check_dims_and_distinct_dims_accept() -> None:
    assert check_dims([np.int64(8), 16], (1.0, 0.0), full=16) == (8, 16)
    assert distinct_dims([64, 8, 64, 16], 64) == [8, 16, 64]
    assert distinct_dims(None, 8) == [] and distinct_dims((), 8) == []
    assert check_dim(np.int64(3), 3) == 3
    for bad in (0, 65):
        with pytest.raises(ValueError, match=r"outside 1\.\.64 \(the embedding size\)"):
            distinct_dims([8, bad], 64)


@pytest.mark.parametrize("renormalize", [False, True])
def test_prefix_against_numpy(renormalize: bool) -> None:
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = x.numpy()[:, :4]
    if renormalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(prefix(x, 4, renormalize).numpy(), want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"outside 1\.\.12"):
        prefix(x, 13, renormalize)


def test_search_and_loss_take_the_same_prefix() -> None:
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(prepare(x, metric="cos", dims=8), prefix(x, 8, True))
    torch.testing.assert_close(prepare(x, metric="ip", dims=8), prefix(x, 8, False))
    scores, _ = exact_search(x, x, 1, metric="cos", dims=8, backend="torch")  # (6, 1)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)  # each prefix finds itself
