"""What a loss may return besides a scalar: the scalar plus named parts to log.

A loss function returns either a 0-dim tensor or a :class:`LossOutput`. The parts are values a
caller may want to see (the loss at each Matryoshka dim, say) and never carry a gradient; the
Gradient Cache engine hands them back as floats in its step result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

Parts = Mapping[str, Any]  # str -> 0-dim tensor / float, or a nested mapping of those


class LossOutput(NamedTuple):
    """A scalar loss (with its graph) and named, detached parts (e.g. ``{"loss_by_dim": ...}``)."""

    loss: torch.Tensor
    parts: Parts


def split_output(out: torch.Tensor | LossOutput) -> tuple[torch.Tensor, Parts]:
    """``(loss, parts)`` of a loss function's return value (no parts for a bare tensor)."""
    if isinstance(out, LossOutput):
        return out.loss, out.parts
    return out, {}


def plain_parts(parts: Parts) -> dict[str, Any]:
    """``parts`` with every tensor as a Python float (JSON friendly), nesting kept."""
    out: dict[str, Any] = {}
    for key, value in parts.items():
        if isinstance(value, Mapping):
            out[key] = plain_parts(value)
        elif isinstance(value, torch.Tensor):
            out[key] = float(value.detach())
        else:
            out[key] = value
    return out
