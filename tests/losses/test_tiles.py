"""The tile machinery: tile sizes within the budget, and the online log-sum-exp's edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from dualforge.losses import PositiveCodes, info_nce, tile_sizes
from dualforge.losses.tiles import BUDGET, GPU_BUDGET, default_budget
from tests.losses.oracles import dense_nce


@pytest.mark.parametrize(
    ("rows", "cols", "cost", "budget"),
    [(128, 128, 6, BUDGET), (65_536, 131_072, 14, BUDGET), (3, 10**7, 6, 2**20),
     (10**7, 5, 6, 2**20), (7, 9, 10, 1), (1, 1, 1, 1)],
)  # fmt: skip
def test_tiles_fit_the_budget_and_cover_the_matrix(
    rows: int, cols: int, cost: int, budget: int
) -> None:
    r, c = tile_sizes(rows, cols, cost, budget)
    assert 1 <= r <= rows and 1 <= c <= cols
    assert r * c * cost <= budget or r * c == 1  # one score is the least a tile holds
    if rows * cols * cost <= budget:
        assert (r, c) == (rows, cols)  # small batches: one tile, the dense computation


def test_large_tiles_are_near_square() -> None:
    r, c = tile_sizes(65_536, 131_072, 14, BUDGET)
    assert 0.5 <= r / c <= 2 and r * c * 14 > BUDGET // 2


def test_the_automatic_budget_depends_on_the_device() -> None:
    assert default_budget(torch.device("cpu")) == BUDGET
    assert default_budget(torch.device("cuda", 0)) == GPU_BUDGET
    with pytest.raises(ValueError, match="budget"):
        tile_sizes(3, 3, 1, 0)


def test_a_tile_where_every_column_of_a_row_is_masked() -> None:
    """Row 0's first column tiles are all masked (running max -inf): the sum must stay 0, not
    become NaN, and the later tile with its target gives the exact loss."""
    b, dim = 6, 4
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, dim, generator=g, dtype=torch.float64, requires_grad=True)
    d = torch.randn(b, dim, generator=g, dtype=torch.float64, requires_grad=True)
    ids = [f"d{i}" for i in range(b)]
    codes = PositiveCodes.from_ids(ids, [ids, *([i] for i in ids[1:])])  # row 0 masks all
    got = info_nce(q, d, positives=codes, budget=6)  # one score per tile
    want = dense_nce(q, d, mask=codes.dense())
    assert math.isfinite(float(got)) and abs(float(got) - float(want)) <= 1e-12
    ga = torch.autograd.grad(got, [q, d])
    gb = torch.autograd.grad(want, [q, d])
    assert all(torch.allclose(a, b_, atol=1e-12) for a, b_ in zip(ga, gb))


def test_huge_logits_do_not_overflow() -> None:
    q = torch.tensor([[1.0], [-1.0]], dtype=torch.float64) * 1e3
    d = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    got = info_nce(q, d, temperature=0.01, budget=6)
    want = dense_nce(q, d, temperature=0.01)
    assert math.isfinite(float(got)) and abs(float(got) - float(want)) <= 1e-9 * float(want)


@pytest.mark.parametrize(
    "budget",
    [768, 300, 60],  # 8 x 16 scores, 6 elements each: one tile; logits of every tile kept; rescored
)
def test_one_tile_kept_tiles_and_rescored_tiles_agree(budget: int) -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    d = torch.randn(16, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    ids = [f"d{j % 11}" for j in range(16)]
    codes = PositiveCodes.from_ids(ids, [[ids[2 * i]] for i in range(8)])
    got = info_nce(q, d, temperature=tau, positives=codes, symmetric=True, budget=budget)
    want = dense_nce(q, d, temperature=tau, mask=codes.dense(), symmetric=True)
    assert abs(float(got.detach()) - float(want.detach())) <= 1e-12
    ga = torch.autograd.grad(got, [q, d, tau])
    gb = torch.autograd.grad(want, [q, d, tau])
    assert all(torch.allclose(a, b_, atol=1e-12) for a, b_ in zip(ga, gb))
