"""Chunk planning: coverage, limits, length sorting, trimming with right and left padding."""

from __future__ import annotations

import pytest
import torch

from dualforge.gradcache.chunking import batch_size_of, plan_chunks, scatter_rows, split_batch


def batch(lengths: list[int], left: bool = False, width: int = 12) -> dict[str, torch.Tensor]:
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, width - n :] = 1
        else:
            mask[i, :n] = 1
    ids = torch.arange(len(lengths) * width).view(len(lengths), width) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def covered(plan: list[torch.Tensor], n: int) -> bool:
    return sorted(torch.cat(plan).tolist()) == list(range(n))


def test_row_chunks_with_partial_last() -> None:
    plan = plan_chunks(batch([3, 4, 5, 6, 7]), chunk_size=2)
    assert [p.tolist() for p in plan] == [[0, 1], [2, 3], [4]]


def test_token_budget_respected_and_long_row_alone() -> None:
    lengths = [2, 9, 3, 12, 1, 5, 5, 4]
    plan = plan_chunks(batch(lengths), token_budget=12)
    assert covered(plan, len(lengths))
    for rows in plan:
        padded = len(rows) * max(lengths[r] for r in rows.tolist())
        assert padded <= 12 or len(rows) == 1


def test_sorted_plan_is_longest_first() -> None:
    lengths = [2, 9, 3, 12, 1, 5]
    plan = plan_chunks(batch(lengths), chunk_size=2, sort_by_length=True)
    assert [p.tolist() for p in plan] == [[3, 1], [5, 2], [0, 4]]


@pytest.mark.parametrize("left", [False, True])
def test_trim_keeps_real_tokens(left: bool) -> None:
    data = batch([2, 9, 3, 4], left=left)
    chunks = split_batch(data, chunk_size=2, sort_by_length=True)
    for chunk in chunks:
        mask = chunk.inputs["attention_mask"]
        assert mask.shape[1] == int(data["attention_mask"][chunk.rows].sum(1).max())
        assert int(mask.sum()) == int(data["attention_mask"][chunk.rows].sum())
        kept_ids = chunk.inputs["input_ids"][mask.bool()]
        assert torch.equal(
            kept_ids.sort().values,
            data["input_ids"][chunk.rows][data["attention_mask"][chunk.rows].bool()].sort().values,
        )


def test_scatter_restores_order() -> None:
    data = batch([2, 9, 3, 4, 7])
    chunks = split_batch(data, chunk_size=2, sort_by_length=True)
    parts = [c.rows.float().unsqueeze(1) for c in chunks]
    assert scatter_rows(parts, chunks).squeeze(1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_errors() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(batch([1, 2]), chunk_size=0)
    with pytest.raises(ValueError, match="attention_mask"):
        plan_chunks({"x": torch.zeros(3, 2)}, token_budget=4)
    with pytest.raises(ValueError, match="disagree"):
        batch_size_of({"a": torch.zeros(3), "b": torch.zeros(2)})
