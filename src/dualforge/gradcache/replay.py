"""The replay step shared by the engine and the functional form: re-run a forward, push a gradient."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from dualforge.gradcache.rng import RngState, replay_rng

Encoder = Callable[[Any], torch.Tensor]
ContextFactory = Callable[[], AbstractContextManager[Any]]


def no_context() -> AbstractContextManager[None]:
    """A context factory that does nothing."""
    return nullcontext()


def replay_backward(
    encoder: Encoder,
    inputs: Any,
    state: RngState,
    grad: torch.Tensor,
    autocast: ContextFactory = no_context,
) -> None:
    """Re-run ``encoder(inputs)`` from RNG ``state`` with a graph and backprop ``grad`` into it.

    Args:
        encoder: The callable that produced the cached representation.
        inputs: Its input (one chunk).
        state: RNG snapshot taken before the no-grad pass, so dropout masks match.
        grad: ``(B_c, ...)`` d(loss)/d(representation) for this chunk.
        autocast: Factory of the mixed-precision context the first pass ran under.
    """
    with replay_rng(state), torch.enable_grad(), autocast():
        out = encoder(inputs)
    torch.autograd.backward(out, grad.to(out.dtype))
