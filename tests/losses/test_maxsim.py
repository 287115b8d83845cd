"""MaxSim against a naive loop over tokens: masks exact, blocks invisible, prefixes keep the mask."""

from __future__ import annotations

import pytest
import torch

from dualforge.losses import (
    LossInputs,
    MaxSimNCE,
    Nesting,
    PositiveCodes,
    info_nce,
    maxsim,
    maxsim_nce,
    nested_maxsim_nce,
    token_prefix,
)
from dualforge.tokens import join_tokens, split_tokens
from tests.losses.oracles import dense_maxsim, dense_nce, dense_nested


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


@pytest.mark.parametrize("budget", [2**30, 50])
def test_gathered_backward_equals_autograd_through_the_similarities(budget: int) -> None:
    q, d = tokens(4, 6, 8, seed=4), tokens(7, 9, 8, seed=5)
    weights = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    grads = []
    for fn in (lambda a, b: maxsim(a, b, budget=budget), dense_maxsim):
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


def _late_problem(b: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, PositiveCodes]:
    n = 1 + k
    q = tokens(b, 5, 8, seed=seed).requires_grad_()
    d = tokens(b * n, 7, 8, seed=seed + 1).requires_grad_()
    ids = [f"x{(j * 7) % (b * n - 2)}" for j in range(b * n)]  # a few duplicates
    codes = PositiveCodes.from_ids(ids, [[ids[i * n], ids[(i * 3) % (b * n)]] for i in range(b)])
    return q, d, codes


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("budget", [60, 900, 2**24])
def test_tiled_maxsim_nce_equals_the_dense_oracle(k: int, symmetric: bool, budget: int) -> None:
    q, d, codes = _late_problem(5, k, seed=10 + k)
    tau = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    kw = {"temperature": tau, "symmetric": symmetric}
    got = maxsim_nce(q, d, positives=codes, budget=budget, **kw)  # type: ignore[arg-type]
    want = dense_nce(q, d, score=dense_maxsim, mask=codes.dense(), **kw)  # type: ignore[arg-type]
    assert abs(float(got.detach() - want.detach())) <= 1e-10 * abs(float(want.detach()))
    for a, b in zip(_grads(got, [q, d, tau]), _grads(want, [q, d, tau])):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("renormalize", [False, True])
def test_token_dims_and_row_shares_equal_the_dense_oracle(renormalize: bool) -> None:
    q, d, codes = _late_problem(6, 1, seed=20)
    dims = (2, 4, 8)
    kw = {"symmetric": True, "temperature": 0.5}
    want = dense_nested(q, d, dims, renormalize=renormalize, tokens=True, mask=codes.dense(), **kw)
    shares = [
        nested_maxsim_nce(q, d, dims, renormalize=renormalize, positives=codes, rows=rows,
                          budget=300, **kw)  # type: ignore[arg-type]
        for rows in (slice(0, 2), slice(2, 4), slice(4, 6))
    ]  # fmt: skip
    got = torch.stack(shares).sum(dim=0)
    assert float((got - want).detach().abs().max()) <= 1e-10
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    for a, b in zip(_grads((got * w).sum(), [q, d]), _grads((want * w).sum(), [q, d])):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_maxsim_loss_reports_each_token_dim() -> None:
    q, d, codes = _late_problem(4, 0, seed=30)
    loss = MaxSimNCE(temperature=0.5, nesting=Nesting((4, 8), renormalize=True))
    out = loss(q, d, LossInputs(positives=codes), slice(0, 4))
    want = dense_nested(q, d, (4, 8), renormalize=True, tokens=True, mask=codes.dense(),
                        temperature=0.5)  # fmt: skip
    assert sorted(out.parts["loss_by_dim"]) == ["4", "8"]
    assert abs(float(out.loss.detach()) - float(want.detach().sum())) <= 1e-10
