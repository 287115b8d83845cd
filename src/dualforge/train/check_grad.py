"""Gradient-equivalence check: one batch through GradCache and through a plain backward."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from dualforge.gradcache import GradCache
from dualforge.gradcache.reference import (
    GradDiff,
    compare_grads,
    plain_chunked_step,
    snapshot_grads,
)
from dualforge.losses import InfoNCE, info_nce
from dualforge.modeling import DualEncoder, load_model


@dataclass(frozen=True)
class GradCheck:
    """Result of :func:`check_gradients`."""

    loss_cached: float
    loss_plain: float
    diff: GradDiff
    seconds_cached: float
    seconds_plain: float
    reference: str


def random_batch(model: DualEncoder, rows: int, max_len: int, seed: int) -> dict[str, torch.Tensor]:
    """Tokenizer-shaped batch of random word pieces, lengths spread over ``[4, max_len]``."""
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    vocab = torch.tensor([i for i in range(len(tok)) if i not in special])
    lengths = torch.randint(4, max_len + 1, (rows,), generator=g)
    ids = torch.full((rows, max_len), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(rows, max_len, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        body = vocab[torch.randint(len(vocab), (n - 2,), generator=g)]
        ids[i, :n] = torch.cat(
            [torch.tensor([tok.cls_token_id]), body, torch.tensor([tok.sep_token_id])]
        )
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def check_gradients(
    model: str | DualEncoder = "minilm",
    batch: int = 32,
    chunk: int = 8,
    *,
    dropout: bool = True,
    max_len: int = 32,
    sort_by_length: bool = False,
    seed: int = 0,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> GradCheck:
    """Run one batch cached and plain from the same weights and compare parameter gradients.

    With dropout on, the plain reference encodes the same chunks in the same order from the same
    seed while keeping every graph (so both runs draw identical dropout masks) and calls one
    backward. With dropout off, the reference is a single full-batch forward and backward.

    Args:
        model: A model name for :func:`load_model` or a loaded :class:`DualEncoder`.
        batch: Queries per batch (documents: the same number, one positive each).
        chunk: GradCache chunk size.
        dropout: Train mode (dropout on) or eval mode.
        max_len: Longest random sequence.
        sort_by_length: Use length-sorted chunks.
        seed: Seed for the batch and for dropout.
        device: Where both runs happen (``cuda`` replays the CUDA RNG state too).
        autocast_dtype: Encoders under autocast in this dtype (both runs; bf16 / fp16).
    """
    cached = (load_model(model) if isinstance(model, str) else model).to(device)
    plain = copy.deepcopy(cached)
    for m in (cached, plain):
        m.train(dropout)
        m.zero_grad(set_to_none=True)
    q_batch = {k: v.to(device) for k, v in random_batch(cached, batch, max_len, seed).items()}
    d_batch = {k: v.to(device) for k, v in random_batch(cached, batch, max_len, seed + 1).items()}

    def engine(m: DualEncoder) -> GradCache:
        towers = [m.query_encoder, m.doc_encoder]
        return GradCache(
            towers, InfoNCE(), chunk, sort_by_length=sort_by_length, autocast_dtype=autocast_dtype
        )

    gc = engine(cached)
    torch.manual_seed(seed)
    start = time.perf_counter()
    loss_c = float(gc.step(q_batch, d_batch).loss)
    mid = time.perf_counter()
    torch.manual_seed(seed)
    if dropout:
        loss_p = float(plain_chunked_step(engine(plain), q_batch, d_batch))
        reference = "plain backward over the same chunks, same RNG stream"
    else:
        with torch.autocast(
            torch.device(device).type, autocast_dtype, enabled=bool(autocast_dtype)
        ):
            q, d = plain(q_batch, "query"), plain(d_batch, "document")
        loss = info_nce(q.float(), d.float())
        torch.autograd.backward(loss)
        loss_p, reference = float(loss.detach()), "plain full-batch backward"
    end = time.perf_counter()
    diff = compare_grads(snapshot_grads([cached]), snapshot_grads([plain]))
    return GradCheck(loss_c, loss_p, diff, mid - start, end - mid, reference)
