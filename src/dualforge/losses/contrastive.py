"""InfoNCE with in-batch negatives and optional hard negatives: exact, tiled, at every nesting dim.

Document layout: ``d`` holds ``n = 1 + K`` rows per query, grouped by query:
rows ``i*n .. i*n+n-1`` belong to query ``i``; row ``i*n`` is its positive, the rest its hard
negatives. Every document in the batch is a negative for every other query.

The loss never holds the ``(B, B * n)`` scores (:mod:`dualforge.losses.tiles`); every
Matryoshka dim is scored in the same pass (:mod:`dualforge.losses.dot`). :func:`nce_by_dim` is
the part every score function shares: this process's query rows against every document, and,
when symmetric, their positives against every query, each divided by the full batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch
import torch.nn.functional as F

from dualforge.losses.dot import DotPair
from dualforge.losses.inputs import LossInputs, PositiveCodes
from dualforge.losses.matryoshka import Nesting, nested_output
from dualforge.losses.output import LossOutput
from dualforge.losses.tiles import BUDGET, ScorerFactory, TileSpec, tiled_nce
from dualforge.matryoshka import check_dims

Similarity = Literal["dot", "cos"]
"""Score functions of :func:`similarity` (the one list of them)."""
SIMILARITIES: tuple[str, ...] = get_args(Similarity)


def docs_per_query(q: torch.Tensor, d: torch.Tensor) -> int:
    """``n = 1 + K``: rows of ``d`` per query.

    Raises:
        ValueError: If ``d`` does not hold the same whole number of rows for every query.
    """
    if q.shape[0] == 0 or d.shape[0] % q.shape[0] != 0:
        raise ValueError(
            f"documents ({d.shape[0]}) must be a positive multiple of queries ({q.shape[0]})"
        )
    return d.shape[0] // q.shape[0]


def similarity(q: torch.Tensor, d: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """``(Q, N)`` score matrix: ``"dot"`` inner product or ``"cos"`` cosine."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; use one of {SIMILARITIES}")
    if kind == "cos":
        q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    return q @ d.T


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    sim: str = "dot",
    positives: PositiveCodes | None = None,
    rows: slice | None = None,
    budget: int = BUDGET,
) -> torch.Tensor:
    """Contrastive loss of each query against all documents in the batch (scalar).

    Args:
        q: ``(B, D)`` query representations.
        d: ``(B * n, D)`` document representations, grouped by query (see module doc).
        temperature: Scores are divided by it; a tensor may be a learned parameter.
        symmetric: Add the document-to-query loss of each positive against all queries, and
            average the two directions.
        sim: ``"dot"`` or ``"cos"``.
        positives: Codes of known positives: a document whose code is one of query ``i``'s
            positive codes is not a negative of ``i`` (its own target never is masked).
        rows: Compute only these queries' terms (and, when symmetric, their positives' terms),
            still divided by the full ``B``: one process's share of the full-batch loss.
        budget: Elements a tile of scores may hold (:data:`~dualforge.losses.tiles.BUDGET`).
    """
    return nested_info_nce(
        q, d, (q.shape[-1],), temperature=temperature, symmetric=symmetric, sim=sim,
        positives=positives, rows=rows, budget=budget,
    )[0]  # fmt: skip


def nested_info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    dims: Sequence[int],
    *,
    renormalize: bool = False,
    temperature: float | torch.Tensor = 0.05,
    symmetric: bool = False,
    sim: str = "dot",
    positives: PositiveCodes | None = None,
    rows: slice | None = None,
    budget: int = BUDGET,
) -> torch.Tensor:
    """``(M,)`` :func:`info_nce` of the prefixes ``q[:, :m], d[:, :m]`` at every dim, in one
    pass over the tiles. ``renormalize`` (or ``sim="cos"``) scores the L2-renormalised prefixes.
    Other arguments as :func:`info_nce`."""
    if sim not in SIMILARITIES:
        raise ValueError(f"unknown similarity {sim!r}; use one of {SIMILARITIES}")
    dims = check_dims(dims, full=q.shape[-1])
    if d.shape[-1] != q.shape[-1]:
        raise ValueError(f"query dim {q.shape[-1]} != document dim {d.shape[-1]}")
    pair = DotPair(q, d, dims, normalize=renormalize or sim == "cos")
    return nce_by_dim(pair, q.shape[0], docs_per_query(q, d), temperature=temperature,
                      symmetric=symmetric, positives=positives, rows=rows, budget=budget)  # fmt: skip


class Pairing(Protocol):
    """What :func:`nce_by_dim` scores: queries against documents and documents against queries."""

    def queries_vs_docs(self, rows: slice) -> tuple[ScorerFactory, list[Any]]:
        """Scorer and tensors of queries ``rows`` (rows) against every document (columns)."""
        ...

    def docs_vs_queries(self, rows: slice) -> tuple[ScorerFactory, list[Any]]:
        """Scorer and tensors of documents ``rows`` (a strided slice of the positives' rows)
        against every query (columns)."""
        ...


def nce_by_dim(
    pair: Pairing,
    batch: int,
    n: int,
    *,
    temperature: float | torch.Tensor,
    symmetric: bool,
    positives: PositiveCodes | None,
    rows: slice | None,
    budget: int,
) -> torch.Tensor:
    """``(M,)`` InfoNCE share of queries ``rows`` (and, when symmetric, of their positives
    against every query) over any :class:`Pairing`, divided by the full ``batch``."""
    start, stop, step = (rows or slice(0, batch)).indices(batch)
    if step != 1 or stop <= start:
        raise ValueError(f"rows={rows} selects no query of {batch} (or is not contiguous)")
    mine = slice(start, stop)  # (b,) queries
    own = slice(start * n, stop * n, n)  # (b,) their positives' rows in d
    factory, tensors = pair.queries_vs_docs(mine)
    device = _device(tensors)
    index = torch.arange(batch, device=device)
    codes = None if positives is None else (positives.positives[mine], positives.docs[:, None])
    spec = TileSpec.from_codes(factory, index[mine] * n, _on(codes, device), budget)
    loss = tiled_nce(spec, temperature, tensors) / batch
    if not symmetric:
        return loss
    codes = None if positives is None else (positives.docs[own, None], positives.positives)
    factory, tensors = pair.docs_vs_queries(own)
    spec = TileSpec.from_codes(factory, index[mine], _on(codes, device), budget)
    back = tiled_nce(spec, temperature, tensors) / batch
    return (loss + back) / 2


def _device(tensors: Sequence[Any]) -> torch.device:
    return next(t.device for t in tensors if isinstance(t, torch.Tensor))


def _on(
    codes: tuple[torch.Tensor, torch.Tensor] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    return None if codes is None else (codes[0].to(device), codes[1].to(device))


@dataclass(frozen=True)
class InfoNCE:
    """InfoNCE as a :class:`~dualforge.losses.inputs.Loss` (optionally Matryoshka-nested).

    Attributes:
        temperature: Scores are divided by it.
        symmetric: Add the document-to-query direction.
        similarity: ``"dot"`` or ``"cos"``.
        nesting: Matryoshka dims and weights (None: the full dim only).
        budget: Elements a tile of scores may hold.
    """

    temperature: float = 0.05
    symmetric: bool = False
    similarity: Similarity = "dot"
    nesting: Nesting | None = None
    budget: int = BUDGET

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice, /
    ) -> LossOutput:
        """This process's share; ``parts["loss_by_dim"]`` when nested."""
        if self.nesting is None:
            loss = info_nce(
                q, d, temperature=self.temperature, symmetric=self.symmetric,
                sim=self.similarity, positives=inputs.positives, rows=rows, budget=self.budget,
            )  # fmt: skip
            return LossOutput(loss, {})
        dims = self.nesting.chosen(inputs.step)
        values = nested_info_nce(
            q, d, dims, renormalize=self.nesting.renormalize, temperature=self.temperature,
            symmetric=self.symmetric, sim=self.similarity, positives=inputs.positives,
            rows=rows, budget=self.budget,
        )  # fmt: skip
        return nested_output(self.nesting, dims, values)
