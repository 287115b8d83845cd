"""InfoNCE against a direct log-softmax computation."""

from __future__ import annotations

import math

import pytest
import torch

from dualforge.losses import false_negative_mask, info_nce, similarity


def manual_nce(q: torch.Tensor, d: torch.Tensor, tau: float, n: int, banned=None) -> float:  # type: ignore[no-untyped-def]
    total = 0.0
    for i in range(q.shape[0]):
        scores = [float(q[i] @ d[j]) / tau for j in range(d.shape[0])]
        allowed = [s for j, s in enumerate(scores) if not (banned and (i, j) in banned)]
        total += math.log(sum(math.exp(s) for s in allowed)) - scores[i * n]
    return total / q.shape[0]


def test_in_batch_and_hard_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(3, 5, generator=g), torch.randn(9, 5, generator=g)
    got = float(info_nce(q, d, temperature=0.7))
    assert got == pytest.approx(manual_nce(q, d, 0.7, n=3), rel=1e-5)


def test_false_negative_mask_removes_duplicates_but_never_target() -> None:
    g = torch.Generator().manual_seed(1)
    q, d = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
    doc_ids = ["a", "n1", "b", "a", "c", "n2"]  # query 1's negative is query 0's positive "a"
    mask = false_negative_mask(doc_ids, [["a"], ["b"], ["c", "b"]])
    assert mask.tolist()[0] == [True, False, False, True, False, False]
    got = float(info_nce(q, d, temperature=1.0, false_negatives=mask))
    banned = {(0, 3), (2, 2)}  # (0, 0) and (1, 2) are targets and stay
    assert got == pytest.approx(manual_nce(q, d, 1.0, n=2, banned=banned), rel=1e-5)


def test_symmetric_averages_both_directions() -> None:
    g = torch.Generator().manual_seed(2)
    q, d = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    back = manual_nce(d, q, 0.5, n=1)
    expected = (manual_nce(q, d, 0.5, n=1) + back) / 2
    assert float(info_nce(q, d, temperature=0.5, symmetric=True)) == pytest.approx(
        expected, rel=1e-5
    )


def test_cosine_similarity_is_scale_free() -> None:
    q, d = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(similarity(q * 7, d, "cos"), similarity(q, d * 3, "cos"), atol=1e-6)
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity(q, d, "l2")


def test_bad_document_count() -> None:
    with pytest.raises(ValueError, match="multiple of queries"):
        info_nce(torch.randn(3, 2), torch.randn(4, 2))
