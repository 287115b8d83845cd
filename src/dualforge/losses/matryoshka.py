"""Matryoshka Representation Learning (Kusupati et al. 2022) as a wrapper over any loss.

The loss of a batch is a weighted sum over nested prefixes of the representations:

    L = sum_m c_m * inner(q[:, :m], d[:, :m])

It is a function of representations only, so under Gradient Cache the encoder still runs once per
chunk whatever the number of dims: the prefixes are sliced from the cached representations and
their gradients flow back into the one representation gradient that is replayed. No model code is
patched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F

from dualforge.losses.output import LossOutput

InnerLoss = Callable[..., torch.Tensor]


def default_dims(full: int, smallest: int = 32) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``full``, then ``full`` itself.

    Args:
        full: The representation size (e.g. 384).
        smallest: The smallest prefix.

    Returns:
        E.g. ``(32, 64, 128, 256, 384)`` for 384.

    Raises:
        ValueError: If ``smallest`` or ``full`` is not positive.
    """
    if full < 1 or smallest < 1:
        raise ValueError(f"dims must be positive, got full={full}, smallest={smallest}")
    dims, m = [], smallest
    while m < full:
        dims.append(m)
        m *= 2
    return (*dims, full)


def check_dims(dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
    """Validate nesting dims (strictly increasing, positive) and their weights.

    Raises:
        ValueError: Naming what is wrong.
    """
    if not dims:
        raise ValueError("Matryoshka needs at least one dim")
    if any(m < 1 for m in dims) or any(a >= b for a, b in pairwise(dims)):
        raise ValueError(f"Matryoshka dims must be positive and strictly increasing, got {dims}")
    if weights is not None and len(weights) != len(dims):
        raise ValueError(f"{len(weights)} Matryoshka weights for {len(dims)} dims {tuple(dims)}")
    if weights is not None and any(w < 0 for w in weights):
        raise ValueError(f"Matryoshka weights must be >= 0, got {tuple(weights)}")


def prefix(x: torch.Tensor, dim: int, renormalize: bool) -> torch.Tensor:
    """The first ``dim`` columns of ``x``, L2-renormalised when asked.

    Args:
        x: ``(B, D)`` representations.
        dim: Prefix size, ``1 <= dim <= D``.
        renormalize: Rescale each prefix row to unit length (for normalised embeddings).

    Returns:
        ``(B, dim)`` tensor.
    """
    if not 0 < dim <= x.shape[-1]:
        raise ValueError(f"Matryoshka dim {dim} is outside 1..{x.shape[-1]}")
    part = x[..., :dim]  # (B, dim)
    return F.normalize(part, p=2.0, dim=-1) if renormalize else part


def matryoshka_losses(
    inner: InnerLoss,
    reps: Sequence[torch.Tensor],
    dims: Sequence[int],
    *,
    renormalize: bool = False,
    **inner_kwargs: Any,
) -> torch.Tensor:
    """The inner loss at every prefix dim.

    Args:
        inner: ``inner(*reps, **inner_kwargs)`` returning a scalar (e.g. ``info_nce``).
        reps: Representations, each ``(B_i, D)`` (queries, documents, ...).
        dims: Prefix sizes.
        renormalize: L2-renormalise each prefix (use when the model outputs unit vectors and the
            inner loss scores with a dot product).
        **inner_kwargs: Passed to ``inner`` at every dim.

    Returns:
        ``(M,)`` tensor, the loss at each of the ``M`` dims.
    """
    values = [inner(*(prefix(r, m, renormalize) for r in reps), **inner_kwargs) for m in dims]
    return torch.stack(values)  # (M,)


class MatryoshkaLoss:
    """``sum_m c_m * inner(prefix_m(reps))`` with optional sampling of dims per call.

    Holds settings only: each call is a function of its inputs. With ``sample_dims`` the dims of a
    call are drawn from a generator seeded by ``(seed, step)``, so a resumed run draws the same
    dims, and the global RNG (which Gradient Cache replays to reproduce dropout) is never touched.
    Returns a :class:`~dualforge.losses.output.LossOutput` whose ``parts["loss_by_dim"]`` maps
    each used dim (as a string) to its inner loss.

    Args:
        inner: Representation-level loss, ``inner(*reps, **kwargs) -> scalar``.
        dims: Strictly increasing prefix sizes; the largest should be the full size.
        weights: Relative importance ``c_m`` of each dim (default 1 each).
        renormalize: L2-renormalise each prefix before ``inner``.
        sample_dims: When set, each call uses this many dims drawn uniformly without replacement,
            and scales their sum by ``M / sample_dims`` so the loss is an unbiased estimate of the
            full sum. Calls must then pass ``step``.
        seed: Seed of dim sampling.
    """

    def __init__(
        self,
        inner: InnerLoss,
        dims: Sequence[int],
        *,
        weights: Sequence[float] | None = None,
        renormalize: bool = False,
        sample_dims: int | None = None,
        seed: int = 0,
    ) -> None:
        check_dims(dims, weights)
        if sample_dims is not None and not 0 < sample_dims <= len(dims):
            raise ValueError(f"sample_dims={sample_dims} must be in 1..{len(dims)}")
        self.inner = inner
        self.dims = tuple(int(m) for m in dims)
        self.weights = tuple(float(w) for w in weights) if weights else (1.0,) * len(dims)
        self.renormalize = renormalize
        self.sample_dims = sample_dims
        self.seed = seed

    @property
    def samples(self) -> bool:
        """Whether a call uses a sampled subset of the dims."""
        return self.sample_dims is not None and self.sample_dims < len(self.dims)

    def pick(self, step: int | None = None) -> list[int]:
        """Indices of the dims a call at ``step`` uses (all of them unless sampling).

        Raises:
            ValueError: When sampling and ``step`` is None.
        """
        if not self.samples:
            return list(range(len(self.dims)))
        if step is None:
            raise ValueError("MatryoshkaLoss with sample_dims needs step=<training step> per call")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        order = torch.randperm(len(self.dims), generator=generator)
        return sorted(order[: self.sample_dims].tolist())

    def __call__(
        self, *reps: torch.Tensor, step: int | None = None, **inner_kwargs: Any
    ) -> LossOutput:
        """Weighted sum of the inner loss over the (sampled) prefix dims, and the loss by dim."""
        chosen = self.pick(step)
        dims = [self.dims[i] for i in chosen]
        values = matryoshka_losses(
            self.inner, reps, dims, renormalize=self.renormalize, **inner_kwargs
        )  # (m,)
        weights = torch.tensor([self.weights[i] for i in chosen], device=values.device)  # (m,)
        scale = len(self.dims) / len(chosen)
        total = (weights.to(values.dtype) * values).sum() * scale
        by_dim = {str(m): v for m, v in zip(dims, values.detach())}
        return LossOutput(total, {"loss_by_dim": by_dim})

    def __repr__(self) -> str:
        return (
            f"MatryoshkaLoss(dims={self.dims}, weights={self.weights}, "
            f"renormalize={self.renormalize}, sample_dims={self.sample_dims})"
        )
