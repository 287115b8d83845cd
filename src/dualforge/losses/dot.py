"""Nested dot-product (and cosine) scores for the tiled InfoNCE: the scorer of
:func:`~dualforge.losses.contrastive.nested_info_nce`.

At Matryoshka dims ``m_1 < ... < m_M`` the prefix products are accumulated slice by slice,
``s_{m_k} = s_{m_{k-1}} + x[:, m_{k-1}:m_k] @ y[:, m_{k-1}:m_k].T``, so every dim costs about one
full-dim product; the backward sums the dims' gradients from the largest dim down and multiplies
each slice once. Cosine (renormalised prefixes) multiplies by the prefix norms' reciprocals.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from itertools import pairwise
from typing import Any

import torch

from dualforge.losses.tiles import ScorerFactory

EPS = 1e-12  # F.normalize's floor on a norm


class DotPair:
    """Nested dot products of queries and documents (of L2-renormalised prefixes when
    ``normalize``): the :class:`Pairing` of :func:`nested_info_nce`."""

    def __init__(
        self, q: torch.Tensor, d: torch.Tensor, dims: Sequence[int], normalize: bool
    ) -> None:
        self.q, self.d = q, d
        self.factory: ScorerFactory = partial(_dot_scores, tuple(dims), normalize)

    def queries_vs_docs(self, rows: slice) -> tuple[ScorerFactory, list[Any]]:
        """Queries ``rows`` against every document."""
        return self.factory, [self.q[rows], self.d]

    def docs_vs_queries(self, rows: slice) -> tuple[ScorerFactory, list[Any]]:
        """Documents ``rows`` against every query (dot products are symmetric)."""
        return self.factory, [self.d[rows], self.q]


def _dot_scores(
    dims: tuple[int, ...], normalize: bool, tensors: Sequence[Any], temperature: float
) -> DotScores:
    """The scorer over ``(x, y)``."""
    return DotScores(tensors[0], tensors[1], dims, normalize, temperature)


class DotScores:
    """:class:`~dualforge.losses.tiles.TileScores` of nested dot products over a temperature,
    ``z_m = <x[:m], y[:m]> a_m b_m / temperature``, with ``a_m = 1 / max(|x[:m]|, eps)`` (and
    ``b_m`` for ``y``) when ``normalize`` (``F.normalize`` of every prefix), else 1.

    The prefix norms are computed here, once, without autograd: their gradients are folded into
    the rows' gradients at the end (``d a_m / d x[:m] = -a_m^3 x[:m]``), so no ``(B, D)``
    temporaries of a normalisation graph are held.

    Args:
        x: ``(R, D)`` row vectors.
        y: ``(C, D)`` column vectors.
        dims: Nesting dims ``m_1 < ... < m_M``.
        normalize: Score renormalised prefixes (cosine at every dim).
        temperature: Divides every score.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        dims: Sequence[int],
        normalize: bool,
        temperature: float,
    ) -> None:
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.in_dtypes = (x.dtype, y.dtype)
        self.inv_tau = 1.0 / temperature
        self.x, self.y = x.to(self.dtype), y.to(self.dtype)
        self.spans = list(pairwise((0, *dims)))
        self.shape = (x.shape[0], y.shape[0])
        self.dims = len(self.spans)
        self.cost = 2 * self.dims + 4  # logits, softmax / grads, and temporaries
        self.state_cost = 0  # the backward needs the logits and the inputs only
        self.norms = (
            (_prefix_norms(self.x, dims), _prefix_norms(self.y, dims)) if normalize else None
        )
        if self.norms is not None:  # the temperature rides on the row scales
            self.xs = self.norms[0].clamp_min(EPS).reciprocal()  # (R, M)
            self.ys = self.norms[1].clamp_min(EPS).reciprocal()  # (C, M)
            self.xs_tau, self.x_tau = self.xs * self.inv_tau, self.x
        else:  # ... or on a copy of the rows
            self.x_tau = self.x * self.inv_tau
        self._grads: list[torch.Tensor] | None = None

    def keep_tiles(self) -> None:
        """Nothing to keep: the backward reads the inputs and the tile's logits."""

    def scores(self, r: slice, c: slice) -> list[torch.Tensor]:
        """Prefix products accumulated slice by slice, scaled, over the temperature."""
        xr, yc = self.x_tau[r], self.y[c]
        out: list[torch.Tensor] = []
        total: torch.Tensor | None = None
        for k, (lo, hi) in enumerate(self.spans):
            part = xr[:, lo:hi] @ yc[:, lo:hi].T  # (r, c)
            if self.norms is None:
                total = part if total is None else total + part
                out.append(total)  # a new tensor each dim: the next sum does not touch it
                continue
            total = part if total is None else total.add_(part)
            out.append((total * self.xs_tau[r, k, None]).mul_(self.ys[c, k]))
        return out

    def backward(
        self, r: slice, c: slice, logits: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        """From the largest dim down: the summed gradient of every prefix product that holds
        slice ``k`` multiplies slice ``k`` once."""
        gx, gy, gxs, gys = self._buffers()
        xr, yc = self.x_tau[r], self.y[c]
        alpha = self.inv_tau if self.norms is None else 1.0  # d logit / d(x . y) beyond scales
        acc: torch.Tensor | None = None
        for k in reversed(range(self.dims)):
            g = grads[k]  # (r, c) dL/dz_k
            if self.norms is not None:
                gz = g * logits[k]
                gxs[r, k] += gz.sum(dim=1) / self.xs[r, k]
                gys[c, k] += gz.sum(dim=0) / self.ys[c, k]
                g = g.mul_(self.xs_tau[r, k, None]).mul_(self.ys[c, k])  # dL/d(x[:m] . y[:m])
            acc = g if acc is None else acc.add_(g)
            lo, hi = self.spans[k]
            gx[r, lo:hi].addmm_(acc, yc[:, lo:hi], alpha=alpha)
            gy[c, lo:hi].addmm_(acc.T, xr[:, lo:hi])

    def gradients(self) -> tuple[torch.Tensor | None, ...]:
        """Gradients of ``(x, y)`` in their dtypes, the prefix norms' share folded in."""
        gx, gy, gxs, gys = self._buffers()
        if self.norms is not None:
            _fold_scales(gx, self.x, gxs, self.norms[0], self.spans)
            _fold_scales(gy, self.y, gys, self.norms[1], self.spans)
        return gx.to(self.in_dtypes[0]), gy.to(self.in_dtypes[1])

    def _buffers(self) -> list[torch.Tensor]:
        if self._grads is None:
            self._grads = [
                torch.zeros_like(self.x),
                torch.zeros_like(self.y),
                torch.zeros(self.shape[0], self.dims, dtype=self.dtype, device=self.x.device),
                torch.zeros(self.shape[1], self.dims, dtype=self.dtype, device=self.x.device),
            ]
        return self._grads


def _prefix_norms(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``(B, M)`` L2 norms of each row's prefix at every dim."""
    return torch.stack([x[:, :m].norm(dim=1) for m in dims], dim=1)


def _fold_scales(
    grad: torch.Tensor,
    x: torch.Tensor,
    d_scale: torch.Tensor,
    norms: torch.Tensor,
    spans: Sequence[tuple[int, int]],
) -> None:
    """Add the gradient through the scales ``a_m = 1 / max(|x[:m]|, eps)`` to ``grad`` in place:
    ``d a_m / d x[:m] = -x[:m] / |x[:m]|^3`` (0 where the floor holds, as for ``F.normalize``)."""
    weight = torch.where(norms > EPS, -d_scale / norms.pow(3), 0.0)  # (B, M)
    coef = weight.flip(1).cumsum(1).flip(1)  # (B, M): sum over the dims m >= k
    for k, (lo, hi) in enumerate(spans):
        grad[:, lo:hi].addcmul_(coef[:, k, None], x[:, lo:hi])
