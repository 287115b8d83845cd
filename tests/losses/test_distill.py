"""Distillation losses against fp64 oracles, and exact under Gradient Cache (dense, late
interaction, Matryoshka dims)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dualforge import GradCache
from dualforge.gradcache.reference import compare_grads, plain_chunked_step, snapshot_grads
from dualforge.losses import (
    TEACHER_SCORES,
    Distillation,
    InfoNCE,
    ListwiseKL,
    LossInputs,
    Nesting,
    dense_candidates,
    margin_mse,
    maxsim,
    maxsim_candidates,
    normalize_scores,
)
from dualforge.tokens import join_tokens
from dualforge.train.components import tower_encoders
from tests.conftest import make_tiny_bert
from tests.gradcache.helpers import encoder, texts, tokenize
from tests.modeling.test_late_interaction import late_model

FP64_TOL, FP32_TOL = 1e-10, 1e-5
G = torch.Generator().manual_seed(0)  # representations of the formula tests


def _teacher(b: int, n: int, scale: float = 10.0) -> torch.Tensor:
    """The same scores for the same shape, whatever ran before."""
    g = torch.Generator().manual_seed(b * 1000 + n)
    return torch.rand(b, n, generator=g, dtype=torch.float64) * scale


def _inputs(teacher: torch.Tensor, step: int = 0) -> LossInputs:
    return LossInputs(step=step, extras={TEACHER_SCORES: teacher})


# ---- the pieces against plain formulas -------------------------------------------------------


def test_normalizations_per_query() -> None:
    t = torch.tensor([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.equal(normalize_scores(t, "none"), t)
    assert normalize_scores(t, "minmax").tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]
    z = normalize_scores(t, "zscore")
    assert torch.allclose(
        z[0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * math.sqrt(1.5)
    )
    assert z[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown normalization 'rank'"):
        normalize_scores(t, "rank")


def test_kl_and_margin_mse_equal_their_definitions() -> None:
    s, t = torch.randn(4, 5, generator=G, dtype=torch.float64), _teacher(4, 5)
    kl = ListwiseKL(temperature=0.1, teacher_temperature=2.0)(s, t)
    want = F.kl_div(F.log_softmax(s / 0.1, 1), F.log_softmax(t / 2.0, 1), log_target=True,
                    reduction="none").sum(1)  # fmt: skip
    assert torch.allclose(kl, want, atol=1e-12, rtol=0)
    mse = margin_mse(s, t)
    for i in range(4):
        terms = [((s[i, 0] - s[i, j]) - (t[i, 0] - t[i, j])) ** 2 for j in range(1, 5)]
        assert float(mse[i]) == pytest.approx(float(sum(terms) / 4), abs=1e-12)
    with pytest.raises(ValueError, match="at least one negative"):
        margin_mse(s[:, :1], t[:, :1])


def test_dense_student_scores_are_each_querys_own_candidates() -> None:
    q, d = torch.randn(3, 8, dtype=torch.float64), torch.randn(9, 8, dtype=torch.float64)
    got = dense_candidates("cos", False)(q, d, (4, 8), slice(1, 3))  # (2 dims, 2 queries, 3)
    for k, m in enumerate((4, 8)):
        full = F.normalize(q[:, :m], dim=1) @ F.normalize(d[:, :m], dim=1).T  # (3, 9)
        for i in (1, 2):
            assert torch.allclose(got[k, i - 1], full[i, i * 3 : i * 3 + 3], atol=1e-12)


def test_maxsim_student_scores_equal_maxsim() -> None:
    mq, md = torch.rand(4, 5, generator=G) > 0.3, torch.rand(8, 6, generator=G) > 0.3
    mq[:, 0] = md[:, 0] = True
    q = join_tokens(torch.randn(4, 5, 8, generator=G, dtype=torch.float64), mq)
    d = join_tokens(torch.randn(8, 6, 8, generator=G, dtype=torch.float64), md)
    got = maxsim_candidates(False, budget=64)(q, d, (8,), slice(0, 4))[0]  # blocks of 1 query
    full = maxsim(q, d)  # (4, 8)
    for i in range(4):
        assert torch.allclose(got[i], full[i, 2 * i : 2 * i + 2], atol=1e-12)


def test_a_batch_without_teacher_scores_is_named() -> None:
    loss = Distillation(ListwiseKL(), dense_candidates("dot", False))
    q, d = torch.randn(2, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="distillation needs teacher scores"):
        loss(q, d, LossInputs(), slice(0, 2))
    with pytest.raises(ValueError, match=r"teacher scores are \(2, 3\), the batch has 2 queries"):
        loss(q, d, _inputs(_teacher(2, 3)), slice(0, 2))


def test_nested_parts_and_the_infonce_term() -> None:
    q, d = torch.randn(4, 16, dtype=torch.float64), torch.randn(12, 16, dtype=torch.float64)
    t = _teacher(4, 3)
    nesting = Nesting((4, 8, 16), weights=(1.0, 2.0, 0.5))
    plain = Distillation(ListwiseKL(), dense_candidates("dot", False), "minmax")
    nested = Distillation(ListwiseKL(), dense_candidates("dot", False), "minmax", nesting)
    out = nested(q, d, _inputs(t), slice(0, 4))
    by_dim = out.parts["loss_by_dim"]
    for m in (4, 8, 16):
        one = plain(q[:, :m], d[:, :m], _inputs(t), slice(0, 4)).loss
        assert float(by_dim[str(m)]) == pytest.approx(float(one), rel=1e-12)
    assert float(out.loss) == pytest.approx(
        float(by_dim["4"] + 2 * by_dim["8"] + 0.5 * by_dim["16"])
    )
    nce, bare = InfoNCE(0.05), Distillation(ListwiseKL(), dense_candidates("dot", False))
    mixed = Distillation(ListwiseKL(), dense_candidates("dot", False), nce=nce, weight=0.3)
    got = mixed(q, d, _inputs(t), slice(0, 4))
    kd = float(bare(q, d, _inputs(t), slice(0, 4)).loss)
    want = kd + 0.3 * float(nce(q, d, LossInputs(), slice(0, 4)).loss)
    assert float(got.loss) == pytest.approx(want, rel=1e-12)
    assert set(got.parts) == {"distill", "info_nce"}


# ---- exact under Gradient Cache ---------------------------------------------------------------

LOSSES: dict[str, Any] = {
    "kl": lambda nest: Distillation(
        ListwiseKL(0.05, 2.0), dense_candidates("dot", bool(nest)), "none", nest
    ),
    "kl-zscore-cos": lambda nest: Distillation(
        ListwiseKL(0.1, 1.0), dense_candidates("cos", False), "zscore", nest
    ),
    "margin_mse": lambda nest: Distillation(
        margin_mse, dense_candidates("dot", False), "minmax", nest
    ),
    "kl+info_nce": lambda nest: Distillation(
        ListwiseKL(), dense_candidates("dot", False), "none", nest, InfoNCE(0.05, nesting=nest), 0.5
    ),
}


def _dense_grads(tokenizer, loss, dtype, cached: bool, k: int = 2) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    enc = copy.deepcopy(encoder(make_tiny_bert(len(tokenizer), dropout=0.1, seed=0))).to(dtype)
    n_q = 5
    q = tokenize(tokenizer, texts(n_q, seed=1, max_words=12))
    d = tokenize(tokenizer, texts(n_q * (1 + k), seed=2))
    inputs = _inputs(_teacher(n_q, 1 + k, scale=5.0), step=3)
    gc = GradCache([enc, enc], loss, 2, sort_by_length=True)
    torch.manual_seed(0)
    if cached:
        gc.step(q, d, inputs)
    else:
        plain_chunked_step(gc, q, d, inputs)
    return {k: v.double() for k, v in snapshot_grads([enc]).items()}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("nested", [False, True])
def test_dense_distillation_is_exact_under_gradient_cache(
    tokenizer, name: str, nested: bool
) -> None:  # type: ignore[no-untyped-def]
    nest = Nesting((8, 16, 32), sample_dims=2) if nested else None
    loss = LOSSES[name](nest)
    oracle = _dense_grads(tokenizer, loss, torch.float64, cached=False)
    for dtype, tol in ((torch.float64, FP64_TOL), (torch.float32, FP32_TOL)):
        diff = compare_grads(_dense_grads(tokenizer, loss, dtype, cached=True), oracle)
        assert diff.max_rel <= tol, (dtype, diff)


@pytest.mark.parametrize("objective", ["kl", "margin_mse"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_late_interaction_distillation_is_exact_at_every_token_dim(
    tokenizer, objective: str, renormalize: bool
) -> None:  # type: ignore[no-untyped-def]
    model = late_model(tokenizer, dropout=0.1)
    n_q, k = 4, 2
    q = model.tokenize(texts(n_q, seed=1, max_words=10), "query")
    d = model.tokenize(texts(n_q * (1 + k), seed=2, max_words=20), "document")
    nest = Nesting((4, 8, 16), renormalize=renormalize)
    fn = ListwiseKL(0.5, 1.0) if objective == "kl" else margin_mse
    loss = Distillation(fn, maxsim_candidates(renormalize, budget=200), "zscore", nest)
    inputs = _inputs(_teacher(n_q, 1 + k), step=1)

    assert_exact(model, tower_encoders, loss, (q, d, inputs), token_budget=40)


def assert_exact(
    model: Any, towers: Any, loss: Any, batch: tuple[Any, Any, LossInputs], **kw: Any
) -> None:
    """Cached gradients equal the plain chunked fp64 oracle (fp64 <= 1e-10, fp32 <= 1e-5)."""
    q, d, inputs = batch

    def grads(dtype: torch.dtype, cached: bool) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(model).to(dtype)
        gc = GradCache(towers(m), loss, 2, sort_by_length=True, **kw)
        torch.manual_seed(0)
        gc.step(q, d, inputs) if cached else plain_chunked_step(gc, q, d, inputs)
        return {k: v.double() for k, v in snapshot_grads([m]).items()}

    oracle = grads(torch.float64, cached=False)
    for dtype, tol in ((torch.float64, FP64_TOL), (torch.float32, FP32_TOL)):
        diff = compare_grads(grads(dtype, cached=True), oracle)
        assert diff.max_rel <= tol, (dtype, diff)


# ---- in-batch distillation: every document of the batch is a scored candidate ----------------


def test_in_batch_kl_scores_every_document_and_splits_into_shares() -> None:
    q = torch.randn(4, 16, dtype=torch.float64, generator=G).requires_grad_()
    d = torch.randn(8, 16, dtype=torch.float64, generator=G).requires_grad_()
    t = _teacher(4, 8)
    loss = Distillation(ListwiseKL(0.1, 2.0), dense_candidates("cos", False, in_batch=True),
                        "zscore", Nesting((8, 16)), in_batch=True)  # fmt: skip
    whole = loss(q, d, _inputs(t), slice(0, 4))
    for m in (8, 16):
        s = F.normalize(q[:, :m], dim=1) @ F.normalize(d[:, :m], dim=1).T  # (4, 8)
        want = ListwiseKL(0.1, 2.0)(s, normalize_scores(t, "zscore")).sum() / 4
        assert float(whole.parts["loss_by_dim"][str(m)]) == pytest.approx(float(want), rel=1e-12)
    g_whole = torch.autograd.grad(whole.loss, [q, d])
    shares = [loss(q, d, _inputs(t), slice(r, r + 2)).loss for r in (0, 2)]
    g_split = torch.autograd.grad(shares[0] + shares[1], [q, d])
    assert float(shares[0] + shares[1]) == pytest.approx(float(whole.loss), rel=1e-12)
    for a, b in zip(g_split, g_whole):
        assert torch.allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="in-batch distillation"):
        loss(q, d, _inputs(_teacher(4, 2)), slice(0, 4))


@pytest.mark.parametrize("late", [False, True])
def test_in_batch_distillation_is_exact_under_gradient_cache(tokenizer, late: bool) -> None:  # type: ignore[no-untyped-def]
    n_q, k = 4, 1
    if late:
        model: Any = late_model(tokenizer, dropout=0.1)
        q = model.tokenize(texts(n_q, seed=1, max_words=10), "query")
        d = model.tokenize(texts(n_q * (1 + k), seed=2, max_words=20), "document")
        scorer = maxsim_candidates(True, budget=200, in_batch=True)
        nest = Nesting((4, 8, 16), renormalize=True)
    else:
        model = encoder(make_tiny_bert(len(tokenizer), dropout=0.1, seed=0))
        q = tokenize(tokenizer, texts(n_q, seed=1, max_words=12))
        d = tokenize(tokenizer, texts(n_q * (1 + k), seed=2))
        scorer = dense_candidates("dot", False, in_batch=True)
        nest = Nesting((8, 16, 32))
    loss = Distillation(ListwiseKL(0.5, 1.0), scorer, "zscore", nest, in_batch=True)
    inputs = _inputs(_teacher(n_q, n_q * (1 + k)), step=2)

    towers = tower_encoders if late else (lambda m: [m, m])
    assert_exact(model, towers, loss, (q, d, inputs))
