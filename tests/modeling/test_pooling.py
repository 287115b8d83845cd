"""Pooling functions against explicit per-row loops."""

from __future__ import annotations

import pytest
import torch

from dualforge.modeling import cls_pool, get_pooler, last_token_pool, mean_pool


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = mean_pool(hidden, mask)
    assert torch.allclose(out[0], hidden[0, :2].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))


def test_last_token_with_right_and_left_padding() -> None:
    hidden = torch.randn(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(last_token_pool(hidden, right)[0], hidden[0, 1])
    assert torch.equal(last_token_pool(hidden, left)[0], hidden[0, 3])
    assert torch.equal(cls_pool(hidden, right), hidden[:, 0])


def test_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="unknown pooling"):
        get_pooler("max")
