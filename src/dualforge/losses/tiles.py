"""Exact contrastive losses in tiles: one bounded block of scores in memory at a time.

InfoNCE of ``R`` row items (queries) against ``C`` column items (documents) is

    L_m = sum_r  logsumexp_{c not masked} z_m[r, c]  -  z_m[r, target_r],   z_m = s_m / tau

at every nesting dim ``m`` of a Matryoshka loss. :func:`tiled_nce` never holds the ``(R, C)``
logits: the forward walks tiles of ``rows x cols`` with a running (max, sum) log-sum-exp per row
and dim, keeping only ``(M, R)`` numbers; the backward (a custom autograd Function) recomputes
each tile's logits, turns them into ``dL/dz = g_m (softmax - onehot(target))`` with the saved
log-sum-exps, and hands them to the scorer, which backprops them into its inputs. Peak extra
memory is one tile, never ``O(R x C)``. Where the logits of every tile (and what the scorer
needs of each, such as MaxSim's argmax indices) fit the budget, the forward keeps them and the
backward scores nothing again; a matrix that is one tile keeps its softmax too (small batches:
the dense computation, as before).

What is scored is injected (a :class:`TileScores` built by a :data:`ScorerFactory` from the
Function's input tensors and the temperature): nested dot / cosine products
(:mod:`dualforge.losses.dot`) and MaxSim over token vectors (:mod:`dualforge.losses.maxsim`) use
the same loop. False negatives are the ``(row, column)`` pairs whose int64 codes meet
(:func:`~dualforge.losses.inputs.matching_pairs`, found once by a sort, not per tile); each tile
sets its few pairs to :data:`MASKED`. A row's target is never masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dualforge.losses.inputs import matching_pairs

BUDGET = 2**24
"""Elements a tile holds at once (scores, their per-dim copies, token similarities) on a CPU:
64 MiB in fp32. ``loss.tile_budget`` / ``budget=`` changes it."""
GPU_BUDGET = 2**28
"""The same on a GPU (1 GiB in fp32): bigger tiles, fewer kernel launches."""


def default_budget(device: torch.device) -> int:
    """The automatic tile budget of ``device``: :data:`GPU_BUDGET` on CUDA, else :data:`BUDGET`."""
    return GPU_BUDGET if device.type == "cuda" else BUDGET


def tile_sizes(rows: int, cols: int, cost: int, budget: int = BUDGET) -> tuple[int, int]:
    """``(row_step, col_step)`` of tiles whose scores, at ``cost`` elements each, fit ``budget``.

    The whole ``rows x cols`` matrix when it fits; else near-square tiles (the most work per
    element read), each at least one row and one column.
    """
    if budget < 1 or cost < 1:
        raise ValueError(f"tile budget and cost must be >= 1, got {budget} and {cost}")
    scores = max(budget // cost, 1)
    if rows * cols <= scores:
        return max(rows, 1), max(cols, 1)
    side = max(math.isqrt(scores), 1)
    if rows <= side:
        return rows, max(scores // rows, 1)
    if cols <= side:
        return max(scores // cols, 1), cols
    return side, max(scores // side, 1)


def spans(total: int, step: int) -> Iterator[slice]:
    """``slice(0, step), slice(step, 2 * step), ...`` covering ``range(total)``."""
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


MASKED = -1e30
"""The logit of a masked column: finite, so that ``0 * logit`` stays 0 in the backward, and low
enough that ``exp(MASKED - any real logit)`` is 0 (a row's target is never masked, so every row
has a real logit)."""


class TileScores(Protocol):
    """Logits (scores divided by the temperature) of ``R`` row items against ``C`` column items at
    ``M`` nesting dims, by tile.

    Attributes:
        shape: ``(R, C)``.
        dims: ``M``, the number of logit matrices (one per nesting dim).
        cost: Elements one tile holds per score while scoring and backpropagating (sizes tiles).
        state_cost: Elements per score the scorer keeps for :meth:`backward` of a tile it is no
            longer scoring, after :meth:`keep_tiles` (0: it needs nothing but the logits).
        dtype: The dtype logits are computed in (fp32, or fp64 for fp64 inputs).
    """

    shape: tuple[int, int]
    dims: int
    cost: int
    state_cost: int
    dtype: torch.dtype

    def keep_tiles(self) -> None:
        """From now on, keep what :meth:`backward` needs of every tile scored (not only the
        last), so that the logits of every tile can be kept and none is scored again."""
        ...

    def scores(self, r: slice, c: slice) -> list[torch.Tensor]:
        """``M`` new tensors ``(r, c)``: the logits of rows ``r`` against columns ``c`` (the
        caller may overwrite them)."""
        ...

    def backward(
        self, r: slice, c: slice, logits: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        """Accumulate the input gradients of ``dL/d logits`` (``grads``, ``M`` x ``(r, c)``).
        ``logits`` are what :meth:`scores` returned for this tile, with masked entries set to
        :data:`MASKED` (where ``grads`` are 0). May overwrite ``grads``."""
        ...

    def gradients(self) -> tuple[torch.Tensor | None, ...]:
        """The gradients of the factory's input tensors, in their order (None: none)."""
        ...


ScorerFactory = Callable[[Sequence[Any], float], TileScores]
"""``factory(tensors, temperature) -> TileScores`` over the (detached) input tensors."""


@dataclass(frozen=True)
class TileSpec:
    """What a tiled InfoNCE needs beside the scored tensors.

    Attributes:
        scorer: Builds the scorer from the input tensors and the temperature.
        targets: ``(R,)`` int64 column of each row's target.
        masked: ``(rows, cols)`` int64 pairs sorted by row: the columns that are not negatives
            of a row (:meth:`from_codes`); None for none. A row's target must not be among them.
        budget: Elements a tile may hold.
    """

    scorer: ScorerFactory
    targets: torch.Tensor
    masked: tuple[torch.Tensor, torch.Tensor] | None = None
    budget: int = BUDGET

    @classmethod
    def from_codes(
        cls,
        scorer: ScorerFactory,
        targets: torch.Tensor,
        codes: tuple[torch.Tensor, torch.Tensor] | None,
        budget: int = BUDGET,
    ) -> TileSpec:
        """A spec whose masked pairs are the ``(row, column)`` whose codes meet (``(R, P)`` row
        codes, ``(C, Q)`` column codes), a row's target excepted."""
        if codes is None:
            return cls(scorer, targets, None, budget)
        rows, cols = matching_pairs(*codes)
        keep = cols != targets[rows]  # a target is never masked
        return cls(scorer, targets, (rows[keep], cols[keep]), budget)

    def tiles(self, scorer: TileScores) -> list[tuple[slice, slice]]:
        """Every ``(rows, cols)`` tile of the scorer's matrix, row-major."""
        R, C = scorer.shape
        rs, cs = tile_sizes(R, C, scorer.cost, self.budget)
        return [(r, c) for r in spans(R, rs) for c in spans(C, cs)]

    def hits(self, r: slice, c: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Tile-local ``(rows, cols)`` of the rows of ``r`` whose target lies in ``c``."""
        t = self.targets[r]  # (r,)
        rows = ((t >= c.start) & (t < c.stop)).nonzero().squeeze(1)
        return rows, t[rows] - c.start

    def logits(
        self, scorer: TileScores, r: slice, c: slice
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The tile's logits at every dim, masked columns at :data:`MASKED`, and its hits."""
        hits = self.hits(r, c)
        z = scorer.scores(r, c)
        if self.masked is None:
            return z, hits
        rows, cols = self.masked
        a, b = torch.searchsorted(rows, torch.tensor([r.start, r.stop], device=rows.device))
        rows, cols = rows[a:b], cols[a:b]  # this row span's pairs
        inside = (cols >= c.start) & (cols < c.stop)
        where = (rows[inside] - r.start, cols[inside] - c.start)
        for x in z:
            x[where] = MASKED
        return z, hits


def tiled_nce(
    spec: TileSpec, temperature: float | torch.Tensor, tensors: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """``(M,)`` InfoNCE summed over rows at each dim (see the module doc), with gradients for
    ``tensors`` and a tensor ``temperature``."""
    tau = (
        temperature
        if isinstance(temperature, torch.Tensor)
        else torch.tensor(temperature, dtype=torch.float64)
    )
    out: torch.Tensor = _TiledNCE.apply(spec, tau, *tensors)  # type: ignore[no-untyped-call]
    return out


@dataclass
class _Kept:
    """A single-tile loss keeps its tile for the backward (it fits the budget by definition):
    the scorer, the logits and the softmax of every dim."""

    scorer: TileScores
    logits: list[torch.Tensor]
    probs: list[torch.Tensor]


@dataclass
class _KeptTiles:
    """When every tile's logits (and the scorer's state) fit the budget, the forward keeps them
    and the backward scores nothing again."""

    scorer: TileScores
    logits: list[list[torch.Tensor]]  # per tile, per dim


class _TiledNCE(torch.autograd.Function):
    """Forward: online log-sum-exp over tiles. Backward: recompute each tile (unless the whole
    matrix was one tile, kept), softmax from the saved log-sum-exps, the scorer backprops it."""

    @staticmethod
    def forward(ctx: Any, spec: TileSpec, tau: torch.Tensor, *tensors: Any) -> torch.Tensor:
        """``(M,)`` losses; saves the inputs and each row's (max, log-sum) of its logits."""
        scorer = spec.scorer(tensors, float(tau))
        tiles = spec.tiles(scorer)
        wants_tau = bool(ctx.needs_input_grad[1])
        kept: _Kept | _KeptTiles | None = None
        R, C = scorer.shape
        if len(tiles) == 1:
            kept, stats = _one_tile(scorer, spec, wants_tau)
        elif R * C * (scorer.dims + scorer.state_cost) <= spec.budget:
            scorer.keep_tiles()
            kept = _KeptTiles(scorer, [])
            stats = _forward_pass(scorer, spec, tiles, wants_tau, kept.logits)
        else:
            stats = _forward_pass(scorer, spec, tiles, wants_tau)
        ctx.spec, ctx.kept, ctx.tiles = spec, kept, tiles
        ctx.save_for_backward(tau, *stats, *[t for t in tensors if t is not None])
        ctx.present = [t is not None for t in tensors]
        return stats[0].sum(dim=1)  # (M,)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        """Gradients of the temperature and of every input tensor."""
        tau, _, top, log_sum, gap, *saved = ctx.saved_tensors
        grad = grad.to(top.dtype)
        if isinstance(ctx.kept, _Kept):
            scorer = ctx.kept.scorer
            _kept_backward(ctx.kept, ctx.spec, grad)
        elif isinstance(ctx.kept, _KeptTiles):
            scorer = ctx.kept.scorer
            _backward_pass(scorer, ctx.spec, ctx.tiles, (top, log_sum), grad, ctx.kept.logits)
        else:
            found = iter(saved)
            tensors = [next(found) if here else None for here in ctx.present]
            scorer = ctx.spec.scorer(tensors, float(tau))
            _backward_pass(scorer, ctx.spec, ctx.tiles, (top, log_sum), grad)
        d_tau = None
        if ctx.needs_input_grad[1]:  # dL/dtau = -sum dL/dz z / tau = -g (E[z] - z_target) / tau
            d_tau = -(grad * gap.sum(dim=1)).sum() / tau.to(grad.dtype)
        return None, d_tau, *scorer.gradients()


Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(M, R)`` each: every row's loss ``logsumexp - target logit``; its largest logit and the log
of its sum of ``exp(logit - largest)`` (the backward's softmax); and, when the temperature wants
a gradient, the softmax-expected logit minus the target logit (else zeros). Everything is kept
relative to the largest logit, so that ``logit - largest`` stays exact in fp32 for logits in the
hundreds (MaxSim at temperature 0.05)."""


def _forward_pass(
    scorer: TileScores,
    spec: TileSpec,
    tiles: list[tuple[slice, slice]],
    wants_tau: bool,
    keep: list[list[torch.Tensor]] | None = None,
) -> Stats:
    """:data:`Stats` over many tiles, with running per-row sums; each tile's logits are
    appended to ``keep`` when given."""
    R, M = scorer.shape[0], scorer.dims
    run = torch.zeros((3, M, R), dtype=scorer.dtype, device=spec.targets.device)
    top, total, weighted = run[0].fill_(-math.inf), run[1], run[2]
    target = torch.empty_like(top)
    for r, c in tiles:
        z, hits = spec.logits(scorer, r, c)
        if keep is not None:
            keep.append(z)
        for m, x in enumerate(z):
            target[m, r.start + hits[0]] = x[hits]
            sums = (total[m, r], weighted[m, r] if wants_tau else None)
            _online_update(top[m, r], *sums, x if keep is None else x.clone())
    rel = top - target
    log_sum = total.log()
    gap = weighted / total + rel if wants_tau else torch.zeros_like(top)
    return rel + log_sum, top, log_sum, gap


def _one_tile(scorer: TileScores, spec: TileSpec, wants_tau: bool) -> tuple[_Kept, Stats]:
    """:data:`Stats` of a matrix that is one tile, and the tile kept for the backward."""
    R, C = scorer.shape
    z, hits = spec.logits(scorer, slice(0, R), slice(0, C))
    probs, losses, gaps = [], [], []
    for x in z:
        p = torch.log_softmax(x, dim=1)
        losses.append(-p[hits])  # the rows' hits are every row, in order
        p.exp_()  # the softmax
        probs.append(p)
        if wants_tau:
            gaps.append(torch.sub(x, x[hits][:, None]).mul_(p).sum(dim=1))
    loss = torch.stack(losses)  # (M, R)
    gap = torch.stack(gaps) if wants_tau else torch.zeros_like(loss)
    return _Kept(scorer, z, probs), (loss, torch.zeros_like(loss), torch.zeros_like(loss), gap)


def _kept_backward(kept: _Kept, spec: TileSpec, grad: torch.Tensor) -> None:
    """The backward of a kept single tile: ``dL/dz = g (softmax - onehot)``."""
    R, C = kept.scorer.shape
    hits = spec.hits(slice(0, R), slice(0, C))
    for m, p in enumerate(kept.probs):
        p.mul_(grad[m])
        p[hits] -= grad[m]  # dL/dz
    kept.scorer.backward(slice(0, R), slice(0, C), kept.logits, kept.probs)


def _backward_pass(
    scorer: TileScores,
    spec: TileSpec,
    tiles: list[tuple[slice, slice]],
    lse: tuple[torch.Tensor, torch.Tensor],
    grad: torch.Tensor,
    kept: list[list[torch.Tensor]] | None = None,
) -> None:
    """Walk the tiles again (their ``kept`` logits, else scored anew): ``dL/dz`` of each to the
    scorer."""
    top, log_sum = lse
    weight = grad[:, None] * (-log_sum).exp()  # (M, R): g_m / sum of exp(z - largest)
    for i, (r, c) in enumerate(tiles):
        if kept is None:
            z, hits = spec.logits(scorer, r, c)
        else:
            z, hits = kept[i], spec.hits(r, c)
        grads = []
        for m, x in enumerate(z):
            g = torch.sub(x, top[m, r, None]).exp_().mul_(weight[m, r, None])
            g[hits] -= grad[m]
            grads.append(g)  # dL/dz
        scorer.backward(r, c, z, grads)


def _online_update(
    run_max: torch.Tensor, total: torch.Tensor, weighted: torch.Tensor | None, z: torch.Tensor
) -> None:
    """Fold a tile's logits ``(r, c)`` into the running ``(r,)`` max, sum of ``exp(z - max)``
    and (when wanted) sum of ``(z - max) exp(z - max)``, in place; ``z`` is overwritten."""
    new = torch.maximum(run_max, z.amax(dim=1))
    step = run_max - new  # <= 0; -inf for rows seen for the first time
    rescale = step.exp()
    if weighted is not None:  # relative to the new max
        weighted.add_(total * step.nan_to_num(neginf=0.0)).mul_(rescale)
    total.mul_(rescale)
    d = z.sub_(new[:, None])
    if weighted is None:
        total.add_(d.exp_().sum(dim=1))
    else:
        e = d.exp()
        total.add_(e.sum(dim=1))
        weighted.add_(e.mul_(d).sum(dim=1))
    run_max.copy_(new)
