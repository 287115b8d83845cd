"""Oracles for Gradient Cache: plain backward over the same chunks, and gradient comparison.

:func:`plain_chunked_step` encodes the same chunks, in the same order, from the same RNG stream as
:meth:`GradCache.step`, but keeps every graph and calls one ``backward``: the textbook full-batch
gradient, with dropout masks identical to the cached run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dualforge.gradcache.chunking import scatter_rows
from dualforge.gradcache.engine import GradCache, upcast
from dualforge.losses.inputs import LossInputs, all_rows

REL_FLOOR = 1e-3


def plain_chunked_step(
    gc: GradCache,
    queries: Mapping[str, Any],
    documents: Mapping[str, Any],
    inputs: LossInputs | None = None,
) -> torch.Tensor:
    """Full-batch backward through ``gc``'s encoders and chunks, with every graph kept."""
    reps = []
    for encoder, batch in zip(gc.encoders, (queries, documents)):
        chunks = gc.split(batch)
        parts = []
        for chunk in chunks:
            with gc._autocast(chunk)():
                parts.append(encoder(chunk.inputs))
        reps.append(upcast(scatter_rows(parts, chunks)))
    loss, _ = gc.loss_fn(reps[0], reps[1], inputs or LossInputs(), all_rows(reps[0]))
    torch.autograd.backward(gc.scaler.scale(loss) if gc.scaler is not None else loss)
    return loss.detach()


@dataclass(frozen=True)
class GradDiff:
    """Largest gradient differences over parameters.

    Attributes:
        max_abs: Largest ``|g_a - g_b|`` over all entries.
        max_rel: Largest, over parameters, of ``||g_a - g_b||_2 / max(||g_b||_2, floor)``, where
            ``floor = 1e-3 * max_p ||g_b,p||_2``. Without the floor, parameters whose true gradient
            is zero (an attention key bias: softmax ignores a constant shift) would divide
            rounding noise by rounding noise.
        worst: Name of the parameter with the largest relative difference.
    """

    max_abs: float
    max_rel: float
    worst: str


def snapshot_grads(modules: Iterable[nn.Module]) -> dict[str, torch.Tensor]:
    """Copies of every parameter gradient (zeros where None), keyed ``"<module>.<param>"``."""
    grads: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for m, module in enumerate(modules):
        for name, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            grads[f"{m}.{name}"] = grad.detach().clone()
    return grads


def compare_grads(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> GradDiff:
    """Compare gradients ``a`` against the reference ``b`` (same keys); see :class:`GradDiff`."""
    if a.keys() != b.keys():
        raise ValueError("gradient sets name different parameters")
    norms = {name: float(g.double().norm()) for name, g in b.items()}
    floor = REL_FLOOR * max(norms.values(), default=0.0)
    max_abs, max_rel, worst = 0.0, 0.0, ""
    for name, ref in b.items():
        delta = a[name].double() - ref.double()
        diff = float(delta.norm())
        scale = max(norms[name], floor)
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        max_abs = max(max_abs, float(delta.abs().max()) if delta.numel() else 0.0)
        if rel > max_rel or not worst:
            max_rel, worst = rel, name
    return GradDiff(max_abs, max_rel, worst)
