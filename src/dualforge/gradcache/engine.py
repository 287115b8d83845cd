"""Gradient Cache (Gao et al. 2021): full-batch contrastive gradients with one chunk in memory.

The four phases, one method each:

1. :meth:`GradCache.forward_no_grad` - encode every chunk without a graph, remembering RNG state.
2. :meth:`GradCache.build_cache` - full-batch loss on the detached representations; cache
   d(loss)/d(representation).
3. :meth:`GradCache.forward_backward` - re-encode each chunk with a graph from the same RNG state
   and backprop its slice of the cached gradient.
4. The optimizer step stays with the caller.

The last ``keep_graphs`` chunks of each tower keep their graphs from phase 1, so they are not
recomputed. Under several processes (an :class:`~dualforge.gradcache.exchange.Exchange`), phase 2
gathers every process's representations, computes this process's queries' share of the loss and
hands each process the gradient of its own rows (section 3.4 of the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from dualforge.gradcache.chunking import Chunk, scatter_rows, split_batch, take_rows
from dualforge.gradcache.exchange import Exchange, LocalExchange
from dualforge.gradcache.replay import ContextFactory, Encoder, no_context, replay_backward
from dualforge.gradcache.rng import RngState, cuda_devices, replay_rng
from dualforge.losses.inputs import Loss, LossInputs
from dualforge.losses.output import LossOutput, Parts, plain_parts


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
    kept: dict[int, torch.Tensor]  # chunk index -> its output with the phase-1 graph


class GradCache:
    """Compute exact full-batch gradients of a contrastive loss chunk by chunk.

    Args:
        encoders: ``[query_encoder, document_encoder]``; each maps a batch dict of tensors with a
            leading batch dim to a ``(B, D)`` (or token-level ``(B, T, D + 1)``) tensor. The same
            module may appear twice (tied towers).
        loss_fn: A :class:`~dualforge.losses.inputs.Loss`, ``loss_fn(q, d, inputs, rows) ->
            LossOutput`` (a scalar and named parts to log). It may own parameters (a learned
            temperature); they get their gradient in phase 2. Per-step inputs (false-negative
            codes, the step that samples Matryoshka dims, per-example extras) go in through
            ``step``'s ``inputs``.
        chunk_size: Most rows per chunk.
        token_budget: Most padded tokens per chunk (rows x longest row); combines with chunk_size.
        sort_by_length: Chunk rows longest-first, so each chunk pads only to its own longest row
            (exact; on variable-length text it saves most of the padding work). Default on.
        trim: Cut each chunk's padding columns beyond its longest row (exact under masking).
        keep_graphs: Run each tower's last K chunks with a graph in phase 1 and reuse them instead
            of recomputing them (exact: the same forward; each kept chunk holds its activations
            until phase 3). 0 replays every chunk. With ``no_sync`` the very last chunk is still
            replayed so that DDP synchronises on exactly one backward.
        autocast_dtype: Run the encoders under ``torch.autocast`` with this dtype (bf16 or fp16).
            The loss always runs in fp32.
        scaler: A ``torch.amp.GradScaler`` for fp16: the loss is scaled before caching gradients.
        no_sync: Factory of a context that suspends gradient all-reduce (``ddp_model.no_sync``);
            every backward but the final one runs inside it.
        exchange: The processes this engine runs in (default: one). With several, each process
            passes its own rows; the loss gets ``rows=slice(...)``, its queries' rows of the
            gathered queries (``slice(0, B)`` in one process), and returns that share of the
            full-batch loss (the loss contract); each share of the gradient is scaled by
            ``exchange.grad_scale`` for the averaging reduction that follows. Parameters owned
            by the loss get the summed gradient directly. All processes run the same number of
            backward passes (empty one-row replays pad the shorter ones).
    """

    def __init__(
        self,
        encoders: Sequence[Encoder],
        loss_fn: Loss,
        chunk_size: int | None = 8,
        *,
        token_budget: int | None = None,
        sort_by_length: bool = True,
        trim: bool = True,
        keep_graphs: int = 1,
        autocast_dtype: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
        no_sync: ContextFactory | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        if len(encoders) != 2:
            raise ValueError(
                f"GradCache needs [query_encoder, document_encoder] (the same module twice for "
                f"tied towers), got {len(encoders)} encoders"
            )
        if chunk_size is None and token_budget is None:
            raise ValueError("set chunk_size, token_budget or both")
        if keep_graphs < 0:
            raise ValueError(f"keep_graphs must be >= 0, got {keep_graphs}")
        self.encoders = list(encoders)
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.token_budget = token_budget
        self.sort_by_length = sort_by_length
        self.trim = trim
        self.keep_graphs = keep_graphs
        self.autocast_dtype = autocast_dtype
        self.scaler = scaler
        self.no_sync = no_sync
        self.exchange: Exchange = exchange if exchange is not None else LocalExchange()

    def split(self, batch: Mapping[str, Any]) -> list[Chunk]:
        """Chunks of one tower's batch, as the engine will run them."""
        return split_batch(
            batch, self.chunk_size, self.token_budget, self.sort_by_length, self.trim
        )

    def step(
        self,
        queries: Mapping[str, Any],
        documents: Mapping[str, Any],
        inputs: LossInputs | None = None,
    ) -> StepResult:
        """Run phases 1-3 on one batch per tower; leave the full-batch gradient in ``.grad``.

        Args:
            queries: The query tower's tokenizer-output dict (this process's rows).
            documents: The document tower's, ``n`` rows per query, grouped by query.
            inputs: What the loss gets beside the representations (default: step 0, no mask).

        Returns:
            The (unscaled) detached loss and the loss's named parts.
        """
        batches = (queries, documents)
        passes = []
        split = [self.split(batch) for batch in batches]
        missing = [self._missing(len(chunks)) for chunks in split]  # agreed before any forward
        for t, (encoder, chunks) in enumerate(zip(self.encoders, split)):
            tower = self.forward_no_grad(encoder, chunks, self.kept_chunks(t, len(chunks)))
            for _ in range(missing[t]):
                self._empty_forward(tower)
            passes.append(tower)
        loss, parts, grads = self.build_cache([p.reps for p in passes], inputs or LossInputs())
        self.forward_backward(passes, grads)
        return StepResult(loss, plain_parts(parts))

    def kept_chunks(self, tower: int, n: int) -> range:
        """Indices of the ``n`` chunks of tower ``tower`` that keep their phase-1 graph."""
        last = n - 1 if self.no_sync is not None and tower == len(self.encoders) - 1 else n
        return range(max(last - self.keep_graphs, 0), last)

    def forward_no_grad(
        self, encoder: Encoder, chunks: list[Chunk], keep: range = range(0)
    ) -> TowerPass:
        """Phase 1: encode every chunk, recording RNG state; chunks in ``keep`` (see
        :meth:`kept_chunks`) keep their graph."""
        states: list[RngState] = []
        parts: list[torch.Tensor] = []
        kept: dict[int, torch.Tensor] = {}
        for i, chunk in enumerate(chunks):
            states.append(RngState.capture(cuda_devices(chunk.inputs)))
            if i in keep:
                with self._sync_off(), torch.enable_grad(), self._autocast(chunk)():
                    kept[i] = encoder(chunk.inputs)
                parts.append(kept[i].detach())
                continue
            with torch.no_grad(), self._autocast(chunk)():
                parts.append(encoder(chunk.inputs))
        return TowerPass(encoder, chunks, states, scatter_rows(parts, chunks), kept)

    def build_cache(
        self, reps: Sequence[torch.Tensor], inputs: LossInputs
    ) -> tuple[torch.Tensor, Parts, list[torch.Tensor]]:
        """Phase 2: loss on detached fp32 representations (every process's, gathered) for this
        process's query rows; return the full-batch loss, its parts and d(loss)/d(this process's
        reps)."""
        ex = self.exchange
        leaves = [ex.gather(upcast(r).detach()).requires_grad_() for r in reps]
        b = reps[0].shape[0]
        rows = slice(ex.rank * b, (ex.rank + 1) * b)
        owned = _loss_parameters(self.loss_fn)
        with torch.enable_grad():
            out = self.loss_fn(leaves[0], leaves[1], inputs, rows)
            if not isinstance(out, LossOutput):
                raise TypeError(
                    f"loss_fn must return a dualforge.losses.LossOutput, got {type(out).__name__}"
                )
            loss, parts = out
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            scaled = self.scaler.scale(loss) if self.scaler is not None else loss
            found = torch.autograd.grad(scaled, [*leaves, *owned], allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(found, leaves)]
        for param, grad in zip(owned, found[len(leaves) :]):
            if grad is not None:
                grad = ex.total(grad)
                param.grad = grad if param.grad is None else param.grad + grad
        grads = [
            ex.scatter(g, r.shape[1] if r.dim() >= 3 else None) * ex.grad_scale
            if ex.world > 1 else g
            for g, r in zip(grads, reps)
        ]  # fmt: skip
        if ex.world > 1:
            loss, parts = _summed(ex, loss.detach(), parts)
        return loss.detach(), parts, grads

    def forward_backward(self, passes: Sequence[TowerPass], grads: Sequence[torch.Tensor]) -> None:
        """Phase 3: backprop the cached gradients, kept graphs first, then each tower's chunk
        replays; under several processes every tower runs as many replays as on the process
        with the most (the last backward runs outside ``no_sync``)."""
        kept: list[Callable[[], None]] = []
        replays: list[Callable[[], None]] = []
        for tower, grad in zip(passes, grads):
            chunk_grads = [c.place(grad) for c in tower.chunks]  # (B_c, ...) or (B_c, T_c, ...)
            own: list[Callable[[], None]] = []
            for i, (chunk, state, g) in enumerate(zip(tower.chunks, tower.states, chunk_grads)):
                if i in tower.kept:
                    kept.append(partial(_backward, tower.kept[i], g))
                    continue
                autocast = self._autocast(chunk)
                own.append(
                    partial(replay_backward, tower.encoder, chunk.inputs, state, g, autocast)
                )
            replays += own + [partial(self._empty_replay, tower)] * self._missing(len(own))
        jobs = kept + replays
        for job in jobs[:-1]:
            with self._sync_off():
                job()
        jobs[-1]()

    def _missing(self, count: int) -> int:
        """How many passes this process lacks against the process with the most (0 alone)."""
        return self.exchange.most(count) - count if self.exchange.world > 1 else 0

    def _one_row(self, tower: TowerPass) -> dict[str, Any]:
        return take_rows(tower.chunks[0].inputs, torch.zeros(1, dtype=torch.long), self.trim)

    def _empty_forward(self, tower: TowerPass) -> None:
        """A no-grad forward of one row whose output is dropped (RNG left untouched): keeps
        the processes' forward counts equal when a forward runs a collective (FSDP)."""
        chunk = tower.chunks[0]
        with replay_rng(tower.states[0]), torch.no_grad(), self._autocast(chunk)():
            tower.encoder(self._one_row(tower))

    def _empty_replay(self, tower: TowerPass) -> None:
        """A backward that changes no gradient: one row of the first chunk, zero gradient (it
        keeps the processes' backward counts equal, so per-pass collectives line up)."""
        chunk = tower.chunks[0]
        with replay_rng(tower.states[0]), torch.enable_grad(), self._autocast(chunk)():
            out = tower.encoder(self._one_row(tower))
        torch.autograd.backward(out, torch.zeros_like(out))

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


def _loss_parameters(loss_fn: Loss) -> list[torch.Tensor]:
    """Trainable parameters the loss owns (a learned temperature, a head), if it is a module."""
    if isinstance(loss_fn, torch.nn.Module):
        return [p for p in loss_fn.parameters() if p.requires_grad]
    return []


def _summed(ex: Exchange, loss: torch.Tensor, parts: Parts) -> tuple[torch.Tensor, Parts]:
    """The loss and its tensor parts summed over processes (the shares add up to the full
    batch's values), in one collective."""
    keys: list[tuple[str, ...]] = []
    values: list[torch.Tensor] = [loss.reshape(())]
    _flatten(parts, (), keys, values)
    total = ex.total(torch.stack([v.detach().float().reshape(()) for v in values]))
    out: dict[str, Any] = _copy_nested(parts)
    for path, value in zip(keys, total[1:]):
        node = out
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return total[0], out


def _flatten(
    parts: Parts, prefix: tuple[str, ...], keys: list[tuple[str, ...]], values: list[torch.Tensor]
) -> None:
    for key, value in parts.items():
        if isinstance(value, Mapping):
            _flatten(value, (*prefix, key), keys, values)
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            keys.append((*prefix, key))
            values.append(value.to(values[0].device))


def _copy_nested(parts: Parts) -> dict[str, Any]:
    return {k: _copy_nested(v) if isinstance(v, Mapping) else v for k, v in parts.items()}


def _backward(out: torch.Tensor, grad: torch.Tensor) -> None:
    torch.autograd.backward(out, grad.to(out.dtype))


def _device_type(inputs: Mapping[str, Any]) -> str:
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"
