"""Matryoshka Representation Learning (Kusupati et al. 2022): nested-prefix losses.

The loss of a batch is a weighted sum over nested prefixes of the representations:

    L = sum_m c_m * inner(q[:, :m], d[:, :m])

It is a function of representations only, so under Gradient Cache the encoder still runs once per
chunk whatever the number of dims: the prefixes are sliced from the cached representations and
their gradients flow back into the one representation gradient that is replayed.

:class:`Nesting` holds the dims, weights and the per-step dim sampling; the tiled InfoNCE and
MaxSim losses take it and score every dim in one pass over their tiles
(:class:`~dualforge.losses.contrastive.InfoNCE`); :class:`MatryoshkaLoss` nests any other
:class:`~dualforge.losses.inputs.Loss` by calling it once per prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dualforge.losses.inputs import Loss, LossInputs
from dualforge.losses.output import LossOutput
from dualforge.matryoshka import check_dims, prefix

Truncate = Callable[[torch.Tensor, int, bool], torch.Tensor]


@dataclass(frozen=True)
class Nesting:
    """Matryoshka dims, their weights, and which dims a step uses.

    With ``sample_dims`` the dims of a step are drawn from a generator seeded by ``(seed,
    step)``, so a resumed run draws the same dims and the global RNG (which Gradient Cache replays
    to reproduce dropout) is never touched; their weighted sum is scaled by ``M / sample_dims``
    so the loss is an unbiased estimate of the full sum.

    Attributes:
        dims: Strictly increasing prefix sizes; the largest should be the full size.
        weights: Relative importance ``c_m`` of each dim (empty: 1 each).
        renormalize: L2-renormalise each prefix before scoring.
        sample_dims: When set, each step uses this many dims drawn uniformly without replacement.
        seed: Seed of dim sampling.
    """

    dims: tuple[int, ...]
    weights: tuple[float, ...] = ()
    renormalize: bool = False
    sample_dims: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Check dims, weights and the sample size."""
        check_dims(self.dims, self.weights or None)
        if self.sample_dims is not None and not 0 < self.sample_dims <= len(self.dims):
            raise ValueError(f"sample_dims={self.sample_dims} must be in 1..{len(self.dims)}")

    @property
    def samples(self) -> bool:
        """Whether a step uses a sampled subset of the dims."""
        return self.sample_dims is not None and self.sample_dims < len(self.dims)

    def pick(self, step: int) -> list[int]:
        """Indices of the dims step ``step`` uses (all of them unless sampling)."""
        if not self.samples:
            return list(range(len(self.dims)))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        order = torch.randperm(len(self.dims), generator=generator)
        return sorted(order[: self.sample_dims].tolist())

    def chosen(self, step: int) -> tuple[int, ...]:
        """The dims step ``step`` uses, ascending."""
        return tuple(self.dims[i] for i in self.pick(step))

    def weight(self, dim: int) -> float:
        """``c_m`` of ``dim``."""
        return self.weights[self.dims.index(dim)] if self.weights else 1.0


def nested_output(nesting: Nesting, dims: Sequence[int], values: torch.Tensor) -> LossOutput:
    """The weighted (and, when sampling, rescaled) sum of the ``(m,)`` losses at ``dims``, with
    ``parts["loss_by_dim"]`` mapping each dim (a string) to its detached loss."""
    weights = torch.tensor([nesting.weight(m) for m in dims], dtype=values.dtype)  # (m,)
    scale = len(nesting.dims) / len(dims)
    total = (weights.to(values.device) * values).sum() * scale
    return LossOutput(total, {"loss_by_dim": {str(m): v for m, v in zip(dims, values.detach())}})


def matryoshka_losses(
    inner: Callable[..., torch.Tensor],
    reps: Sequence[torch.Tensor],
    dims: Sequence[int],
    *,
    renormalize: bool = False,
    truncate: Truncate = prefix,
    **inner_kwargs: Any,
) -> torch.Tensor:
    """``(M,)``: ``inner(*prefixes, **inner_kwargs)`` at every prefix dim (one call per dim).

    Args:
        inner: A scalar loss of representations (e.g. ``info_nce``).
        reps: Representations, each ``(B_i, D)`` (queries, documents, ...).
        dims: Prefix sizes.
        renormalize: L2-renormalise each prefix.
        truncate: ``truncate(rep, dim, renormalize)``, the prefix of one representation
            (:func:`~dualforge.matryoshka.prefix`; token representations:
            :func:`~dualforge.losses.maxsim.token_prefix`).
        **inner_kwargs: Passed to ``inner`` at every dim.
    """
    values = [inner(*(truncate(r, m, renormalize) for r in reps), **inner_kwargs) for m in dims]
    return torch.stack(values)  # (M,)


class MatryoshkaLoss:
    """Any :class:`~dualforge.losses.inputs.Loss` nested over prefixes: ``sum_m c_m *
    inner(prefix_m(q), prefix_m(d))``, one call of ``inner`` per dim.

    (InfoNCE and MaxSim take a :class:`Nesting` themselves and score every dim in one pass.)
    Returns a :class:`~dualforge.losses.output.LossOutput` whose ``parts["loss_by_dim"]`` maps
    each used dim (as a string) to its inner loss.

    Args:
        inner: The loss at one dim.
        dims: Strictly increasing prefix sizes.
        weights: ``c_m`` per dim (default 1 each).
        renormalize: L2-renormalise each prefix before ``inner``.
        sample_dims: Dims per step, drawn as :class:`Nesting` says (None: all).
        seed: Seed of dim sampling.
        truncate: The prefix of one representation.
    """

    def __init__(
        self,
        inner: Loss,
        dims: Sequence[int],
        *,
        weights: Sequence[float] | None = None,
        renormalize: bool = False,
        sample_dims: int | None = None,
        seed: int = 0,
        truncate: Truncate = prefix,
    ) -> None:
        self.inner = inner
        self.nesting = Nesting(
            tuple(int(m) for m in dims), tuple(float(w) for w in weights or ()), renormalize,
            sample_dims, seed,
        )  # fmt: skip
        self.truncate = truncate

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice, /
    ) -> LossOutput:
        """Weighted sum of the inner loss over the step's prefix dims, and the loss by dim."""
        dims = self.nesting.chosen(inputs.step)
        renorm = self.nesting.renormalize
        values = [
            self.inner(self.truncate(q, m, renorm), self.truncate(d, m, renorm), inputs, rows).loss
            for m in dims
        ]
        return nested_output(self.nesting, dims, torch.stack(values))

    def __repr__(self) -> str:
        n = self.nesting
        return (
            f"MatryoshkaLoss(dims={n.dims}, weights={n.weights}, "
            f"renormalize={n.renormalize}, sample_dims={n.sample_dims})"
        )
