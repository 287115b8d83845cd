"""Matryoshka loss: equals the per-prefix sum it defines, and Gradient Cache keeps it exact."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from dualforge.losses import (
    InfoNCE,
    LossInputs,
    LossOutput,
    MatryoshkaLoss,
    Nesting,
    PositiveCodes,
    default_dims,
    info_nce,
    matryoshka_losses,
)
from tests.gradcache.test_engine import cached_vs_plain


def plain_nce(q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice) -> LossOutput:
    """A Loss without nesting of its own: MatryoshkaLoss calls it once per prefix."""
    return LossOutput(info_nce(q, d, positives=inputs.positives, rows=rows), {})


def call(loss, q: torch.Tensor, d: torch.Tensor, **inputs) -> LossOutput:  # type: ignore[no-untyped-def]
    return loss(q, d, LossInputs(**inputs), slice(0, q.shape[0]))  # type: ignore[no-any-return]


def _reps(
    b: int = 6, n: int = 2, dim: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, dim, generator=g, dtype=torch.float64), dim=-1)
    d = F.normalize(torch.randn(b * n, dim, generator=g, dtype=torch.float64), dim=-1)
    return q, d


def test_default_dims() -> None:
    assert default_dims(384) == (32, 64, 128, 256, 384)
    assert default_dims(768) == (32, 64, 128, 256, 512, 768)
    assert default_dims(64) == (32, 64)
    assert default_dims(16) == (16,)


@pytest.mark.parametrize(
    ("dims", "weights", "match"),
    [((), None, "at least one"), ((64, 32), None, "increasing"), ((32, 64), (1.0,), "weights")],
)
def test_bad_dims_are_rejected(dims, weights, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        MatryoshkaLoss(plain_nce, dims, weights=weights)


def test_equals_weighted_sum_of_prefix_losses() -> None:
    q, d = _reps()
    dims, weights = (8, 16, 64), (0.5, 1.0, 2.0)
    loss = MatryoshkaLoss(plain_nce, dims, weights=weights, renormalize=True)
    expected = sum(
        w * info_nce(F.normalize(q[:, :m], dim=-1), F.normalize(d[:, :m], dim=-1))
        for m, w in zip(dims, weights)
    )
    out = call(loss, q, d)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=0)
    by_dim = out.parts["loss_by_dim"]
    assert sorted(by_dim, key=int) == ["8", "16", "64"]
    manual_8 = info_nce(F.normalize(q[:, :8], dim=-1), F.normalize(d[:, :8], dim=-1))
    assert float(by_dim["8"]) == pytest.approx(float(manual_8), rel=1e-12)
    assert not by_dim["8"].requires_grad  # parts are for logging, never part of the graph


def test_renormalize_changes_dot_loss_but_not_cosine_loss() -> None:
    q, d = _reps()
    raw = matryoshka_losses(info_nce, (q, d), (8, 16))
    renormed = matryoshka_losses(info_nce, (q, d), (8, 16), renormalize=True)
    assert not torch.allclose(raw, renormed)
    cos = partial(info_nce, sim="cos")
    torch.testing.assert_close(
        matryoshka_losses(cos, (q, d), (8, 16)),
        matryoshka_losses(cos, (q, d), (8, 16), renormalize=True),
    )


def test_inputs_are_passed_through() -> None:
    q, d = _reps(b=3, n=1)
    codes = PositiveCodes.from_ids(["a", "b", "c"], [["a", "b"], ["b"], ["c"]])
    loss = MatryoshkaLoss(plain_nce, (16, 64))
    masked = float(call(loss, q, d, positives=codes).loss)
    assert masked != pytest.approx(float(call(loss, q, d).loss))


def test_sampling_is_seeded_per_step_and_unbiased_in_scale() -> None:
    q, d = _reps()
    dims = (8, 16, 32, 64)
    loss = MatryoshkaLoss(plain_nce, dims, sample_dims=2, seed=7)
    full = matryoshka_losses(info_nce, (q, d), dims)  # (4,)
    seen = []
    for step in range(20):
        out = call(loss, q, d, step=step)
        used = sorted(int(m) for m in out.parts["loss_by_dim"])
        assert len(used) == 2
        expected = 2.0 * sum(full[dims.index(m)] for m in used)  # M / sampled = 4 / 2
        torch.testing.assert_close(out.loss, expected)
        seen.append(tuple(used))
        again = sorted(int(m) for m in call(loss, q, d, step=step).parts["loss_by_dim"])
        assert tuple(again) == tuple(used)  # same step -> same dims, whatever came between
    assert len(set(seen)) > 1


def test_gradient_flows_only_through_used_prefix() -> None:
    q, d = _reps()
    q.requires_grad_(True)
    call(MatryoshkaLoss(plain_nce, (8, 16), renormalize=True), q, d).loss.backward()
    assert q.grad is not None
    assert q.grad[:, 16:].abs().max() == 0
    assert q.grad[:, :16].abs().max() > 0


@pytest.mark.parametrize("tied", [True, False])
def test_cached_matryoshka_equals_plain_matryoshka(tokenizer, tied: bool) -> None:  # type: ignore[no-untyped-def]
    loss = InfoNCE(nesting=Nesting((8, 16, 32, 64), renormalize=True))
    diff = cached_vs_plain(tokenizer, tied=tied, n_q=7, k=1, chunk=3, loss=loss)
    diff.check()


def test_generic_nesting_equals_the_one_pass_nesting() -> None:
    q, d = _reps()
    codes = PositiveCodes.from_ids([str(i % 5) for i in range(12)], [["0"], ["1"]] * 3)
    dims = (8, 16, 64)
    generic = call(MatryoshkaLoss(plain_nce, dims, renormalize=True), q, d, positives=codes)
    one_pass = call(InfoNCE(nesting=Nesting(dims, renormalize=True)), q, d, positives=codes)
    torch.testing.assert_close(one_pass.loss, generic.loss, rtol=1e-12, atol=0)
    for m in ("8", "16", "64"):
        torch.testing.assert_close(
            one_pass.parts["loss_by_dim"][m], generic.parts["loss_by_dim"][m], rtol=1e-12, atol=0
        )
