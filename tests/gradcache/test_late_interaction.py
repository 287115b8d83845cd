"""Gradient Cache over token representations (late interaction): cached == plain gradients.

The oracle is the plain backward over the same chunks from the same RNG stream
(``plain_chunked_step``, so dropout masks match), in fp64; the cached run is checked in fp64
(exactness) and fp32 (against the fp64 oracle).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from dualforge import GradCache
from dualforge.gradcache.reference import compare_grads, plain_chunked_step, snapshot_grads
from dualforge.losses import LossInputs, MaxSimNCE, Nesting
from dualforge.modeling.late_interaction import LateInteractionModel
from dualforge.train.components import tower_encoders
from tests.gradcache.helpers import texts
from tests.modeling.test_late_interaction import late_model

FP64_TOL, FP32_TOL = 1e-10, 1e-5


def grads(
    model: LateInteractionModel,
    dtype: torch.dtype,
    run: Any,
    loss: Any,
    chunk: int | None,
    kw: dict[str, Any],
) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model).to(dtype)
    gc = GradCache(tower_encoders(m), loss, chunk, **kw)
    torch.manual_seed(0)
    run(gc)
    return snapshot_grads([m])


def check(
    tokenizer,
    *,
    n_q: int = 5,
    k: int = 0,
    chunk: int | None = 2,
    dropout: float = 0.1,
    loss: Any = None,
    **kw: Any,
) -> None:  # type: ignore[no-untyped-def]
    model = late_model(tokenizer, dropout=dropout)
    q = model.tokenize(texts(n_q, seed=1, max_words=10), "query")
    d = model.tokenize(texts(n_q * (1 + k), seed=2, max_words=20), "document")
    loss = loss or MaxSimNCE(temperature=0.05)
    kwargs = {"sort_by_length": True, **kw}
    oracle = grads(
        model, torch.float64, lambda gc: plain_chunked_step(gc, q, d), loss, chunk, kwargs
    )
    for dtype, tol in ((torch.float64, FP64_TOL), (torch.float32, FP32_TOL)):
        cached = grads(model, dtype, lambda gc: gc.step(q, d), loss, chunk, kwargs)
        diff = compare_grads(cached, oracle)
        assert diff.max_rel <= tol, (dtype, diff)


def test_dropout_replay_and_a_partial_last_chunk(tokenizer) -> None:  # type: ignore[no-untyped-def]
    check(tokenizer, n_q=5, chunk=2)


def test_hard_negatives_with_variable_length_trimmed_chunks(tokenizer) -> None:  # type: ignore[no-untyped-def]
    check(tokenizer, n_q=4, k=2, chunk=3, token_budget=40)


def test_symmetric_loss_and_every_chunk_replayed(tokenizer) -> None:  # type: ignore[no-untyped-def]
    check(tokenizer, loss=MaxSimNCE(symmetric=True), keep_graphs=0)


@pytest.mark.parametrize("renormalize", [True, False])
def test_matryoshka_token_dims(tokenizer, renormalize: bool) -> None:  # type: ignore[no-untyped-def]
    loss = MaxSimNCE(nesting=Nesting((4, 8, 16), renormalize=renormalize))
    check(tokenizer, loss=loss, k=1)


def test_without_dropout_the_oracle_is_one_full_batch_forward(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """No chunking on the reference side: trimmed chunks padded back to the batch length must
    give the full-batch gradient (this checks the column placement itself)."""
    model = late_model(tokenizer, dropout=0.0)
    q = model.tokenize(texts(6, seed=3, max_words=10), "query")
    d = model.tokenize(texts(12, seed=4, max_words=25), "document")
    loss = MaxSimNCE(temperature=0.05)

    def full(gc: GradCache) -> None:
        qr, dr = gc.encoders[0](q), gc.encoders[1](d)
        loss(qr, dr, LossInputs(), slice(0, qr.shape[0])).loss.backward()

    oracle = grads(model, torch.float64, full, loss, 2, {})
    cached = grads(model, torch.float64, lambda gc: gc.step(q, d), loss, 2, {"token_budget": 30})
    assert compare_grads(cached, oracle).max_rel <= FP64_TOL
