"""The decorator form reproduces the plain full-batch gradient in a user's own loop."""

from __future__ import annotations

import copy

import pytest
import torch

from dualforge.gradcache import cached, replay_all, split_batch
from dualforge.gradcache.reference import compare_grads, snapshot_grads
from dualforge.losses import info_nce
from tests.conftest import make_tiny_bert
from tests.gradcache.helpers import encoder, texts, tokenize


def test_cached_decorator_matches_plain_with_dropout(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = encoder(make_tiny_bert(len(tokenizer), dropout=0.1)).double()
    ref = copy.deepcopy(model)
    q_batch = tokenize(tokenizer, texts(6, seed=1))
    d_batch = tokenize(tokenizer, texts(6, seed=2))

    @cached
    def encode(m, batch):  # type: ignore[no-untyped-def]
        return m(batch)

    torch.manual_seed(0)
    q = [encode(model, c.inputs) for c in split_batch(q_batch, chunk_size=4, trim=False)]
    d = [encode(model, c.inputs) for c in split_batch(d_batch, chunk_size=4, trim=False)]
    loss = info_nce(torch.cat([r for r, _ in q]), torch.cat([r for r, _ in d]))
    loss.backward()
    replay_all(q + d)

    torch.manual_seed(0)  # same chunks, same order, same RNG stream, graphs kept
    q_ref = [ref(c.inputs) for c in split_batch(q_batch, chunk_size=4, trim=False)]
    d_ref = [ref(c.inputs) for c in split_batch(d_batch, chunk_size=4, trim=False)]
    info_nce(torch.cat(q_ref), torch.cat(d_ref)).backward()
    assert compare_grads(snapshot_grads([model]), snapshot_grads([ref])).max_rel <= 1e-10


def test_replay_without_backward_is_an_error() -> None:
    @cached
    def encode(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    pair = encode(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"no \.grad"):
        replay_all([pair])
