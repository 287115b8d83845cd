"""Matryoshka adaptive retrieval (Kusupati et al. 2022): shortlist with a short prefix, rerank longer.

A Matryoshka embedding's first ``m`` dims are an embedding on their own, so a search can find a
shortlist cheaply with few dims and rescore only that shortlist with more. A *funnel* chains
such stages, e.g. ``32:200,64:100,128:50,256:25,384:10``: search the whole corpus with 32 dims
keeping 200, rescore those 200 with 64 dims keeping 100, and so on up to the 10 best by 384 dims.

FLOPs count the multiply-adds of scoring only, per query: an exact first stage costs ``N * d_0``,
and each rerank stage ``survivors * d_i``; exact search with the full embeddings costs ``N * D``.
With an approximate first-stage index (``HNSW32``, ``IVF256,Flat``, ...) a search reports the
vectors that index actually scored (its ``last_scored``) times ``d_0`` instead of ``N * d_0``;
:func:`cascade_flops` stays the exact-scan bound.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from dualforge.eval.retrieval.exact import Array, prepare
from dualforge.eval.retrieval.index import PrefixRescorer, VectorIndex, build_index


@dataclass(frozen=True)
class Stage:
    """One funnel stage: score with the first ``dims`` dimensions, keep the best ``keep``."""

    dims: int
    keep: int


@dataclass
class FunnelResult:
    """What a cascade search returns.

    Attributes:
        scores: ``(Q, k)`` float32 scores of the last stage, best first.
        ids: ``(Q, k)`` int64 document indices (``-1`` where fewer were found).
        flops_per_query: Scoring multiply-adds per query, measured (see the module docstring).
        seconds: Wall time of the search (all queries, index build excluded).
    """

    scores: np.ndarray
    ids: np.ndarray
    flops_per_query: float
    seconds: float


def parse_funnel_spec(spec: str) -> tuple[Stage, ...]:
    """Parse ``"32:200,64:100,128:50"`` into stages (validate with :func:`check_stages`).

    Args:
        spec: Comma-separated ``dims:keep`` pairs.

    Returns:
        The stages in order.

    Raises:
        ValueError: If a part is not ``int:int`` or the spec is empty.
    """
    stages = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        fields = part.split(":")
        try:
            if len(fields) != 2:
                raise ValueError
            stages.append(Stage(int(fields[0]), int(fields[1])))
        except ValueError:
            raise ValueError(
                f"funnel stage {part!r} is not dims:keep (e.g. '32:200,64:100,128:10')"
            ) from None
    if not stages:
        raise ValueError(f"funnel spec {spec!r} has no stage")
    return tuple(stages)


def format_funnel_spec(stages: Sequence[Stage]) -> str:
    """The spec string of ``stages``, e.g. ``"32:200,64:10"``."""
    return ",".join(f"{s.dims}:{s.keep}" for s in stages)


def check_stages(stages: Sequence[Stage] | str, full_dim: int) -> tuple[Stage, ...]:
    """Validate a cascade against an embedding size.

    Args:
        stages: Stages or a spec string.
        full_dim: The embedding size ``D``.

    Returns:
        The stages as a tuple.

    Raises:
        ValueError: Unless there is a stage, every keep is >= 1, the dims are strictly
            increasing within 1..``full_dim`` and the keeps are non-increasing.
    """
    out = parse_funnel_spec(stages) if isinstance(stages, str) else tuple(stages)
    if not out:
        raise ValueError("a funnel needs at least one stage")
    for s in out:
        if s.keep < 1:
            raise ValueError(f"funnel keep must be >= 1, got {s.keep} at dims {s.dims}")
        if not 0 < s.dims <= full_dim:
            raise ValueError(f"funnel dims {s.dims} is outside 1..{full_dim} (embedding size)")
    for prev, cur in pairwise(out):
        if cur.dims <= prev.dims:
            raise ValueError(f"funnel dims must increase: {prev.dims} then {cur.dims}")
        if cur.keep > prev.keep:
            raise ValueError(f"funnel keep must not increase: {prev.keep} then {cur.keep}")
    return out


def cascade_flops(stages: Sequence[Stage], n_docs: int) -> int:
    """Scoring multiply-adds per query: ``N * d_0 + sum_i min(keep_{i-1}, N) * d_i``."""
    flops = n_docs * stages[0].dims
    for prev, cur in pairwise(stages):
        flops += min(prev.keep, n_docs) * cur.dims
    return flops


def exact_flops(n_docs: int, dim: int) -> int:
    """Scoring multiply-adds per query of exact search with ``dim`` dims: ``N * dim``."""
    return n_docs * dim


def top_rows(scores: torch.Tensor, ids: torch.Tensor, keep: int) -> tuple[torch.Tensor, ...]:
    """The ``keep`` best of each row: score descending, equal scores by index ascending.

    Args:
        scores: ``(Q, S)`` scores (``-inf`` at empty slots).
        ids: ``(Q, S)`` document indices (``-1`` at empty slots, which sort last).
        keep: How many to keep (clipped to ``S``).

    Returns:
        ``(scores, ids)``, each ``(Q, min(keep, S))``.
    """
    by_id = torch.where(ids < 0, torch.iinfo(torch.int64).max, ids).argsort(dim=1)  # (Q, S)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)  # (Q, S)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :keep]  # (Q, keep)
    return scores.gather(1, order), ids.gather(1, order)


def _run_cascade(
    index: VectorIndex,
    rescorer: PrefixRescorer,
    queries: torch.Tensor,
    stages: Sequence[Stage],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Search the index at ``stages[0].dims`` then rescore at each following stage's dims.

    Returns:
        ``(scores, ids, first_scored)``: the last stage's results and the number of vectors the
        first-stage index scored, over all queries.
    """
    scores_out, ids_out, first_scored = [], [], 0
    for start in range(0, queries.shape[0], batch_size):
        q = queries[start : start + batch_size]  # (b, D)
        s_np, i_np = index.search(q[:, : stages[0].dims], stages[0].keep)  # (b, S_0)
        first_scored += index.last_scored
        ids = torch.from_numpy(i_np).to(q.device)  # (b, S_0)
        scores = torch.from_numpy(s_np).to(q.device)  # (b, S_0)
        for stage in stages[1:]:
            scores = rescorer.rescore(q, ids, stage.dims)  # (b, S_prev)
            scores, ids = top_rows(scores, ids, stage.keep)  # (b, S_i)
        scores_out.append(scores.cpu().numpy())
        ids_out.append(ids.cpu().numpy())
    if not scores_out:
        k = min(stages[-1].keep, rescorer.ntotal)
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), 0
    return np.concatenate(scores_out).astype(np.float32), np.concatenate(ids_out), first_scored


def as_queries(queries: Array, full_dim: int) -> torch.Tensor:
    """``(Q, full_dim)`` float32 query vectors; a ValueError when the dim does not match."""
    q = prepare(queries, metric="ip", name="queries")  # (Q, D)
    if q.shape[1] != full_dim:
        raise ValueError(f"query dim {q.shape[1]} != document dim {full_dim}")
    return q


class Funnel:
    """A cascade of Matryoshka stages over a fixed corpus (see the module docstring).

    Args:
        docs: ``(N, D)`` document embeddings.
        stages: Stages or a spec string such as ``"32:200,64:100,128:50,256:25,384:10"``.
        factory: faiss factory string of the first-stage index (``"Flat"``: exact).
        metric: ``"ip"`` or ``"cos"`` (every prefix renormalised).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see :func:`build_index`).
        params: faiss search parameters of the first stage, e.g. ``"efSearch=128"``.
        first_index: A prebuilt index over the ``stages[0].dims`` prefix of ``docs`` (with the
            same metric), to share one index between funnels; built when ``None``.
        batch_size: Queries processed together.

    Raises:
        ValueError: For bad stages (see :func:`check_stages`), arguments or a first index of
            the wrong shape.
    """

    def __init__(
        self,
        docs: Array,
        stages: Sequence[Stage] | str,
        *,
        factory: str = "Flat",
        metric: str = "ip",
        backend: str = "auto",
        params: str | None = None,
        first_index: VectorIndex | None = None,
        batch_size: int = 256,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rescorer = PrefixRescorer(docs, metric)
        self.stages = check_stages(stages, self.rescorer.dim)
        self.batch_size = batch_size
        if first_index is None:
            first = prepare(docs, metric="ip", dims=self.stages[0].dims, name="docs")  # (N, d_0)
            first_index = build_index(first, factory, metric, backend=backend, params=params)
        if (first_index.dim, first_index.ntotal) != (self.stages[0].dims, self.rescorer.ntotal):
            raise ValueError(
                f"first_index holds {first_index.ntotal} x {first_index.dim} vectors; the "
                f"funnel needs {self.rescorer.ntotal} x {self.stages[0].dims}"
            )
        self.index = first_index

    @property
    def flops_per_query(self) -> int:
        """Scoring multiply-adds per query with an exact first stage (:func:`cascade_flops`).

        This is the bound; :meth:`search` reports what an approximate first stage really spent.
        """
        return cascade_flops(self.stages, self.rescorer.ntotal)

    def search(self, queries: Array) -> FunnelResult:
        """Run the cascade for every query.

        Args:
            queries: ``(Q, D)`` query embeddings.

        Returns:
            The last stage's ``(Q, min(keep, N))`` results, FLOPs and wall time.

        Raises:
            ValueError: If the query dim differs from the documents'.
        """
        start = time.perf_counter()
        q = as_queries(queries, self.rescorer.dim)  # (Q, D)
        scores, ids, first = _run_cascade(
            self.index, self.rescorer, q, self.stages, self.batch_size
        )
        seconds = time.perf_counter() - start
        d0 = self.stages[0].dims
        rerank = self.flops_per_query - self.rescorer.ntotal * d0  # the bound less its first stage
        flops = first / max(1, q.shape[0]) * d0 + rerank
        return FunnelResult(scores, ids, flops, seconds)


class AdaptiveSearcher:
    """Shortlist with a ``D_s``-dim prefix index, rerank the shortlist exactly with ``D_r`` dims.

    Args:
        docs: ``(N, D)`` document embeddings.
        shortlist_dims: ``D_s``, prefix size of the shortlist index.
        rerank_dims: ``D_r``, prefix size used to rerank (default: ``D``); ``>= D_s``.
        factory: faiss factory string of the shortlist index (``"Flat"``: exact).
        metric: ``"ip"`` or ``"cos"`` (every prefix renormalised).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see :func:`build_index`).
        params: faiss search parameters of the shortlist index, e.g. ``"nprobe=16"``.
        batch_size: Queries reranked together.

    Raises:
        ValueError: For dims outside ``1..D``, ``D_r < D_s`` or other bad arguments.
    """

    def __init__(
        self,
        docs: Array,
        shortlist_dims: int,
        rerank_dims: int | None = None,
        *,
        factory: str = "Flat",
        metric: str = "ip",
        backend: str = "auto",
        params: str | None = None,
        batch_size: int = 256,
    ) -> None:
        self.rescorer = PrefixRescorer(docs, metric)
        full = self.rescorer.dim
        self.shortlist_dims = shortlist_dims
        self.rerank_dims = full if rerank_dims is None else rerank_dims
        if not 0 < shortlist_dims <= self.rerank_dims <= full:
            raise ValueError(
                f"need 1 <= shortlist_dims ({shortlist_dims}) <= rerank_dims "
                f"({self.rerank_dims}) <= {full} (the embedding size)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        first = prepare(docs, metric="ip", dims=shortlist_dims, name="docs")  # (N, D_s)
        self.index = build_index(first, factory, metric, backend=backend, params=params)

    def stages(self, k: int, shortlist: int) -> tuple[Stage, Stage]:
        """The two stages of a search: ``(D_s, shortlist)`` then ``(D_r, k)``."""
        return Stage(self.shortlist_dims, shortlist), Stage(self.rerank_dims, k)

    def flops_per_query(self, k: int = 10, shortlist: int = 200) -> int:
        """Scoring multiply-adds per query: ``N * D_s + min(shortlist, N) * D_r``."""
        return cascade_flops(self.stages(k, shortlist), self.rescorer.ntotal)

    def search(
        self, queries: Array, k: int = 10, shortlist: int = 200
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query after reranking a ``shortlist``.

        Args:
            queries: ``(Q, D)`` query embeddings.
            k: Results per query (clipped to ``N``).
            shortlist: Candidates per query from the ``D_s`` index, ``>= k``.

        Returns:
            ``(scores, ids)``: ``(Q, min(k, N))`` float32 ``D_r`` scores and int64 indices,
            best first.

        Raises:
            ValueError: For ``k < 1``, ``shortlist < k`` or a query dim mismatch.
        """
        if k < 1 or shortlist < k:
            raise ValueError(f"need 1 <= k ({k}) <= shortlist ({shortlist})")
        q = as_queries(queries, self.rescorer.dim)  # (Q, D)
        scores, ids, _ = _run_cascade(
            self.index, self.rescorer, q, self.stages(k, shortlist), self.batch_size
        )
        return scores, ids
