"""Gradient Cache for your own loop: a decorator that caches an encoder call and replays it later.

Example::

    @cached
    def encode(model, batch):
        return model(batch)  # (B_c, D)

    q = [encode(model, c) for c in q_chunks]          # [(rep, replay), ...], no graphs kept
    d = [encode(model, c) for c in d_chunks]
    loss = info_nce(torch.cat([r for r, _ in q]), torch.cat([r for r, _ in d]))
    loss.backward()                                   # gradients stop at the cached reps
    replay_all(q + d)                                 # re-encode each chunk, push rep.grad
    optimizer.step()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial, wraps
from typing import Any, ParamSpec

import torch

from dualforge.gradcache.replay import replay_backward
from dualforge.gradcache.rng import RngState, cuda_devices

P = ParamSpec("P")
Replay = Callable[[torch.Tensor], None]


def _devices_of(args: Iterable[Any]) -> list[int]:
    devices: set[int] = set()
    for arg in args:
        if isinstance(arg, Mapping):
            devices.update(cuda_devices(arg))
        elif isinstance(arg, torch.Tensor) and arg.device.type == "cuda":
            devices.add(arg.device.index or 0)
    return sorted(devices)


def cached(
    fn: Callable[P, torch.Tensor],
) -> Callable[P, tuple[torch.Tensor, Replay]]:
    """Wrap an encoder call so it runs without a graph and can be replayed with one.

    The wrapped call returns ``(rep, replay)``: ``rep`` is a detached leaf that requires grad (use
    it in your loss); after ``loss.backward()``, ``replay(rep.grad)`` re-runs ``fn`` from the same
    RNG state (same dropout) and backprops that gradient into the parameters.
    """

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> tuple[torch.Tensor, Replay]:
        state = RngState.capture(_devices_of([*args, *kwargs.values()]))
        with torch.no_grad():
            rep = fn(*args, **kwargs)
        leaf = rep.detach().requires_grad_()

        def call(_: Any) -> torch.Tensor:
            return fn(*args, **kwargs)

        return leaf, partial(replay_backward, call, None, state)

    return wrapper


def replay_all(pairs: Iterable[tuple[torch.Tensor, Replay]]) -> None:
    """Replay every cached call with its representation's gradient (after ``loss.backward()``).

    Raises:
        ValueError: If a representation has no gradient (the loss did not use it, or no backward).
    """
    for i, (rep, replay) in enumerate(pairs):
        if rep.grad is None:
            raise ValueError(f"cached representation {i} has no .grad; call loss.backward() first")
        replay(rep.grad)
