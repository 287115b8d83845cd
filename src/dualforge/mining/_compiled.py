"""The compiled (numba) backend of ``TreeIndex.sample``: one tight loop per query.

Same tree, same exactness argument as the torch backend (``sampler.py``), but the frontier is
refined per query with a max-heap of bound gaps instead of batched rounds (``_kernels.py``). The
cut's centre scores for a block of queries come from one BLAS matmul here; everything after that
runs compiled, queries in parallel over numba's threads (``numba.set_num_threads``).

numba is optional (``pip install dualforge[fast]``) and imported on first use only.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from functools import lru_cache
from types import ModuleType
from typing import Literal, get_args

import numpy as np
import torch

from dualforge.mining.build import TreeArrays
from dualforge.mining.frontier import SampleStats
from dualforge.mining.search import bound_radii

Tensor = torch.Tensor
SamplerBackend = Literal["auto", "torch", "numba"]
BACKENDS: tuple[str, ...] = get_args(SamplerBackend)
# The numba backend caps the heap expansions of one query at max_rounds times this.
EXPANSIONS_PER_ROUND = 64
# Proposals allowed per query before giving up: this many per requested sample, plus a floor.
PROPOSALS_PER_SAMPLE = 10_000
PROPOSALS_FLOOR = 1_000_000
# Query rows per block: the block's (rows, C) cut matrices stay below this many entries.
BLOCK_ENTRIES = 1 << 22


# The packages whose absence means "numba is not installed" (anything else is a real error).
NUMBA_PACKAGES = ("numba", "llvmlite")


def import_optional(module: str, packages: tuple[str, ...]) -> ModuleType | None:
    """Import ``module``, or None when one of ``packages`` (its optional dependency) is missing.

    Any other error, a missing module of ours or an error inside ``module`` itself, propagates:
    a bug is never mistaken for an absent extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in packages:
            return None
        raise


@lru_cache(maxsize=1)
def _kernels() -> ModuleType | None:
    """The compiled kernels, or None when numba is not installed."""
    return import_optional("dualforge.mining._kernels", NUMBA_PACKAGES)


def numba_available() -> bool:
    """Whether numba imports here (the first call imports it)."""
    return _kernels() is not None


def resolve_backend(backend: str) -> str:
    """``"torch"`` or ``"numba"`` for a requested backend.

    Args:
        backend: ``"auto"`` (numba when it imports, else torch), ``"torch"`` or ``"numba"``.

    Returns:
        The backend to use.

    Raises:
        ValueError: For an unknown name.
        ImportError: For ``"numba"`` when numba is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numba" if numba_available() else "torch"
    if backend == "numba":
        _load()
    return backend


def _exclusions(keys: Tensor, n_queries: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr, ids)``: query ``i`` excludes the sorted ids ``ids[ptr[i]:ptr[i + 1]]``."""
    bounds = torch.arange(n_queries + 1, dtype=torch.int64) * n_points  # (Q + 1,)
    ptr = torch.searchsorted(keys, bounds)  # (Q + 1,)
    ids = keys - torch.repeat_interleave(bounds[:-1], ptr[1:] - ptr[:-1])  # (X,)
    return ptr.numpy(), ids.numpy()


def _load() -> ModuleType:
    k = _kernels()
    if k is None:
        raise ImportError("the numba sampler backend needs numba: pip install dualforge[fast]")
    return k


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Run numba's parallel kernels on torch's thread count (``run.threads``), and give torch its
    count back after: numba's OpenMP layer shares torch's OpenMP runtime and resets its thread
    count to every core, which made a one-thread run use two (and sum in another order)."""
    import numba

    threads = torch.get_num_threads()
    most = int(getattr(numba.config, "NUMBA_NUM_THREADS", threads))  # the pool numba started
    numba.set_num_threads(max(1, min(threads, most)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _stats(counters: np.ndarray, n_queries: int, num_samples: int, n_cut: int) -> SampleStats:
    """Sum the per-query counters; ``rounds`` is the most expansions of one query."""
    k = _load()
    total = counters.sum(0)
    return SampleStats(
        queries=n_queries, samples=n_queries * num_samples,
        rounds=int(counters[:, k.EXPANSIONS].max(initial=0)), cut_nodes=n_cut,
        nodes_expanded=int(total[k.NODES]), leaves_expanded=int(total[k.LEAVES]),
        centres_scored=int(total[k.CENTRES]), points_scored=int(total[k.POINTS]),
        proposals=int(total[k.PROPOSALS]), node_proposals=int(total[k.NODE_PROPOSALS]),
        accepted=int(total[k.ACCEPTED]),
    )  # fmt: skip


def sample_compiled(
    tree: TreeArrays,
    queries: Tensor,
    num_samples: int,
    *,
    temperature: float,
    excluded: Tensor,
    eta: float,
    max_rounds: int,
    max_points: int | None,
    seed: int,
    cut: Tensor,
    ceiling: Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, SampleStats, np.ndarray]:
    """``num_samples`` i.i.d. draws per query from the exact softmax, compiled (module docstring).

    Args:
        tree: The tree.
        queries: ``(Q, d)`` float32 queries.
        num_samples: Draws per query.
        temperature: ``τ > 0``.
        excluded: Sorted keys ``q * N + id`` of excluded (query, id) pairs.
        eta: Target bound gap as a fraction of the proposal mass (0 < eta < 1).
        max_rounds: Caps the heap expansions of each query at ``64 * max_rounds``.
        max_points: Most leaf points scored per query while refining (None: no cap).
        seed: Seed of the random streams (one per query row).
        cut: ``(C,)`` nodes the refinement starts from.
        ceiling: ``(Q,)`` highest score a drawn target may have (None: no filter).

    Returns:
        ``(scores, positions, stats, empty)``: ``(Q, num_samples)`` float32 exact scores ``q·t``
        and int64 positions of the draws, the work done, and ``(Q,)`` bool: queries left with
        no target below their ceiling (their rows are not draws). Without a ceiling no row is
        empty.

    Raises:
        ImportError: Without numba.
        RuntimeError: If a query accepts too few proposals (raise ``max_rounds``).
    """
    k = _load()
    n, n_points = queries.shape[0], tree.ids.shape[0]
    radii, qnorm = bound_radii(tree), torch.linalg.vector_norm(queries, dim=1)
    leaf = tree.child_count == 0
    cost = torch.where(leaf, tree.counts.double(), k.CENTRE_COST * tree.child_count.double())
    arrays = (
        tree.vectors.numpy(), tree.centres.numpy(), radii.double().numpy(),
        torch.log(tree.counts.double()).numpy(), tree.counts.numpy(), tree.starts.numpy(),
        tree.child_start.numpy(), tree.child_count.numpy(), (1.0 / cost).numpy(),
    )  # fmt: skip
    centres = tree.centres[cut]  # (C, d)
    ex_ptr, ex_ids = _exclusions(excluded, n, n_points)
    params = np.array([temperature, eta], dtype=np.float64)
    limits = np.array([
        num_samples, EXPANSIONS_PER_ROUND * max_rounds, -1 if max_points is None else max_points,
        PROPOSALS_PER_SAMPLE * num_samples + PROPOSALS_FLOOR, int(tree.child_count.max()),
        int(tree.counts[leaf].max()), 0,
    ], dtype=np.int64)  # fmt: skip
    out_s = np.zeros((n, num_samples), dtype=np.float32)  # an empty row stays 0
    out_p = np.zeros((n, num_samples), dtype=np.int64)
    counters = np.zeros((n, k.N_STATS), dtype=np.int64)
    caps = np.full(n, np.inf) if ceiling is None else ceiling.double().cpu().numpy()
    step = max(1, BLOCK_ENTRIES // max(1, len(cut)))
    with torch_threads_kept():
        for lo in range(0, n, step):
            hi, limits[6] = min(n, lo + step), lo
            cut_scores = (queries[lo:hi] @ centres.T).double().numpy()  # (rows, C)
            k.sample_block(
                queries[lo:hi].numpy(), qnorm[lo:hi].double().numpy(), cut.numpy(), cut_scores,
                arrays, tree.ids.numpy(), ex_ptr[lo : hi + 1] - ex_ptr[lo], ex_ids[ex_ptr[lo]:],
                params, limits, seed, out_s[lo:hi], out_p[lo:hi], counters[lo:hi], caps[lo:hi],
            )  # fmt: skip
    empty = counters[:, k.EMPTY] > 0
    if ceiling is not None:  # a filtered query that found nothing to accept: no kept target
        empty |= counters[:, k.FAILED] > 0
        counters[:, k.FAILED] = 0
    if counters[:, k.FAILED].any():
        raise RuntimeError(
            f"sampler accepted too few proposals for {int(counters[:, k.FAILED].sum())} queries "
            f"within {int(limits[3])} proposals each; raise max_rounds / max_points or lower eta"
        )
    return out_s, out_p, _stats(counters, n, num_samples, len(cut)), empty
