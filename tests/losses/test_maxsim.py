"""MaxSim against a naive loop over tokens: masks exact, blocks invisible, prefixes keep the mask."""

from __future__ import annotations

import pytest
import torch

from dualforge.losses import info_nce, maxsim, maxsim_nce, token_prefix
from dualforge.tokens import join_tokens, split_tokens


def tokens(b: int, t: int, d: int, seed: int, keep: float = 0.7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < keep
    mask[:, 0] = True  # every text keeps at least one token
    return join_tokens(vectors, mask)


def naive(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """sum over scored query tokens of the max over scored document tokens, by loops."""
    qv, qm = split_tokens(q)
    dv, dm = split_tokens(d)
    out = torch.zeros(q.shape[0], d.shape[0], dtype=q.dtype)
    for a in range(q.shape[0]):
        for b in range(d.shape[0]):
            for i in range(q.shape[1]):
                if qm[a, i]:
                    out[a, b] += max(
                        float(qv[a, i] @ dv[b, j]) for j in range(d.shape[1]) if dm[b, j]
                    )
    return out


def test_maxsim_equals_the_loop_reference_with_masks() -> None:
    q, d = tokens(3, 5, 4, seed=0), tokens(4, 7, 4, seed=1)
    assert torch.allclose(maxsim(q, d), naive(q, d), atol=1e-12)


def test_masked_document_tokens_are_never_the_maximum_even_when_every_score_is_negative() -> None:
    """A padded token scored as 0 would win against all-negative similarities."""
    q = join_tokens(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[True]]))
    d = join_tokens(torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]]), torch.tensor([[True, False]]))
    assert float(maxsim(q, d)) == -1.0


def test_blocks_under_a_small_budget_give_the_same_scores_and_gradients() -> None:
    q, d = tokens(5, 6, 8, seed=2), tokens(9, 11, 8, seed=3)
    grads = []
    for budget in (2**30, 100, 1):
        qq, dd = q.clone().requires_grad_(), d.clone().requires_grad_()
        scores = maxsim(qq, dd, budget=budget)
        scores.pow(2).sum().backward()
        grads.append((scores.detach(), qq.grad, dd.grad))
    for scores, gq, gd in grads[1:]:
        assert torch.allclose(scores, grads[0][0]) and torch.allclose(gq, grads[0][1])
        assert torch.allclose(gd, grads[0][2])


def test_a_document_without_a_scored_token_is_an_error() -> None:
    q = tokens(1, 2, 3, seed=4)
    d = join_tokens(torch.randn(1, 2, 3, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one scored token"):
        maxsim(q, d)


def test_one_token_per_text_is_the_single_vector_loss() -> None:
    q, d = torch.randn(4, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    ones_q, ones_d = torch.ones(4, 1, dtype=torch.bool), torch.ones(8, 1, dtype=torch.bool)
    late = maxsim_nce(
        join_tokens(q[:, None], ones_q), join_tokens(d[:, None], ones_d), symmetric=True
    )
    assert torch.allclose(late, info_nce(q, d, symmetric=True))


def test_token_prefix_keeps_the_mask_and_renormalises() -> None:
    reps = tokens(2, 4, 8, seed=5)
    short = token_prefix(reps, 3, renormalize=True)
    vectors, mask = split_tokens(short)
    assert vectors.shape == (2, 4, 3) and torch.equal(mask, split_tokens(reps)[1])
    assert torch.allclose(
        vectors[mask].norm(dim=-1), torch.ones(int(mask.sum()), dtype=torch.float64)
    )
    assert torch.all(vectors[~mask] == 0)


def autograd_maxsim(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """MaxSim by plain autograd ops (the whole similarity tensor kept for the backward)."""
    qv, qm = split_tokens(q)
    dv, dm = split_tokens(d)
    sim = torch.einsum("aid,bjd->abij", qv, dv).masked_fill(~dm[None, :, None, :], float("-inf"))
    return sim.max(dim=-1).values.masked_fill(~qm[:, None, :], 0.0).sum(dim=-1)


@pytest.mark.parametrize("budget", [2**30, 50])
def test_gathered_backward_equals_autograd_through_the_similarities(budget: int) -> None:
    q, d = tokens(4, 6, 8, seed=4), tokens(7, 9, 8, seed=5)
    weights = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    grads = []
    for fn in (lambda a, b: maxsim(a, b, budget=budget), autograd_maxsim):
        qq, dd = q.clone().requires_grad_(), d.clone().requires_grad_()
        (fn(qq, dd) * weights).sum().backward()
        grads.append((qq.grad, dd.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-12)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-12)
    assert float(grads[0][1][..., -1].abs().max()) == 0.0  # no gradient into the mask channel


def test_maxsim_passes_gradcheck() -> None:
    q, d = tokens(2, 3, 4, seed=7), tokens(3, 4, 4, seed=8)
    qv, qm = split_tokens(q)
    dv, dm = split_tokens(d)

    def scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return maxsim(join_tokens(a, qm), join_tokens(b, dm))

    assert torch.autograd.gradcheck(
        scores, (qv.clone().requires_grad_(), dv.clone().requires_grad_())
    )
