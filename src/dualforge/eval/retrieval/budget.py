"""Budget mode for Matryoshka funnels: the cheapest cascade within a tolerance of exact search.

Candidate cascades are scored on a dev split; the reference is exact search with the full
embeddings, and the choice is the candidate with the fewest FLOPs per query whose quality is at
least ``(1 - tolerance)`` times the reference's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from statistics import NormalDist

import numpy as np
import torch

from dualforge.eval.metrics import Qrels, evaluate, parse_metrics
from dualforge.eval.retrieval.exact import Array, prepare, run_from_search
from dualforge.eval.retrieval.funnel import (
    Funnel,
    Stage,
    as_queries,
    cascade_flops,
    check_stages,
    format_funnel_spec,
)
from dualforge.eval.retrieval.index import VectorIndex

# ``(scores, ids) -> quality``: a float, or a ``(Q,)`` array of per-query values (mean = quality).
QualityFn = Callable[[np.ndarray, np.ndarray], "float | np.ndarray"]


def qrels_quality(
    qrels: Qrels,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    metric: str = "ndcg@10",
    *,
    per_query: bool = False,
) -> QualityFn:
    """A quality function for :func:`choose_cascade`: ``metric`` against ``qrels``.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``.
        query_ids: Id of each query row.
        doc_ids: Id of each document index.
        metric: Metric name, e.g. ``"ndcg@10"``.
        per_query: Return each judged query's value (in ``query_ids`` order) instead of the
            mean; :func:`choose_cascade` needs them for its ``confidence`` guard.

    Returns:
        ``(scores, ids) -> mean metric`` or ``-> (Q_judged,) values`` (see
        :func:`dualforge.eval.metrics.evaluate`).

    Raises:
        ValueError: For an unknown metric name.
    """
    parse_metrics([metric])

    def quality(scores: np.ndarray, ids: np.ndarray) -> float | np.ndarray:
        run = run_from_search(query_ids, doc_ids, scores, ids)
        if not per_query:
            return evaluate(qrels, run, [metric])[metric]
        table = evaluate(qrels, run, [metric], per_query=True)
        return np.array([table[q][metric] for q in query_ids if q in table])

    return quality


@dataclass(frozen=True)
class CascadeTrial:
    """A cascade evaluated on the dev queries: its spec, cost and quality."""

    spec: str
    flops_per_query: float
    quality: float
    seconds: float
    per_query: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, str | float]:
        """The JSON-ready fields (without the per-query values)."""
        return {
            "spec": self.spec,
            "flops_per_query": self.flops_per_query,
            "quality": self.quality,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class CascadeChoice:
    """The outcome of :func:`choose_cascade`.

    Attributes:
        chosen: The cheapest cascade within tolerance.
        reference: Exact search with the full embeddings (spec ``"D:k"``).
        tolerance: The relative quality loss allowed.
        trials: Every cascade evaluated, cheapest first.
    """

    chosen: CascadeTrial
    reference: CascadeTrial
    tolerance: float
    trials: tuple[CascadeTrial, ...]


def default_candidates(
    full_dim: int, n_docs: int, k: int = 10, shortlists: Sequence[int] = (50, 100, 200, 400, 800)
) -> list[tuple[Stage, ...]]:
    """A grid: first-stage dims (powers of two from 16 below ``D``) x shortlist sizes x shapes.

    For each pair ``(d_0, s)`` the shapes are: ``d_0:s, D:k``; the halving funnel
    ``d_0:s, 2d_0:s/2, ..., D:k`` (keeps never below ``k``); and one intermediate rerank
    ``d_0:s, d_1:s_1, D:k`` for every power of two ``d_0 < d_1 < D`` and ``s_1`` in
    ``s/2, s/4, s/8`` above ``k``. Shortlists not in ``(k, N)`` are dropped. The full exact search
    ``D:k`` is always the last candidate.

    Args:
        full_dim: Embedding size ``D``.
        n_docs: Corpus size ``N``.
        k: Results of the last stage.
        shortlists: First-stage keep sizes.

    Returns:
        The candidate cascades.
    """
    out: dict[str, tuple[Stage, ...]] = {}
    first_dims = [2**p for p in range(4, 16) if 2**p < full_dim]
    for d0 in first_dims:
        for s in (s for s in shortlists if k < s < n_docs):
            for cascade in _shapes(d0, s, full_dim, k):
                out.setdefault(format_funnel_spec(cascade), cascade)
    out[f"{full_dim}:{k}"] = (Stage(full_dim, k),)
    return list(out.values())


def _shapes(d0: int, s: int, full_dim: int, k: int) -> list[tuple[Stage, ...]]:
    """The cascades of :func:`default_candidates` that start with ``d0:s``."""
    last = Stage(full_dim, k)
    dims = [d0 * 2**i for i in range(16) if d0 * 2**i < full_dim] + [full_dim]
    keeps = [max(k, s // 2**i) for i in range(len(dims) - 1)] + [k]
    shapes = [(Stage(d0, s), last), tuple(Stage(d, c) for d, c in zip(dims, keeps))]
    for d1 in dims[1:-1]:
        for s1 in (s // 2, s // 4, s // 8):
            if s1 > k:
                shapes.append((Stage(d0, s), Stage(d1, s1), last))
    return shapes


def _trial(funnel: Funnel, queries: torch.Tensor, quality_fn: QualityFn) -> CascadeTrial:
    result = funnel.search(queries)
    spec = format_funnel_spec(funnel.stages)
    value = quality_fn(result.scores, result.ids)
    values = np.asarray(value, dtype=np.float64) if np.ndim(value) == 1 else None
    quality = float(values.mean()) if values is not None else float(value)
    return CascadeTrial(spec, result.flops_per_query, quality, result.seconds, values)


def _qualifies(
    trial: CascadeTrial, reference: CascadeTrial, tolerance: float, confidence: float | None
) -> bool:
    """Within ``tolerance`` of the reference: on the mean, or (``confidence``) by the one-sided
    normal lower confidence bound of the mean paired per-query difference."""
    allowed = tolerance * abs(reference.quality)
    if confidence is None:
        return trial.quality >= reference.quality - allowed
    if trial.per_query is None or reference.per_query is None:
        raise ValueError("confidence needs a quality_fn that returns per-query values")
    diff = trial.per_query - reference.per_query  # (Q,)
    if len(diff) < 2:
        raise ValueError(f"confidence needs at least 2 judged dev queries, got {len(diff)}")
    z = NormalDist().inv_cdf(confidence)
    low = float(diff.mean() - z * diff.std(ddof=1) / np.sqrt(len(diff)))
    return low >= -allowed


def choose_cascade(
    docs: Array,
    queries: Array,
    quality_fn: QualityFn,
    candidates: Sequence[Sequence[Stage] | str] | None = None,
    *,
    tolerance: float = 0.01,
    k: int = 10,
    metric: str = "ip",
    factory: str = "Flat",
    backend: str = "auto",
    params: str | None = None,
    confidence: float | None = None,
) -> CascadeChoice:
    """The cheapest cascade (by FLOPs) whose dev quality is ``>= (1 - tolerance) * exact``.

    ``exact`` is the quality of exact (``"Flat"``) top-``k`` search with the full embeddings,
    which always qualifies, so a choice always exists. With an exact (``"Flat"``) first stage,
    candidates whose FLOPs bound is at least the reference's are skipped; with an approximate
    one every candidate runs and is ranked by the FLOPs its search measured.

    The cheapest of many candidates that pass on the dev mean is often one that passed by luck
    (in a 5-fold cross-validation on SciFact test, one fold's pick passed on 240 queries and kept
    88% of exact search on the other 60). With
    ``confidence`` (e.g. 0.9), a candidate must pass by the one-sided lower confidence bound of
    its mean per-query difference to exact search (normal approximation, paired over the dev
    queries), which needs a per-query ``quality_fn`` (``qrels_quality(..., per_query=True)``).

    Args:
        docs: ``(N, D)`` document embeddings.
        queries: ``(Q, D)`` dev query embeddings.
        quality_fn: ``(scores, ids) -> quality``, higher is better (see :func:`qrels_quality`).
        candidates: Cascades (stages or spec strings); :func:`default_candidates` when None.
        tolerance: Relative quality loss allowed, in ``[0, 1)``.
        k: Results of the reference search (and of the default candidates).
        metric: ``"ip"`` or ``"cos"``.
        factory: faiss factory string of every first-stage index.
        backend: ``"auto"``, ``"faiss"`` or ``"torch"``.
        params: faiss search parameters of every first-stage index.
        confidence: One-sided confidence level in ``(0, 1)`` of the pass rule; None: the mean.

    Returns:
        The choice, the reference and every trial.

    Raises:
        ValueError: For a tolerance outside ``[0, 1)``, a confidence outside ``(0, 1)`` or
            without per-query qualities, ``k < 1`` or an invalid candidate.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    d = prepare(docs, metric="ip", name="docs")  # (N, D)
    q = as_queries(queries, int(d.shape[1]))  # (Q, D)
    n, full = int(d.shape[0]), int(d.shape[1])
    make = partial(Funnel, d, factory=factory, metric=metric, backend=backend, params=params)
    exact = Funnel(d, [Stage(full, k)], metric=metric, backend=backend)  # "Flat": exact
    reference = _trial(exact, q, quality_fn)
    cands = default_candidates(full, n, k) if candidates is None else candidates
    stages = [check_stages(c, full) for c in cands]
    indexes: dict[int, VectorIndex] = {}  # one first-stage index per prefix size
    trials = [reference]
    for s in stages:
        if factory == "Flat" and cascade_flops(s, n) >= reference.flops_per_query:
            continue
        if s[0].dims not in indexes:
            indexes[s[0].dims] = make(s).index
        trials.append(_trial(make(s, first_index=indexes[s[0].dims]), q, quality_fn))
    trials.sort(key=lambda t: (t.flops_per_query, -t.quality))
    chosen = next(t for t in trials if _qualifies(t, reference, tolerance, confidence))
    return CascadeChoice(chosen, reference, tolerance, tuple(trials))
