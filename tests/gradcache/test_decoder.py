"""Cached gradients equal plain ones on a tiny random decoder (Qwen2 shape, 2 layers): full
fine-tuning and LoRA, with and without activation checkpointing inside the chunks.

Dropout off, the oracle is the plain full-batch step in fp64; dropout on (attention dropout and
LoRA dropout), it is the same-chunk plain step from the same RNG stream, without checkpointing,
so checkpointing's recomputation is checked against kept activations.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dualforge import GradCache
from dualforge.gradcache.reference import compare_grads, plain_chunked_step, snapshot_grads
from dualforge.losses import InfoNCE, LossInputs
from dualforge.modeling import DualEncoder, Encoder
from dualforge.modeling.adapters import LoraSettings, add_lora, enable_checkpointing
from dualforge.modeling.decoder import prepare_tokenizer
from tests.conftest import decoder_tokenizer, make_tiny_decoder
from tests.gradcache.helpers import texts

FP32_TOL = 1e-5
FP64_TOL = 1e-10


loss_fn = InfoNCE(temperature=0.05)


def build(minilm_path, lora: bool, dropout: float, side: str = "left") -> DualEncoder:  # type: ignore[no-untyped-def]
    tok = decoder_tokenizer(minilm_path)
    prepare_tokenizer(tok, eos=True, padding_side=side)  # type: ignore[arg-type]
    model = DualEncoder(
        tok,
        Encoder(make_tiny_decoder(len(tok), dropout=dropout), "last", True, mask_positions=True),
    )
    if lora:
        torch.manual_seed(5)
        add_lora(model, LoraSettings(r=4, alpha=8, dropout=dropout))
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the adapters do something
                param.data.normal_(0, 0.1)
    model.train()
    return model


def batches(model: DualEncoder, n: int = 7) -> tuple[dict, dict]:  # type: ignore[type-arg]
    q = model.tokenize(texts(n, seed=1, max_words=10), "query", max_length=32)
    d = model.tokenize(texts(n, seed=2), "document", max_length=48)
    return q, d


def tower(model: DualEncoder):  # type: ignore[no-untyped-def]
    return model.query_encoder


def trained_grads(model: DualEncoder) -> dict[str, torch.Tensor]:
    grads = snapshot_grads([model])
    named = dict(model.named_parameters())
    return {k: v for k, v in grads.items() if named[k.split(".", 1)[1]].requires_grad}


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_cached_equals_plain_full_batch(minilm_path, lora: bool, checkpointing: bool) -> None:  # type: ignore[no-untyped-def]
    base = build(minilm_path, lora, dropout=0.0)
    q_batch, d_batch = batches(base)

    def grads(dtype: torch.dtype, cached: bool) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(base).to(dtype)
        if checkpointing and cached:
            enable_checkpointing(model)
        enc = tower(model)
        if cached:
            GradCache([enc, enc], loss_fn, chunk_size=3).step(q_batch, d_batch)
        else:
            q, d = enc(q_batch), enc(d_batch)
            loss_fn(q, d, LossInputs(), slice(0, q.shape[0])).loss.backward()
        return {k: v.double() for k, v in trained_grads(model).items()}

    oracle = grads(torch.float64, cached=False)
    assert compare_grads(grads(torch.float64, True), oracle).max_rel <= FP64_TOL
    assert compare_grads(grads(torch.float32, True), oracle).max_rel <= FP32_TOL


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("side", ["left", "right"])
def test_dropout_on_matches_same_chunk_reference(
    minilm_path, lora: bool, checkpointing: bool, side: str
) -> None:  # type: ignore[no-untyped-def]
    model = build(minilm_path, lora, dropout=0.1, side=side)
    ref = copy.deepcopy(model)
    if checkpointing:
        enable_checkpointing(model)
    q_batch, d_batch = batches(model)
    torch.manual_seed(123)
    GradCache([tower(model)] * 2, loss_fn, chunk_size=3).step(q_batch, d_batch)
    torch.manual_seed(123)
    plain_chunked_step(GradCache([tower(ref)] * 2, loss_fn, chunk_size=3), q_batch, d_batch)
    diff = compare_grads(trained_grads(model), trained_grads(ref))
    assert diff.max_rel <= FP32_TOL, diff


def test_dropout_on_differs_with_another_seed(minilm_path) -> None:  # type: ignore[no-untyped-def]
    """Sanity check that the dropout test can fail (LoRA dropout and attention dropout)."""
    model = build(minilm_path, lora=True, dropout=0.1)
    ref = copy.deepcopy(model)
    q_batch, d_batch = batches(model)
    torch.manual_seed(1)
    GradCache([tower(model)] * 2, loss_fn, chunk_size=3).step(q_batch, d_batch)
    torch.manual_seed(2)
    plain_chunked_step(GradCache([tower(ref)] * 2, loss_fn, chunk_size=3), q_batch, d_batch)
    assert compare_grads(trained_grads(model), trained_grads(ref)).max_rel > 1e-3


def test_lora_leaves_the_base_without_gradients(minilm_path) -> None:  # type: ignore[no-untyped-def]
    model = build(minilm_path, lora=True, dropout=0.0)
    q_batch, d_batch = batches(model)
    GradCache([tower(model)] * 2, loss_fn, chunk_size=3).step(q_batch, d_batch)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
