"""Late interaction (ColBERT MaxSim) as a deep distance function over token representations.

Token representations are ``(B, T, D + 1)`` tensors: vectors and, in the last channel, the token
mask (:mod:`dualforge.tokens`). Masks are applied exactly: a masked document token can never be a
maximum (``-inf``), a masked query token adds nothing to the sum (it is never "scored as 0").

    score(q, d) = sum over scored query tokens i of  max over scored document tokens j  <q_i, d_j>

The ``(b_q, T_q, b_d, T_d)`` similarities of a block are dropped at once: a block keeps only its
``(b_q, T_q, b_d)`` argmax indices, and its backward gathers the winning document tokens instead
of materialising the similarities again (``O(b_q T_q b_d D)`` work instead of
``O(b_q T_q b_d T_d D)``). Blocks are the tiles of :mod:`dualforge.losses.tiles` (one budget,
:data:`~dualforge.losses.tiles.BUDGET` elements): :func:`maxsim` returns the score matrix,
:func:`maxsim_nce` never holds it (the tiled InfoNCE with a MaxSim scorer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from dualforge.losses.contrastive import docs_per_query, nce_by_dim
from dualforge.losses.inputs import LossInputs, PositiveCodes
from dualforge.losses.matryoshka import Nesting, nested_output
from dualforge.losses.output import LossOutput
from dualforge.losses.tiles import BUDGET, ScorerFactory, spans, tile_sizes
from dualforge.matryoshka import check_dim, check_dims
from dualforge.tokens import join_tokens, split_tokens


def maxsim(q: torch.Tensor, d: torch.Tensor, budget: int = BUDGET) -> torch.Tensor:
    """``(B_q, B_d)`` MaxSim scores of token representations ``(B_q, T_q, D + 1)`` and
    ``(B_d, T_d, D + 1)`` (see the module docstring), differentiable, in bounded blocks.

    Raises:
        ValueError: A document with no scored token, or mismatched dims.
    """
    qv, qm = split_tokens(q)
    dv, dm = split_tokens(d)
    _check_pair(qv, dv, dm)
    cost = qv.shape[1] * max(dv.shape[1], qv.shape[-1])  # the similarities, or the gathers
    rs, cs = tile_sizes(qv.shape[0], dv.shape[0], cost, budget)
    rows = []
    for r in spans(qv.shape[0], rs):
        cols = [_block(qv[r], qm[r], dv[c], dm[c]) for c in spans(dv.shape[0], cs)]
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)  # (B_q, B_d)


def _check_pair(qv: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor) -> None:
    if qv.shape[-1] != dv.shape[-1]:
        raise ValueError(f"query dim {qv.shape[-1]} != document dim {dv.shape[-1]}")
    if not bool(dm.any(dim=1).all()):
        raise ValueError("every document needs at least one scored token")


def _block(qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = BlockMaxSim.apply(qv, qm, dv, dm)  # type: ignore[no-untyped-call]
    return out


def block_scores(
    qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxSim of ``(a, T_q, D)`` queries and ``(b, T_d, D)`` documents with boolean token masks:
    ``(a, b)`` scores and the ``(a, T_q, b)`` index of each query token's best document token."""
    a, i, dim = qv.shape
    b, j = dv.shape[:2]
    sim = (qv.reshape(a * i, dim) @ dv.reshape(b * j, dim).T).view(a, i, b, j)
    sim.masked_fill_(~dm.view(1, 1, b, j), float("-inf"))  # never a maximum
    best, idx = sim.max(dim=-1)  # (a, i, b)
    best = best.masked_fill(~qm[:, :, None], 0.0)  # masked query tokens add nothing
    return best.sum(dim=1), idx  # (a, b), (a, i, b)


def block_grads(
    grad: torch.Tensor, qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(a, T_q, D)`` and ``(b, T_d, D)`` of the token vectors from ``dL/d scores``
    ``(a, b)``: each query token's gradient goes to its best document token only."""
    b, j, dim = dv.shape
    g = grad[:, None, :] * qm[:, :, None].to(grad.dtype)  # (a, i, b)
    rows = torch.arange(b, device=idx.device) * j + idx  # (a, i, b): rows of dv as (b*j, D)
    flat = dv.reshape(b * j, dim)
    d_q = torch.einsum("aib,aibd->aid", g, flat[rows].to(g.dtype))  # (a, i, D)
    parts = (g[..., None] * qv[:, :, None, :].to(g.dtype)).reshape(-1, dim)  # (a*i*b, D)
    d_d = torch.zeros(b * j, dim, dtype=g.dtype, device=g.device)
    d_d.index_add_(0, rows.reshape(-1), parts)
    return d_q, d_d.view(b, j, dim)


class BlockMaxSim(torch.autograd.Function):
    """MaxSim of one block, ``(b_q, T_q, D)`` x ``(b_d, T_d, D)`` -> ``(b_q, b_d)``, with masks;
    the backward routes each query token's gradient to its best document token only."""

    @staticmethod
    def forward(
        ctx: Any, qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor
    ) -> torch.Tensor:
        """Scores of the block (``qm``, ``dm``: boolean token masks)."""
        scores, idx = block_scores(qv, qm, dv, dm)
        ctx.save_for_backward(qv, qm, dv, idx)
        return scores

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        """Gradients of the token vectors (none for the masks)."""
        qv, qm, dv, idx = ctx.saved_tensors
        d_q, d_d = block_grads(grad, qv, qm, dv, idx)
        return d_q.to(qv.dtype), None, d_d.to(dv.dtype), None


class MaxSimScores:
    """:class:`~dualforge.losses.tiles.TileScores` of MaxSim at every token dim.

    Args:
        rows: One ``(R, T, m_k + 1)`` token tensor per dim (the row items).
        cols: One ``(C, T', m_k + 1)`` token tensor per dim (the column items).
        transposed: The rows are documents and the columns queries (the score of row ``r`` and
            column ``c`` is then MaxSim of query ``c`` against document ``r``).
        temperature: Divides every score (the logits).
    """

    def __init__(
        self,
        rows: Sequence[torch.Tensor],
        cols: Sequence[torch.Tensor],
        transposed: bool,
        temperature: float = 1.0,
    ) -> None:
        self.inv_tau = 1.0 / temperature
        wide = any(t.dtype == torch.float64 for t in (*rows, *cols))
        self.dtype = torch.float64 if wide else torch.float32
        self.rows = [_split(t, self.dtype) for t in rows]
        self.cols = [_split(t, self.dtype) for t in cols]
        self.in_dtypes = [t.dtype for t in (*rows, *cols)]
        self.transposed = transposed
        self.shape = (rows[0].shape[0], cols[0].shape[0])
        self.dims = len(rows)
        tq, td = (
            (cols[0].shape[1], rows[0].shape[1])
            if transposed
            else (rows[0].shape[1], cols[0].shape[1])
        )
        widest = max(t.shape[-1] for t in rows)
        self.cost = tq * (max(td, widest) + self.dims) + 2 * self.dims + 4
        self.state_cost = 2 * tq * self.dims  # int64 argmax indices per query token and dim
        self._tile: tuple[slice, slice, list[torch.Tensor]] | None = None
        self._kept: dict[tuple[int, int], list[torch.Tensor]] | None = None
        self._grads: list[torch.Tensor] | None = None

    def _pair(self, k: int, r: slice, c: slice) -> tuple[torch.Tensor, ...]:
        """``(qv, qm, dv, dm)`` of dim ``k`` on this tile."""
        rv, rm = self.rows[k]
        cv, cm = self.cols[k]
        if self.transposed:
            return cv[c], cm[c], rv[r], rm[r]
        return rv[r], rm[r], cv[c], cm[c]

    def keep_tiles(self) -> None:
        """Keep every scored tile's argmax indices, not only the last tile's."""
        self._kept = {}

    def scores(self, r: slice, c: slice) -> list[torch.Tensor]:
        """MaxSim of the tile at every dim over the temperature (the argmax indices are kept for
        :meth:`backward`)."""
        out, idxs = [], []
        for k in range(self.dims):
            s, idx = block_scores(*self._pair(k, r, c))  # (q, d)
            s.mul_(self.inv_tau)
            out.append(s.T.contiguous() if self.transposed else s)
            idxs.append(idx)
        self._tile = (r, c, idxs)
        if self._kept is not None:
            self._kept[r.start, c.start] = idxs
        return out

    def backward(
        self, r: slice, c: slice, logits: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        """Gather-based gradients of the tile :meth:`scores` just scored (or of any kept tile)."""
        if self._kept is not None and (r.start, c.start) in self._kept:
            idxs = self._kept[r.start, c.start]
        elif self._tile is not None and self._tile[:2] == (r, c):
            idxs = self._tile[2]
        else:
            raise RuntimeError("MaxSimScores.backward needs a tile it scored last or kept")
        buffers = self._buffers()
        for k in range(self.dims):
            qv, qm, dv, _ = self._pair(k, r, c)
            g = (grads[k].T if self.transposed else grads[k]) * self.inv_tau  # (q, d) dL/dscore
            d_q, d_d = block_grads(g, qv, qm, dv, idxs[k])
            d_rows, d_cols = (d_d, d_q) if self.transposed else (d_q, d_d)
            buffers[k][r] += d_rows
            buffers[self.dims + k][c] += d_cols

    def gradients(self) -> tuple[torch.Tensor | None, ...]:
        """Gradients of every row tensor, then every column tensor (zero in the mask channel)."""
        out = []
        for g, dtype in zip(self._buffers(), self.in_dtypes):
            out.append(F.pad(g, (0, 1)).to(dtype))
        return tuple(out)

    def _buffers(self) -> list[torch.Tensor]:
        if self._grads is None:
            self._grads = [torch.zeros_like(v) for v, _ in (*self.rows, *self.cols)]
        return self._grads


def _split(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    vectors, mask = split_tokens(t)
    return vectors.to(dtype), mask


def token_dim(reps: torch.Tensor, dim: int, full: int, renormalize: bool) -> torch.Tensor:
    """``reps`` at token dim ``dim`` (itself at the full dim without renormalisation)."""
    return reps if dim == full and not renormalize else token_prefix(reps, dim, renormalize)


class MaxSimPair:
    """Queries and documents as token tensors at every dim: the
    :class:`~dualforge.losses.contrastive.Pairing` of :func:`nested_maxsim_nce`."""

    def __init__(
        self, q: torch.Tensor, d: torch.Tensor, dims: Sequence[int], renormalize: bool
    ) -> None:
        qv, _ = split_tokens(q)
        dv, dm = split_tokens(d)
        _check_pair(qv, dv, dm)
        full = qv.shape[-1]
        dims = check_dims(dims, full=full)
        self.q = [token_dim(q, m, full, renormalize) for m in dims]
        self.d = [token_dim(d, m, full, renormalize) for m in dims]

    def queries_vs_docs(self, rows: slice) -> tuple[ScorerFactory, list[Any]]:
        """Queries ``rows`` against every document."""
        return partial(_scorer, len(self.q), False), [*(x[rows] for x in self.q), *self.d]

    def docs_vs_queries(self, rows: slice) -> tuple[ScorerFactory, list[Any]]:
        """Documents ``rows`` against every query (MaxSim of each query against them)."""
        return partial(_scorer, len(self.q), True), [*(x[rows] for x in self.d), *self.q]


def _scorer(
    dims: int, transposed: bool, tensors: Sequence[Any], temperature: float
) -> MaxSimScores:
    """The scorer over ``dims`` row tensors then ``dims`` column tensors."""
    return MaxSimScores(tensors[:dims], tensors[dims:], transposed, temperature)


def nested_maxsim_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    dims: Sequence[int],
    *,
    renormalize: bool = False,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    positives: PositiveCodes | None = None,
    rows: slice | None = None,
    budget: int = BUDGET,
) -> torch.Tensor:
    """``(M,)`` InfoNCE over MaxSim scores at every token dim (arguments as
    :func:`~dualforge.losses.contrastive.nested_info_nce`; documents grouped by query)."""
    pair = MaxSimPair(q, d, dims, renormalize)
    return nce_by_dim(pair, q.shape[0], docs_per_query(q, d), temperature=temperature,
                      symmetric=symmetric, positives=positives, rows=rows, budget=budget)  # fmt: skip


def maxsim_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    positives: PositiveCodes | None = None,
    rows: slice | None = None,
    budget: int = BUDGET,
) -> torch.Tensor:
    """InfoNCE over MaxSim scores of token representations (arguments as
    :func:`~dualforge.losses.info_nce`; documents grouped by query, ``B * (1 + K)`` rows)."""
    return nested_maxsim_nce(
        q, d, (q.shape[-1] - 1,), temperature=temperature, symmetric=symmetric,
        positives=positives, rows=rows, budget=budget,
    )[0]  # fmt: skip


@dataclass(frozen=True)
class MaxSimNCE:
    """InfoNCE over MaxSim as a :class:`~dualforge.losses.inputs.Loss`, nested over token dims
    when given a :class:`~dualforge.losses.matryoshka.Nesting`."""

    temperature: float = 0.05
    symmetric: bool = False
    nesting: Nesting | None = None
    budget: int = BUDGET

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice, /
    ) -> LossOutput:
        """This process's share; ``parts["loss_by_dim"]`` when nested."""
        nesting = self.nesting
        dims = nesting.chosen(inputs.step) if nesting is not None else (q.shape[-1] - 1,)
        values = nested_maxsim_nce(
            q, d, dims, renormalize=nesting.renormalize if nesting is not None else False,
            temperature=self.temperature, symmetric=self.symmetric,
            positives=inputs.positives, rows=rows, budget=self.budget,
        )  # fmt: skip
        if nesting is None:
            return LossOutput(values[0], {})
        return nested_output(nesting, dims, values)


def token_prefix(reps: torch.Tensor, dim: int, renormalize: bool) -> torch.Tensor:
    """The first ``dim`` channels of every token vector (renormalised when asked), mask kept:
    the Matryoshka prefix of token representations (``MatryoshkaLoss(truncate=token_prefix)``)."""
    vectors, mask = split_tokens(reps)
    check_dim(dim, vectors.shape[-1])
    part = vectors[..., :dim]  # (B, T, dim)
    if renormalize:
        part = F.normalize(part, p=2.0, dim=-1)
    return join_tokens(part, mask)
