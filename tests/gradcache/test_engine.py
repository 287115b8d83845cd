"""Cached gradients equal plain full-batch gradients (the oracle) on a tiny random BERT."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from dualforge import GradCache
from dualforge.gradcache.reference import (
    GradDiff,
    compare_grads,
    plain_chunked_step,
    snapshot_grads,
)
from dualforge.losses import InfoNCE, LossInputs, LossOutput, PositiveCodes, info_nce
from tests.conftest import make_tiny_bert
from tests.gradcache.helpers import encoder, texts, tokenize

FP32_TOL = 1e-5
FP64_TOL = 1e-10


loss_fn = InfoNCE(temperature=0.05)


def plain_full_batch(encoders, loss, q_batch, d_batch, inputs=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    q, d = encoders[0](q_batch), encoders[1](d_batch)
    out, _ = loss(q, d, inputs or LossInputs(), slice(0, q.shape[0]))
    out.backward()
    return out.detach()


def make_towers(tokenizer, tied: bool, dropout: float):  # type: ignore[no-untyped-def]
    q = encoder(make_tiny_bert(len(tokenizer), dropout=dropout, seed=0))
    d = q if tied else encoder(make_tiny_bert(len(tokenizer), dropout=dropout, seed=1))
    return q, d


@dataclass(frozen=True)
class Diffs:
    """Cached vs plain: both in fp64 (exactness), and cached fp32 vs the fp64 plain oracle."""

    fp64: GradDiff
    fp32: GradDiff

    def check(self) -> None:
        assert self.fp64.max_rel <= FP64_TOL, self.fp64
        assert self.fp32.max_rel <= FP32_TOL, self.fp32


def _grads(q_enc, d_enc, loss, dtype, step) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    q = copy.deepcopy(q_enc).to(dtype)
    d = q if d_enc is q_enc else copy.deepcopy(d_enc).to(dtype)
    loss = copy.deepcopy(loss).to(dtype) if isinstance(loss, nn.Module) else loss
    step([q, d], loss)
    mods = [q, d, loss] if isinstance(loss, nn.Module) else [q, d]
    return {k: v.double() for k, v in snapshot_grads(mods).items()}


def cached_vs_plain(tokenizer, *, tied=True, n_q=7, k=0, chunk=3, gc_kwargs=None, loss=loss_fn):  # type: ignore[no-untyped-def]
    """Gradient differences of a cached step against a plain full-batch step (dropout off).

    fp32 rounding alone moves a plain fp32 gradient ~2e-5 (relative) away from the exact one on
    this tiny random model, so the oracle is the plain step in fp64.
    """
    q_enc, d_enc = make_towers(tokenizer, tied, dropout=0.0)
    q_batch = tokenize(tokenizer, texts(n_q, seed=1, max_words=12))
    d_batch = tokenize(tokenizer, texts(n_q * (1 + k), seed=2))

    def cached(encs, fn):  # type: ignore[no-untyped-def]
        GradCache(encs, fn, chunk_size=chunk, **(gc_kwargs or {})).step(q_batch, d_batch)

    def plain(encs, fn):  # type: ignore[no-untyped-def]
        plain_full_batch(encs, fn, q_batch, d_batch)

    oracle = _grads(q_enc, d_enc, loss, torch.float64, plain)
    fp64 = compare_grads(_grads(q_enc, d_enc, loss, torch.float64, cached), oracle)
    fp32 = compare_grads(_grads(q_enc, d_enc, loss, torch.float32, cached), oracle)
    return Diffs(fp64, fp32)


@pytest.mark.parametrize("tied", [True, False])
def test_matches_plain_full_batch_with_partial_last_chunk(tokenizer, tied: bool) -> None:
    diff = cached_vs_plain(tokenizer, tied=tied, n_q=7, chunk=3)
    diff.check()


def test_hard_negatives(tokenizer) -> None:  # type: ignore[no-untyped-def]
    diff = cached_vs_plain(tokenizer, n_q=5, k=2, chunk=4)
    diff.check()


def test_chunk_size_one(tokenizer) -> None:  # type: ignore[no-untyped-def]
    diff = cached_vs_plain(tokenizer, n_q=4, chunk=1)
    diff.check()


def test_token_budget_chunks(tokenizer) -> None:  # type: ignore[no-untyped-def]
    diff = cached_vs_plain(tokenizer, n_q=8, chunk=None, gc_kwargs={"token_budget": 60})
    diff.check()


def test_length_sorted_trimmed_chunks(tokenizer) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"sort_by_length": True, "token_budget": 100}
    diff = cached_vs_plain(tokenizer, n_q=9, k=1, chunk=4, gc_kwargs=kwargs)
    diff.check()


@pytest.mark.parametrize("keep", [0, 2, 3, 10])
def test_any_number_of_kept_graphs_is_exact(tokenizer, keep: int) -> None:  # type: ignore[no-untyped-def]
    """K=0 replays every chunk; 10 >= the 3 chunks per tower is plain backprop."""
    diff = cached_vs_plain(tokenizer, n_q=7, k=1, chunk=3, gc_kwargs={"keep_graphs": keep})
    diff.check()


def test_kept_graphs_skip_their_replays(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """With K kept graphs a tower of n chunks runs n + (n - K) forwards, not 2n."""
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    calls = [0]
    q_enc.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    q_batch, d_batch = tokenize(tokenizer, texts(8, seed=3)), tokenize(tokenizer, texts(8, seed=4))
    for keep, expected in [(0, 16), (1, 14), (3, 10), (4, 8)]:
        calls[0] = 0
        GradCache([q_enc, q_enc], loss_fn, chunk_size=2, keep_graphs=keep).step(q_batch, d_batch)
        assert calls[0] == expected, keep
    with pytest.raises(ValueError, match="keep_graphs must be >= 0"):
        GradCache([q_enc, q_enc], loss_fn, keep_graphs=-1)


class LearnedTemperature(nn.Module):
    """InfoNCE with a learned log-temperature and a scoring projection: a loss that owns params."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.log_temp = nn.Parameter(torch.tensor(-2.5))
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice
    ) -> LossOutput:
        return LossOutput(info_nce(self.proj(q), d, temperature=self.log_temp.exp(), rows=rows), {})


def test_loss_with_own_parameters(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    diff = cached_vs_plain(tokenizer, tied=False, n_q=6, chunk=4, loss=LearnedTemperature())
    diff.check()


def test_symmetric_loss_with_false_negative_mask(tokenizer) -> None:  # type: ignore[no-untyped-def]
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    ref = copy.deepcopy(q_enc)
    q_batch = tokenize(tokenizer, texts(4, seed=5))
    d_batch = tokenize(tokenizer, texts(8, seed=6))
    codes = PositiveCodes.from_ids(
        ["a", "x", "b", "a", "c", "y", "d", "z"], [["a"], ["b"], ["c"], ["d", "a"]]
    )
    inputs = LossInputs(positives=codes)
    loss = InfoNCE(symmetric=True)
    GradCache([q_enc, q_enc], loss, chunk_size=3).step(q_batch, d_batch, inputs)
    plain_full_batch([ref, ref], loss, q_batch, d_batch, inputs)
    diff = compare_grads(snapshot_grads([q_enc]), snapshot_grads([ref]))
    assert diff.max_rel <= FP32_TOL, diff


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("sort", [False, True])
def test_dropout_on_matches_same_chunk_reference(tokenizer, tied: bool, sort: bool) -> None:  # type: ignore[no-untyped-def]
    q_enc, d_enc = make_towers(tokenizer, tied, dropout=0.1)
    ref_q = copy.deepcopy(q_enc)
    ref_d = ref_q if tied else copy.deepcopy(d_enc)
    q_batch = tokenize(tokenizer, texts(7, seed=7))
    d_batch = tokenize(tokenizer, texts(14, seed=8))
    kw = {"chunk_size": 3, "sort_by_length": sort}
    torch.manual_seed(123)
    GradCache([q_enc, d_enc], loss_fn, **kw).step(q_batch, d_batch)
    torch.manual_seed(123)
    plain_chunked_step(GradCache([ref_q, ref_d], loss_fn, **kw), q_batch, d_batch)
    diff = compare_grads(snapshot_grads([q_enc, d_enc]), snapshot_grads([ref_q, ref_d]))
    assert diff.max_rel <= FP32_TOL, diff


def test_dropout_on_differs_without_rng_replay(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Sanity check that the dropout test can fail: a different seed gives different gradients."""
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.1)
    ref = copy.deepcopy(q_enc)
    q_batch, d_batch = tokenize(tokenizer, texts(6, seed=9)), tokenize(tokenizer, texts(6, seed=10))
    torch.manual_seed(1)
    GradCache([q_enc, q_enc], loss_fn, chunk_size=2).step(q_batch, d_batch)
    torch.manual_seed(2)
    plain_chunked_step(GradCache([ref, ref], loss_fn, chunk_size=2), q_batch, d_batch)
    assert compare_grads(snapshot_grads([q_enc]), snapshot_grads([ref])).max_rel > 1e-3


def test_gradients_accumulate_like_backward(tokenizer) -> None:  # type: ignore[no-untyped-def]
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    gc = GradCache([q_enc, q_enc], loss_fn, chunk_size=2)
    q_batch, d_batch = (
        tokenize(tokenizer, texts(5, seed=11)),
        tokenize(tokenizer, texts(5, seed=12)),
    )
    gc.step(q_batch, d_batch)
    once = snapshot_grads([q_enc])
    gc.step(q_batch, d_batch)
    twice = snapshot_grads([q_enc])
    doubled = {k: 2 * v for k, v in once.items()}
    assert compare_grads(twice, doubled).max_rel <= FP32_TOL


def test_bf16_autocast_close_to_fp32(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """bf16 has an 8-bit mantissa: we accept 5% relative difference against an fp32 oracle."""
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    ref = copy.deepcopy(q_enc)
    q_batch, d_batch = (
        tokenize(tokenizer, texts(6, seed=13)),
        tokenize(tokenizer, texts(6, seed=14)),
    )
    GradCache([q_enc, q_enc], loss_fn, chunk_size=4, autocast_dtype=torch.bfloat16).step(
        q_batch, d_batch
    )
    plain_full_batch([ref, ref], loss_fn, q_batch, d_batch)
    diff = compare_grads(snapshot_grads([q_enc]), snapshot_grads([ref]))
    assert diff.max_rel <= 5e-2, diff


def test_bf16_cached_matches_bf16_same_chunk_reference(tokenizer) -> None:  # type: ignore[no-untyped-def]
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    ref = copy.deepcopy(q_enc)
    q_batch, d_batch = (
        tokenize(tokenizer, texts(6, seed=15)),
        tokenize(tokenizer, texts(6, seed=16)),
    )
    kw = {"chunk_size": 4, "autocast_dtype": torch.bfloat16}
    GradCache([q_enc, q_enc], loss_fn, **kw).step(q_batch, d_batch)
    plain_chunked_step(GradCache([ref, ref], loss_fn, **kw), q_batch, d_batch)
    assert compare_grads(snapshot_grads([q_enc]), snapshot_grads([ref])).max_rel <= 1e-2


def test_fp16_with_grad_scaler(tokenizer) -> None:  # type: ignore[no-untyped-def]
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    ref = copy.deepcopy(q_enc)
    q_batch, d_batch = (
        tokenize(tokenizer, texts(6, seed=17)),
        tokenize(tokenizer, texts(6, seed=18)),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    gc = GradCache(
        [q_enc, q_enc], loss_fn, chunk_size=4, autocast_dtype=torch.float16, scaler=scaler
    )
    gc.step(q_batch, d_batch)
    optimizer = torch.optim.SGD(q_enc.parameters(), lr=0.0)
    scaler.unscale_(optimizer)
    plain_full_batch([ref, ref], loss_fn, q_batch, d_batch)
    diff = compare_grads(snapshot_grads([q_enc]), snapshot_grads([ref]))
    assert diff.max_rel <= 5e-2, diff


def test_no_sync_wraps_all_but_final_backward(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """DDP contract: every graph (its forward and its backward) but the very last runs inside
    ``no_sync``, so gradients are all-reduced once; phase 3 reaches the weights through autograd
    (the accumulation hook sees each backward) and the gradient is still exact."""
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    ref = copy.deepcopy(q_enc)
    events: list[str] = []
    depth = [0]

    @contextlib.contextmanager
    def no_sync() -> Iterator[None]:
        events.append("enter")
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1
            events.append("exit")

    forwards: list[bool] = []  # per forward that builds a graph: inside no_sync?
    backwards: list[bool] = []  # per backward reaching the embedding weights: inside no_sync?

    def on_forward(module: nn.Module, args: object) -> None:
        if torch.is_grad_enabled():
            forwards.append(depth[0] > 0)

    q_enc.register_forward_pre_hook(on_forward)
    weights = q_enc.transformer.embeddings.word_embeddings.weight
    weights.register_post_accumulate_grad_hook(lambda _: backwards.append(depth[0] > 0))
    q_batch, d_batch = (
        tokenize(tokenizer, texts(5, seed=19)),
        tokenize(tokenizer, texts(5, seed=20)),
    )
    gc = GradCache([q_enc, q_enc], loss_fn, chunk_size=2, no_sync=no_sync)
    gc.step(q_batch, d_batch)
    # q: 3 chunks, the last kept from phase 1 (1 kept forward + backward, 2 replays); d: 3 chunks,
    # the second kept (under no_sync the very last chunk is replayed, so the final backward is a
    # replay outside no_sync). 2 kept forwards + 6 backwards, all but the last inside no_sync.
    assert forwards == [True] * 5 + [False]
    assert backwards == [True] * 5 + [False]
    assert events == ["enter", "exit"] * 7
    plain_full_batch([ref, ref], loss_fn, q_batch, d_batch)
    assert compare_grads(snapshot_grads([q_enc]), snapshot_grads([ref])).max_rel <= FP32_TOL


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[query_encoder, document_encoder\]"):
        GradCache([], loss_fn)
    with pytest.raises(ValueError, match="got 3 encoders"):
        GradCache([nn.Identity()] * 3, loss_fn)
    with pytest.raises(ValueError, match="chunk_size, token_budget"):
        GradCache([nn.Identity(), nn.Identity()], loss_fn, chunk_size=None)


def test_a_loss_that_breaks_the_contract_is_named() -> None:
    def bare(q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice) -> torch.Tensor:
        return info_nce(q, d, rows=rows)

    lin = nn.Linear(3, 3)
    gc = GradCache([lambda b: lin(b["x"])] * 2, bare, chunk_size=2)  # type: ignore[arg-type]
    x = {"x": torch.randn(4, 3)}
    with pytest.raises(TypeError, match=r"must return a dualforge\.losses\.LossOutput"):
        gc.step(x, x)


def test_step_returns_the_loss_and_its_parts(tokenizer) -> None:  # type: ignore[no-untyped-def]
    q_enc, _ = make_towers(tokenizer, tied=True, dropout=0.0)
    q_batch = tokenize(tokenizer, texts(4, seed=1, max_words=8))
    d_batch = tokenize(tokenizer, texts(4, seed=2))

    def with_parts(q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice) -> LossOutput:
        loss = info_nce(q, d, rows=rows)
        return LossOutput(loss, {"half": loss.detach() / 2, "nested": {"one": torch.ones(())}})

    result = GradCache([q_enc, q_enc], with_parts, chunk_size=3).step(q_batch, d_batch)
    assert result.parts == {"half": pytest.approx(float(result.loss) / 2), "nested": {"one": 1.0}}
    assert isinstance(result.parts["half"], float)
    plain = GradCache([q_enc, q_enc], InfoNCE(), chunk_size=3).step(q_batch, d_batch)
    assert plain.parts == {} and float(plain.loss) == pytest.approx(float(result.loss))
