"""Tiled InfoNCE against direct computations: a log-softmax loop, and dense fp64 oracles."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dualforge.losses import (
    InfoNCE,
    LossInputs,
    Nesting,
    PositiveCodes,
    info_nce,
    nested_info_nce,
    similarity,
)
from dualforge.losses.inputs import code_match, matching_pairs
from tests.losses.oracles import cos, dense_nce, dense_nested, dot, loop_mask

FP64 = 1e-10
FP32 = 1e-5


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


def test_false_negative_codes_remove_duplicates_but_never_target() -> None:
    g = torch.Generator().manual_seed(1)
    q, d = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
    doc_ids = ["a", "n1", "b", "a", "c", "n2"]  # query 1's negative is query 0's positive "a"
    codes = PositiveCodes.from_ids(doc_ids, [["a"], ["b"], ["c", "b"]])
    assert codes.dense().tolist()[0] == [True, False, False, True, False, False]
    got = float(info_nce(q, d, temperature=1.0, positives=codes))
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
    with pytest.raises(ValueError, match="unknown similarity"):
        info_nce(q, d, sim="l2")


def test_bad_document_count() -> None:
    with pytest.raises(ValueError, match="multiple of queries"):
        info_nce(torch.randn(3, 2), torch.randn(4, 2))


@pytest.mark.parametrize("seed", range(5))
def test_codes_equal_the_old_dense_mask_with_duplicate_ids(seed: int) -> None:
    rng = random.Random(seed)
    pool = [f"d{i}" for i in range(12)]  # few ids: many duplicates within a batch
    b, n = rng.randint(1, 9), rng.randint(1, 4)
    doc_ids: list[str | None] = [rng.choice([*pool, None]) for _ in range(b * n)]
    positives = [rng.sample([*pool, "elsewhere"], rng.randint(0, 4)) for _ in range(b)]
    codes = PositiveCodes.from_ids(doc_ids, positives)
    assert torch.equal(codes.dense(), loop_mask(doc_ids, positives))
    assert codes.positives.shape[1] <= max(1, max(len(p) for p in positives))


def _problem(b: int, k: int, dim: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Representations, and codes whose mask has duplicates (one row masks every other column)."""
    g = torch.Generator().manual_seed(seed)
    n = 1 + k
    q = torch.randn(b, dim, generator=g, dtype=torch.float64)
    d = torch.randn(b * n, dim, generator=g, dtype=torch.float64)
    rng = random.Random(seed)
    ids = [f"x{rng.randint(0, b * n // 2)}" for _ in range(b * n)]
    positives = [[ids[i * n], *rng.sample(ids, 2)] for i in range(b)]
    positives[0] = list(ids)  # query 0: every other column is masked, only its target remains
    codes = PositiveCodes.from_ids(ids, positives)
    return q.to(dtype), d.to(dtype), codes


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("sim", ["dot", "cos"])
@pytest.mark.parametrize("budget", [7, 100, 2**24])  # 1 score x ... ; tiles that do not divide B
def test_tiled_equals_dense_oracle_fp64(k: int, symmetric: bool, sim: str, budget: int) -> None:
    q, d, codes = _problem(11, k, 16, seed=k, dtype=torch.float64)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    q.requires_grad_()
    d.requires_grad_()
    kw = {"temperature": tau, "symmetric": symmetric}
    got = info_nce(q, d, sim=sim, positives=codes, budget=budget * 6, **kw)  # type: ignore[arg-type]
    want = dense_nce(q, d, score=cos if sim == "cos" else dot, mask=codes.dense(), **kw)  # type: ignore[arg-type]
    assert abs(float(got.detach() - want.detach())) <= FP64 * abs(float(want.detach()))
    for a, b in zip(_grads(got, [q, d, tau]), _grads(want, [q, d, tau])):
        assert _rel(a, b) <= FP64


@pytest.mark.parametrize("symmetric", [False, True])
def test_tiled_fp32_is_close_to_the_fp64_oracle(symmetric: bool) -> None:
    q, d, codes = _problem(37, 1, 32, seed=3, dtype=torch.float64)
    q32, d32 = q.float().requires_grad_(), d.float().requires_grad_()
    got = info_nce(q32, d32, symmetric=symmetric, positives=codes, temperature=0.1, budget=200)
    q.requires_grad_()
    d.requires_grad_()
    want = dense_nce(q, d, symmetric=symmetric, mask=codes.dense(), temperature=0.1)
    assert abs(float(got.detach()) - float(want.detach())) <= FP32 * abs(float(want.detach()))
    for a, b in zip(_grads(got, [q32, d32]), _grads(want, [q, d])):
        assert _rel(a, b) <= FP32


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_row_shares_sum_to_the_whole_loss_and_gradient(world: int, symmetric: bool) -> None:
    q, d, codes = _problem(12, 2, 8, seed=4, dtype=torch.float64)
    q.requires_grad_()
    d.requires_grad_()
    kw = {"symmetric": symmetric, "positives": codes, "budget": 60}
    whole = info_nce(q, d, **kw)  # type: ignore[arg-type]
    b = 12 // world
    shares = [info_nce(q, d, rows=slice(r * b, (r + 1) * b), **kw) for r in range(world)]  # type: ignore[arg-type]
    assert abs(float(sum(shares).detach()) - float(whole.detach())) <= FP64
    summed = [sum(g) for g in zip(*(_grads(s, [q, d]) for s in shares))]
    for a, b_ in zip(summed, _grads(whole, [q, d])):
        assert _rel(a, b_) <= FP64  # type: ignore[arg-type]


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_nested_dims_in_one_pass_equal_one_loss_per_prefix(
    renormalize: bool, symmetric: bool
) -> None:
    q, d, codes = _problem(9, 1, 24, seed=5, dtype=torch.float64)
    q.requires_grad_()
    d.requires_grad_()
    dims = (4, 8, 20)  # the largest below the full dim: the rest of the vector gets no gradient
    kw = {"symmetric": symmetric, "temperature": 0.3}
    got = nested_info_nce(q, d, dims, renormalize=renormalize, positives=codes, budget=50, **kw)  # type: ignore[arg-type]
    want = dense_nested(q, d, dims, renormalize=renormalize, mask=codes.dense(), **kw)
    assert float((got - want).detach().abs().max()) <= FP64
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    got_q, got_d = _grads((got * w).sum(), [q, d])
    for a, b in zip((got_q, got_d), _grads((want * w).sum(), [q, d])):
        assert _rel(a, b) <= FP64
    assert float(got_q[:, 20:].abs().max()) == 0.0 and float(got_q[:, :20].abs().max()) > 0


def test_infonce_loss_samples_dims_per_step_and_weights_them() -> None:
    q, d, codes = _problem(6, 1, 16, seed=6, dtype=torch.float64)
    nesting = Nesting((4, 8, 12, 16), (1.0, 2.0, 0.5, 1.0), renormalize=True, sample_dims=2, seed=3)
    loss = InfoNCE(temperature=0.1, nesting=nesting, budget=40)
    every = dense_nested(q, d, nesting.dims, renormalize=True, mask=codes.dense(), temperature=0.1)
    seen = set()
    for step in range(12):
        out = loss(q, d, LossInputs(step=step, positives=codes), slice(0, 6))
        used = nesting.chosen(step)
        seen.add(used)
        assert sorted(out.parts["loss_by_dim"], key=int) == [str(m) for m in used]
        expected = 2.0 * sum(nesting.weight(m) * every[nesting.dims.index(m)] for m in used)
        assert abs(float((out.loss - expected).detach())) <= FP64
    assert len(seen) > 1


def test_bf16_inputs_are_scored_in_fp32() -> None:
    """bf16 representations are upcast per tile: the loss equals the fp64 loss of the same
    (bf16-rounded) values to fp32 rounding, 1e-5; gradients come back in bf16 (8-bit mantissa),
    within 1e-2 of the fp64 gradients."""
    q, d, codes = _problem(20, 1, 32, seed=7, dtype=torch.float64)
    qb, db = q.bfloat16().requires_grad_(), d.bfloat16().requires_grad_()
    got = info_nce(qb, db, positives=codes, symmetric=True, temperature=0.1, budget=300)
    assert got.dtype == torch.float32
    q64, d64 = qb.double().detach().requires_grad_(), db.double().detach().requires_grad_()
    want = dense_nce(q64, d64, mask=codes.dense(), symmetric=True, temperature=0.1)
    assert abs(float(got.detach()) - float(want.detach())) <= 1e-5 * abs(float(want.detach()))
    ga, gb = _grads(got, [qb, db]), _grads(want, [q64, d64])
    assert ga[0].dtype == torch.bfloat16
    for a, b in zip(ga, gb):
        assert _rel(a, b) <= 1e-2


def test_a_learned_temperature_gets_its_gradient() -> None:
    q, d, codes = _problem(8, 1, 8, seed=8, dtype=torch.float64)
    log_t = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    got = info_nce(q, d, temperature=log_t.exp(), positives=codes, symmetric=True, budget=20)
    want = dense_nce(q, d, temperature=log_t.exp(), mask=codes.dense(), symmetric=True)
    (a,), (b,) = _grads(got, [log_t]), _grads(want, [log_t])
    assert abs(float(a - b)) <= FP64 * abs(float(b)) and float(b) != 0.0


def test_rows_that_select_nothing_are_an_error() -> None:
    q, d = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="selects no query"):
        info_nce(q, d, rows=slice(4, 4))


@pytest.mark.parametrize("seed", range(4))
def test_matching_pairs_are_the_nonzeros_of_the_dense_match(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(-1, 6, (9, 3), generator=g)
    cols = torch.randint(-1, 6, (14, 2), generator=g)
    for sets in (rows, cols):  # a row's (a column's) codes are distinct, as from_ids makes them
        for i in range(sets.shape[0]):
            seen: set[int] = set()
            for j in range(sets.shape[1]):
                if int(sets[i, j]) in seen:
                    sets[i, j] = -1
                seen.add(int(sets[i, j]))
    got = torch.stack(matching_pairs(rows, cols), dim=1)
    assert torch.equal(got, code_match(rows, cols).nonzero())
