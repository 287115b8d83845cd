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
from typing import Any

import torch

from dualforge.losses.output import LossOutput
from dualforge.matryoshka import check_dims, prefix

InnerLoss = Callable[..., torch.Tensor]
Truncate = Callable[[torch.Tensor, int, bool], torch.Tensor]


def matryoshka_losses(
    inner: InnerLoss,
    reps: Sequence[torch.Tensor],
    dims: Sequence[int],
    *,
    renormalize: bool = False,
    truncate: Truncate = prefix,
    **inner_kwargs: Any,
) -> torch.Tensor:
    """The inner loss at every prefix dim.

    Args:
        inner: ``inner(*reps, **inner_kwargs)`` returning a scalar (e.g. ``info_nce``).
        reps: Representations, each ``(B_i, D)`` (queries, documents, ...).
        dims: Prefix sizes.
        renormalize: L2-renormalise each prefix (use when the model outputs unit vectors and the
            inner loss scores with a dot product).
        truncate: ``truncate(rep, dim, renormalize)``, the prefix of one representation
            (:func:`~dualforge.matryoshka.prefix`; token representations:
            :func:`~dualforge.losses.maxsim.token_prefix`).
        **inner_kwargs: Passed to ``inner`` at every dim.

    Returns:
        ``(M,)`` tensor, the loss at each of the ``M`` dims.
    """
    values = [inner(*(truncate(r, m, renormalize) for r in reps), **inner_kwargs) for m in dims]
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
        truncate: The prefix of one representation (default
            :func:`~dualforge.matryoshka.prefix`; token representations:
            :func:`~dualforge.losses.maxsim.token_prefix`).
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
        truncate: Truncate = prefix,
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
        self.truncate = truncate

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
            self.inner,
            reps,
            dims,
            renormalize=self.renormalize,
            truncate=self.truncate,
            **inner_kwargs,
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
