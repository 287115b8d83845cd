"""Input checks shared by the public entry points."""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def as_matrix(x: Array, name: str, dim: int | None = None) -> torch.Tensor:
    """A float32 CPU ``(rows, d)`` tensor (a copy when needed).

    Args:
        x: Numpy array or tensor.
        name: What ``x`` holds, for error messages.
        dim: Required number of columns, if any.

    Returns:
        Contiguous float32 tensor.

    Raises:
        ValueError: For a wrong rank, dimension or a non-finite value.
    """
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (rows, dim) array, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} have dimension {t.shape[1]}, the index has {dim}")
    t = t.to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return t
