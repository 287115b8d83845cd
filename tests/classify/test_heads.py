"""MRL / MRL-E heads against manual slice computations, and the summed cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dualforge.classify import (
    MRLEHead,
    MRLHeads,
    build_heads,
    matryoshka_cross_entropy,
    nesting_dims,
)

DIMS = (4, 8, 16, 24)


def _emb(b: int = 5, d: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_default_nesting_dims_start_at_32() -> None:
    # classify used to default to powers of two from 8 (8, 16, ..., D); since the Matryoshka
    # helpers were unified in dualforge.matryoshka it shares the loss's default, from 32
    assert nesting_dims(384) == (32, 64, 128, 256, 384)
    assert nesting_dims(64) == (32, 64)
    assert nesting_dims(384, smallest=8) == (8, 16, 32, 64, 128, 256, 384)
    with pytest.raises(ValueError, match="positive"):
        nesting_dims(0)


@pytest.mark.parametrize("normalize", [False, True])
def test_mrle_logits_equal_manual_slices(normalize: bool) -> None:
    torch.manual_seed(0)
    head = MRLEHead(DIMS, num_classes=3, normalize=normalize).double()
    emb = _emb()
    logits = head(emb)
    assert logits.shape == (len(DIMS), 5, 3)
    W, b = head.weight.detach(), head.bias.detach()
    for i, m in enumerate(DIMS):
        x = emb[:, :m]
        if normalize:
            x = x / x.norm(dim=1, keepdim=True)
        manual = torch.stack(
            [torch.stack([x[r] @ W[c, :m] + b[c] for c in range(3)]) for r in range(5)]
        )
        torch.testing.assert_close(logits[i], manual, rtol=1e-12, atol=1e-12)


def test_mrle_shares_one_weight_matrix() -> None:
    head = MRLEHead(DIMS, num_classes=3)
    assert [tuple(p.shape) for p in head.parameters()] == [(3, 24), (3,)]
    loss = head(_emb().float())[0].sum()  # only dim 4 uses columns 0..3
    loss.backward()
    assert head.weight.grad is not None
    assert head.weight.grad[:, 4:].abs().sum() == 0 and head.weight.grad[:, :4].abs().sum() > 0


@pytest.mark.parametrize("normalize", [False, True])
def test_mrl_heads_are_independent_linear_maps(normalize: bool) -> None:
    torch.manual_seed(0)
    heads = MRLHeads(DIMS, num_classes=3, normalize=normalize).double()
    emb = _emb()
    logits = heads(emb)
    for i, (m, lin) in enumerate(zip(DIMS, heads.heads)):
        assert lin.in_features == m and lin.out_features == 3
        x = F.normalize(emb[:, :m], dim=-1) if normalize else emb[:, :m]
        torch.testing.assert_close(logits[i], x @ lin.weight.T + lin.bias, rtol=1e-12, atol=0)
    with torch.no_grad():
        heads.heads[1].weight.add_(1.0)  # changing head 1 changes only dim 8's logits
    changed = heads(emb)
    assert not torch.allclose(changed[1], logits[1])
    for i in (0, 2, 3):
        torch.testing.assert_close(changed[i], logits[i], rtol=0, atol=0)
    heads.zero_grad()
    heads(emb)[2].sum().backward()  # dim 16's loss reaches only head 2
    grads = [lin.weight.grad for lin in heads.heads]
    assert grads[2] is not None and grads[2].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for i, g in enumerate(grads) if i != 2)


def test_loss_is_weighted_sum_of_per_dim_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 7, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (7,), generator=g)
    expected = sum(F.cross_entropy(logits[i], targets) for i in range(4))
    torch.testing.assert_close(matryoshka_cross_entropy(logits, targets), expected)
    w = (0.5, 1.0, 0.0, 2.0)
    weighted = sum(c * F.cross_entropy(logits[i], targets) for i, c in enumerate(w))
    torch.testing.assert_close(matryoshka_cross_entropy(logits, targets, w), weighted)
    with pytest.raises(ValueError, match="weights"):
        matryoshka_cross_entropy(logits, targets, (1.0, 1.0))
    with pytest.raises(ValueError, match="expected logits"):
        matryoshka_cross_entropy(logits[0], targets)


def test_build_heads_and_validation() -> None:
    assert isinstance(build_heads("mrl", DIMS, 2), MRLHeads)
    assert isinstance(build_heads("mrle", DIMS, 2), MRLEHead)
    with pytest.raises(ValueError, match="unknown head kind"):
        build_heads("svm", DIMS, 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        MRLHeads((8, 8), 2)
    with pytest.raises(ValueError, match="at least one"):
        MRLEHead((), 2)
    with pytest.raises(ValueError, match="num_classes"):
        MRLHeads(DIMS, 0)
    with pytest.raises(ValueError, match=r"D >= 24"):
        MRLHeads(DIMS, 2)(torch.zeros(3, 16))
