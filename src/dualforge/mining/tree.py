"""A dynamic tree index over target vectors: exact top-k, exact softmax sampling, updates.

``TreeIndex.build`` clusters the targets hierarchically (see ``build.py``); every node stores a
centre, a covering radius, a count and a contiguous range of the points, which are held in leaf
order (arrays, not Python objects). Results follow faiss: ``(scores, ids)``, ids being row
numbers of the vectors given to ``build``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualforge.mining._arrays import Array, as_matrix
from dualforge.mining._compiled import resolve_backend, sample_compiled
from dualforge.mining.build import BuildParams, TreeArrays, build_tree
from dualforge.mining.frontier import cut_nodes
from dualforge.mining.maintenance import UpdateStats, update_every_position, update_positions
from dualforge.mining.sampler import Exclude, SampleStats, cut_size, exclusion_keys, sample_softmax
from dualforge.mining.search import tree_search

FORMAT = "dualforge.mining.TreeIndex/1"
NODE_FIELDS = (
    "centres", "radii", "build_radii", "counts", "starts", "child_start", "child_count",
    "parent", "depth",
)  # fmt: skip


class TreeIndex:
    """Hierarchical-clustering tree over ``N`` target vectors of dimension ``d``.

    Args:
        arrays: The tree arrays (see ``TreeArrays``).
        params: The parameters it was built with (used again for subtree rebuilds).
    """

    def __init__(self, arrays: TreeArrays, params: BuildParams) -> None:
        self.arrays = arrays
        self.params = params
        self.positions = torch.empty_like(arrays.ids)
        self.positions[arrays.ids] = torch.arange(len(arrays.ids))
        self._cut: torch.Tensor | None = None  # sampler's starting cut, cleared by updates

    @classmethod
    def build(
        cls,
        vectors: Array,
        *,
        branching: int = 16,
        leaf_size: int = 64,
        iters: int = 8,
        sample_per_centre: int = 64,
        seed: int = 0,
    ) -> TreeIndex:
        """Cluster ``(N, d)`` vectors into a tree.

        Args:
            vectors: ``(N, d)`` float vectors (copied; ids are their row numbers).
            branching: Most children per node (>= 2).
            leaf_size: Most points per leaf (>= 1).
            iters: k-means iterations per split (>= 1).
            sample_per_centre: k-means training points per centre for large nodes (>= 1).
            seed: Random seed.

        Returns:
            The index.

        Raises:
            ValueError: For bad shapes, an empty input or bad parameters.
        """
        if branching < 2 or leaf_size < 1 or iters < 1 or sample_per_centre < 1:
            raise ValueError(
                f"need branching >= 2, leaf_size, iters, sample_per_centre >= 1; got "
                f"{branching}, {leaf_size}, {iters}, {sample_per_centre}"
            )
        x = as_matrix(vectors, "vectors")
        if x.shape[0] == 0:
            raise ValueError("cannot build an index of 0 vectors")
        params = BuildParams(branching, leaf_size, iters, sample_per_centre, seed)
        return cls(build_tree(x, params), params)

    @property
    def num_points(self) -> int:
        """``N``."""
        return int(self.arrays.ids.shape[0])

    @property
    def dim(self) -> int:
        """``d``."""
        return int(self.arrays.vectors.shape[1])

    @property
    def num_nodes(self) -> int:
        """Number of tree nodes."""
        return int(self.arrays.counts.shape[0])

    def memory_bytes(self) -> int:
        """Bytes held by the index: vectors, ids, positions and node arrays."""
        fields = [getattr(self.arrays, f) for f in (*NODE_FIELDS, "vectors", "ids")]
        return sum(t.element_size() * t.numel() for t in (*fields, self.positions))

    def vectors(self, ids: Array | None = None) -> torch.Tensor:
        """Current vectors by id: ``(len(ids), d)``, or all ``(N, d)`` in id order."""
        pos = self.positions if ids is None else self.positions[self._ids(ids)]
        return self.arrays.vectors[pos]

    def search(
        self, queries: Array, k: int, *, per_round: int = 16, ceiling: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` targets by inner product (branch and bound; see ``search.py``).

        Args:
            queries: ``(Q, d)`` query vectors.
            k: Results per query; clipped to ``N``.
            per_round: Nodes expanded per query per round (a speed knob).
            ceiling: ``(Q,)`` highest score a returned target may have (None: no filter).

        Returns:
            ``(scores, ids)``: ``(Q, min(k, N))`` float32 and int64, best first (equal scores
            by id ascending); ``-inf`` / ``-1`` past a query's last target under its ceiling.

        Raises:
            ValueError: For bad shapes, ``k < 1`` or ``per_round < 1``.
        """
        if k < 1 or per_round < 1:
            raise ValueError(f"k and per_round must be >= 1, got {k} and {per_round}")
        q = as_matrix(queries, "queries", self.dim)
        k = min(k, self.num_points)
        if q.shape[0] == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        scores, pos = tree_search(self.arrays, q, k, per_round, ceiling)
        s, i = scores.numpy(), torch.where(pos >= 0, self.arrays.ids[pos.clamp(min=0)], -1).numpy()
        order = np.lexsort((i, -s), axis=-1)
        return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)

    def sample(
        self,
        queries: Array,
        num_samples: int,
        *,
        temperature: float,
        exclude: Exclude | None = None,
        eta: float = 0.25,
        max_rounds: int = 64,
        max_points: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        ceiling: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray, SampleStats]:
        """I.i.d. draws from the exact softmax ``p(t | q) ∝ exp(q·t / τ)`` over all targets.

        Args:
            queries: ``(Q, d)`` query vectors.
            num_samples: Draws per query (with replacement).
            temperature: ``τ > 0``.
            exclude: Ids never to return, per query (known positives): ``(Q, m)`` integers
                padded with ``-1``, or one sequence per query. The draws are then exact draws
                from the softmax restricted to the other targets.
            eta: Stop refining the proposal when its bound gap is below ``eta`` of its mass;
                the acceptance rate is then at least ``1 - eta``. Any value in (0, 1) is exact.
                The numba backend may stop earlier, when further refinement would cost more
                than the rejections it saves (lower acceptance, less work).
            max_rounds: Most refinement rounds (torch); the numba backend expands at most
                ``64 * max_rounds`` nodes per query.
            max_points: Most leaf points scored per query while refining (None: no cap).
            seed: Seed of a fresh generator, when ``generator`` is None.
            generator: Random generator to use (the numba backend takes one seed from it).
            backend: ``"torch"`` (batched tensor ops), ``"numba"`` (a compiled loop per query,
                ``pip install dualforge[fast]``) or ``"auto"`` (numba when it imports). Both are
                exact; for a fixed generator each gives reproducible, but different, draws.
            ceiling: ``(Q,)`` highest score a drawn target may have (the positive-aware filter;
                None: none). Node bounds are capped by it, so the draws are exact draws from the
                softmax over the targets at most the ceiling, at about the unfiltered cost. A
                query with no such target gets ``-1`` ids and ``-inf`` scores (the caller
                decides what to do; see ``negatives.mine``).

        Returns:
            ``(scores, ids, stats)``: ``(Q, num_samples)`` float32 exact scores ``q·t`` and
            int64 ids of the draws, and the work done.

        Raises:
            ValueError: For bad shapes or parameters, an unknown backend, or a query excluding
                every target.
            ImportError: For ``backend="numba"`` without numba.
        """
        backend = resolve_backend(backend)
        if num_samples < 1 or not temperature > 0 or not 0 < eta < 1 or max_rounds < 0:
            raise ValueError(
                f"need num_samples >= 1, temperature > 0, 0 < eta < 1, max_rounds >= 0; got "
                f"{num_samples}, {temperature}, {eta}, {max_rounds}"
            )
        q = as_matrix(queries, "queries", self.dim)
        keys = exclusion_keys(exclude, q.shape[0], self.num_points)
        if generator is None:
            generator = torch.Generator().manual_seed(
                seed if seed is not None else int(torch.randint(1 << 62, (1,)))
            )
        cap = None if ceiling is None else ceiling.detach().float().cpu()
        if backend == "numba":
            scores_np, pos_np, stats, empty_np = sample_compiled(
                self.arrays, q, num_samples, temperature=temperature, excluded=keys, eta=eta,
                max_rounds=max_rounds, max_points=max_points,
                seed=int(torch.randint(1 << 62, (1,), generator=generator)), cut=self._get_cut(),
                ceiling=cap,
            )  # fmt: skip
            scores, pos, empty = map(torch.from_numpy, (scores_np, pos_np, empty_np))
        else:
            scores, pos, stats, empty = sample_softmax(
                self.arrays, q, num_samples, temperature=temperature, excluded=keys, eta=eta,
                max_rounds=max_rounds, max_points=max_points, generator=generator,
                cut=self._get_cut(), ceiling=cap,
            )  # fmt: skip
        ids = self.arrays.ids[pos.clamp(min=0)].masked_fill(empty.unsqueeze(1), -1)
        return scores.masked_fill(empty.unsqueeze(1), -math.inf).numpy(), ids.numpy(), stats

    def update(self, ids: Array, vectors: Array, *, looseness: float = 1.5) -> UpdateStats:
        """Replace the vectors of some targets in place (see ``maintenance.py``).

        Args:
            ids: ``(P,)`` unique target ids.
            vectors: ``(P, d)`` their new vectors.
            looseness: Re-cluster a subtree once its radius exceeds this factor times its
                radius at (re)build (> 1).

        Returns:
            Counts of refreshed nodes and rebuilt subtrees.

        Raises:
            ValueError: For bad shapes, out-of-range or repeated ids, ``looseness <= 1``.
        """
        idx = self._ids(ids)
        v = as_matrix(vectors, "vectors", self.dim)
        if v.shape[0] != len(idx) or len(torch.unique(idx)) != len(idx) or not looseness > 1:
            raise ValueError(
                f"need unique ids, one vector per id and looseness > 1; got {len(idx)} ids, "
                f"{v.shape[0]} vectors, looseness {looseness}"
            )
        self.arrays, stats = update_positions(
            self.arrays, self.positions[idx], v, self.params, looseness
        )
        self._reindex(stats)
        return stats

    def update_all(self, vectors: Array, *, looseness: float = 1.5) -> UpdateStats:
        """Replace every vector (e.g. a Nyström-corrected map), same rebuild policy as ``update``.

        Args:
            vectors: ``(N, d)`` new vectors in id order.
            looseness: Rebuild factor (> 1).

        Returns:
            Counts of refreshed nodes and rebuilt subtrees.

        Raises:
            ValueError: For a wrong shape or ``looseness <= 1``.
        """
        v = as_matrix(vectors, "vectors", self.dim)
        if v.shape[0] != self.num_points or not looseness > 1:
            raise ValueError(
                f"need {self.num_points} vectors and looseness > 1; got {v.shape[0]}, {looseness}"
            )
        self.arrays, stats = update_every_position(
            self.arrays, v[self.arrays.ids], self.params, looseness
        )
        self._reindex(stats)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The index as tensors plus its build parameters (JSON text): what :meth:`save` writes,
        for a checkpoint that stores it with other state."""
        tensors: dict[str, Any] = {
            f: getattr(self.arrays, f).contiguous() for f in (*NODE_FIELDS, "vectors", "ids")
        }
        return {**tensors, "format": FORMAT, "params": json.dumps(dataclasses.asdict(self.params))}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TreeIndex:
        """Rebuild an index from :meth:`state_dict`.

        Raises:
            ValueError: If ``state`` is not a ``TreeIndex`` state.
        """
        if state.get("format") != FORMAT:
            raise ValueError(f"not a TreeIndex state (format {state.get('format')!r})")
        tensors = {k: v for k, v in state.items() if k not in ("format", "params")}
        params = BuildParams(**json.loads(state["params"]))
        return cls(TreeArrays(**tensors), params)

    def save(self, path: str | Path) -> None:
        """Write the index to one safetensors file (arrays + JSON metadata; no pickle)."""
        from safetensors.torch import save_file

        state = self.state_dict()
        meta = {"format": state.pop("format"), "params": state.pop("params")}
        save_file(state, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> TreeIndex:
        """Read an index written by ``save``.

        Raises:
            ValueError: If the file is not a saved ``TreeIndex``.
        """
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a saved TreeIndex (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return cls.from_state_dict({**tensors, **meta})

    def _ids(self, ids: Array) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(ids), dtype=torch.int64).view(-1)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.num_points):
            raise ValueError(f"ids must be in 0..{self.num_points - 1}")
        return idx

    def _get_cut(self) -> torch.Tensor:
        if self._cut is None:
            self._cut = cut_nodes(self.arrays, cut_size(self.num_points))
        return self._cut

    def _reindex(self, stats: UpdateStats) -> None:
        self._cut = None
        if stats.subtrees_rebuilt:
            self.positions[self.arrays.ids] = torch.arange(self.num_points)
