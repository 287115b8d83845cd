"""Gradient Cache (Gao et al. 2021): full-batch contrastive gradients with one chunk in memory.

The four phases, one method each:

1. :meth:`GradCache.forward_no_grad` - encode every chunk without a graph, remembering RNG state.
2. :meth:`GradCache.build_cache` - full-batch loss on the detached representations; cache
   d(loss)/d(representation).
3. :meth:`GradCache.forward_backward` - re-encode each chunk with a graph from the same RNG state
   and backprop its slice of the cached gradient.
4. The optimizer step stays with the caller.

The last chunk of each tower keeps its graph from phase 1, so it is not recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from dualforge.gradcache.chunking import Chunk, scatter_rows, split_batch
from dualforge.gradcache.replay import ContextFactory, Encoder, no_context, replay_backward
from dualforge.gradcache.rng import RngState, cuda_devices
from dualforge.losses.output import LossOutput, plain_parts, split_output

LossFn = Callable[..., torch.Tensor | LossOutput]


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`GradCache.step` returns (the gradients are in ``.grad``).

    Attributes:
        loss: The (unscaled) loss, a detached 0-dim tensor.
        parts: The loss's named parts as floats when it returned a
            :class:`~dualforge.losses.output.LossOutput` (e.g. ``{"loss_by_dim": {"32": 0.9}}``),
            else empty.
    """

    loss: torch.Tensor
    parts: dict[str, Any]


@dataclass
class TowerPass:
    """What phase 1 leaves for phase 3, for one tower."""

    encoder: Encoder
    chunks: list[Chunk]
    states: list[RngState]
    reps: torch.Tensor  # (B, ...) detached, original row order
    kept: torch.Tensor | None  # last chunk's output with its graph, or None


class GradCache:
    """Compute exact full-batch gradients of a contrastive loss chunk by chunk.

    Args:
        encoders: One callable per tower (e.g. ``[q_encoder, d_encoder]``); each maps a batch dict
            of tensors with a leading batch dim to a ``(B, D)`` tensor. The same module may appear
            twice (tied towers).
        loss_fn: ``loss_fn(*reps, **loss_kwargs)`` returning a scalar, or a
            :class:`~dualforge.losses.output.LossOutput` (a scalar and named parts to log). It may
            own parameters (a learned temperature); they get their gradient in phase 2. Per-step
            inputs (a false-negative mask, a dim-sampling step) go in through ``step``'s keyword
            arguments.
        chunk_size: Most rows per chunk.
        token_budget: Most padded tokens per chunk (rows x longest row); combines with chunk_size.
        sort_by_length: Chunk rows longest-first, so each chunk pads only to its own longest row
            (exact; on variable-length text it saves most of the padding work). Default on.
        trim: Cut each chunk's padding columns beyond its longest row (exact under masking).
        keep_last_graph: Run each tower's last chunk with a graph in phase 1 and reuse it, instead
            of recomputing it. Exact: it is the same forward. With ``no_sync`` the very last chunk
            is still replayed so that DDP synchronises on exactly one backward.
        autocast_dtype: Run the encoders under ``torch.autocast`` with this dtype (bf16 or fp16).
            The loss always runs in fp32.
        scaler: A ``torch.amp.GradScaler`` for fp16: the loss is scaled before caching gradients.
        no_sync: Factory of a context that suspends gradient all-reduce (``ddp_model.no_sync``);
            every backward but the final one runs inside it.
    """

    def __init__(
        self,
        encoders: Sequence[Encoder],
        loss_fn: LossFn,
        chunk_size: int | None = 8,
        *,
        token_budget: int | None = None,
        sort_by_length: bool = True,
        trim: bool = True,
        keep_last_graph: bool = True,
        autocast_dtype: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
        no_sync: ContextFactory | None = None,
    ) -> None:
        if not encoders:
            raise ValueError("GradCache needs at least one encoder")
        if chunk_size is None and token_budget is None:
            raise ValueError("set chunk_size, token_budget or both")
        self.encoders = list(encoders)
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.token_budget = token_budget
        self.sort_by_length = sort_by_length
        self.trim = trim
        self.keep_last_graph = keep_last_graph
        self.autocast_dtype = autocast_dtype
        self.scaler = scaler
        self.no_sync = no_sync

    def split(self, batch: Mapping[str, Any]) -> list[Chunk]:
        """Chunks of one tower's batch, as the engine will run them."""
        return split_batch(
            batch, self.chunk_size, self.token_budget, self.sort_by_length, self.trim
        )

    def step(self, *batches: Mapping[str, Any], **loss_kwargs: Any) -> StepResult:
        """Run phases 1-3 on one batch per tower; leave the full-batch gradient in ``.grad``.

        Args:
            *batches: One tokenizer-output dict per encoder, in the order of ``encoders``.
            **loss_kwargs: Passed to ``loss_fn`` (e.g. a false-negative mask).

        Returns:
            The (unscaled) detached loss and the loss's named parts.
        """
        if len(batches) != len(self.encoders):
            raise ValueError(f"got {len(batches)} batches for {len(self.encoders)} encoders")
        passes = []
        for t, (encoder, batch) in enumerate(zip(self.encoders, batches)):
            keep = self.keep_last_graph and not (self.no_sync and t == len(batches) - 1)
            passes.append(self.forward_no_grad(encoder, self.split(batch), keep))
        loss, parts, grads = self.build_cache([p.reps for p in passes], loss_kwargs)
        self.forward_backward(passes, grads)
        return StepResult(loss, plain_parts(parts))

    def forward_no_grad(self, encoder: Encoder, chunks: list[Chunk], keep_last: bool) -> TowerPass:
        """Phase 1: encode every chunk, recording RNG state; keep the last graph if asked."""
        states: list[RngState] = []
        parts: list[torch.Tensor] = []
        kept: torch.Tensor | None = None
        for i, chunk in enumerate(chunks):
            states.append(RngState.capture(cuda_devices(chunk.inputs)))
            if keep_last and i == len(chunks) - 1:
                with self._sync_off(), torch.enable_grad(), self._autocast(chunk)():
                    kept = encoder(chunk.inputs)
                parts.append(kept.detach())
                continue
            with torch.no_grad(), self._autocast(chunk)():
                parts.append(encoder(chunk.inputs))
        return TowerPass(encoder, chunks, states, scatter_rows(parts, chunks), kept)

    def build_cache(
        self, reps: Sequence[torch.Tensor], loss_kwargs: Mapping[str, Any]
    ) -> tuple[torch.Tensor, Mapping[str, Any], list[torch.Tensor]]:
        """Phase 2: loss on detached fp32 representations; return it, its parts and
        d(loss)/d(reps)."""
        leaves = [upcast(r).detach().requires_grad_() for r in reps]
        with torch.enable_grad():
            loss, parts = split_output(self.loss_fn(*leaves, **loss_kwargs))
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            scaled = self.scaler.scale(loss) if self.scaler is not None else loss
            torch.autograd.backward(scaled)
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        return loss.detach(), parts, grads

    def forward_backward(self, passes: Sequence[TowerPass], grads: Sequence[torch.Tensor]) -> None:
        """Phase 3: backprop the cached gradients, kept graphs first, then chunk replays."""
        jobs: list[Callable[[], None]] = []
        for tower, grad in zip(passes, grads):
            chunk_grads = [grad[c.rows.to(grad.device)] for c in tower.chunks]  # (B_c, ...)
            if tower.kept is not None:
                jobs.insert(0, partial(_backward, tower.kept, chunk_grads[-1]))
            replayed = len(tower.chunks) - (tower.kept is not None)
            for chunk, state, g in list(zip(tower.chunks, tower.states, chunk_grads))[:replayed]:
                autocast = self._autocast(chunk)
                jobs.append(
                    partial(replay_backward, tower.encoder, chunk.inputs, state, g, autocast)
                )
        for job in jobs[:-1]:
            with self._sync_off():
                job()
        jobs[-1]()

    def _sync_off(self) -> AbstractContextManager[Any]:
        return self.no_sync() if self.no_sync is not None else no_context()

    def _autocast(self, chunk: Chunk) -> ContextFactory:
        if self.autocast_dtype is None:
            return no_context
        device_type = _device_type(chunk.inputs)
        return partial(torch.autocast, device_type=device_type, dtype=self.autocast_dtype)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 tensors as fp32 (the loss runs in at least fp32); others unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _backward(out: torch.Tensor, grad: torch.Tensor) -> None:
    torch.autograd.backward(out, grad.to(out.dtype))


def _device_type(inputs: Mapping[str, Any]) -> str:
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"
