"""Where mining reads its target vectors: one :class:`VectorStore` protocol, two stores, a factory.

A store holds the ``(N, d)`` target vectors (ids are row numbers) and answers what mining asks:
softmax draws and top-k over the targets that are not excluded and score at most a per-query
ceiling (the positive-aware filter). Every answer is exact; the stores differ in cost and in
where the vectors live.

* ``tree`` (:class:`TreeStore`): the dynamic tree index (``tree.py``) on the CPU; draws by
  rejection from tree bounds (torch or numba kernels), in-place updates that keep the tree.
* ``flat`` (:class:`FlatStore`): the vectors as one tensor on any device (CPU or CUDA), scored by
  brute force in column chunks so that no ``(Q, chunk)`` logit block exceeds a budget.

Choose one by name, faiss style::

    store = make_store("flat", vectors, StoreParams(device="cuda"))
    ids, empty = store.sample(q, 8, temperature=0.05, excluded=keys, ceiling=c, generator=g)

Excluded (query, target) pairs travel as sorted keys ``q * N + id`` (``exclusion_keys``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch

from dualforge.mining._compiled import resolve_backend
from dualforge.mining.tree import TreeIndex

Tensor = torch.Tensor
StoreName = Literal["tree", "flat"]
"""The stores :func:`make_store` builds (the ``mining.index`` choices)."""
STORES: tuple[str, ...] = get_args(StoreName)
# Most logits of one (Q, chunk) block of the flat store: 64 MiB of float32.
FLAT_BUDGET = 1 << 24


@dataclass(frozen=True)
class StoreParams:
    """How a store is built (plain values; each store reads what it uses).

    Attributes:
        branching: Tree: most children per node.
        leaf_size: Tree: most points per leaf.
        seed: Tree: build seed.
        looseness: Tree: subtree rebuild factor of in-place updates (> 1).
        eta: Tree: sampler refinement threshold (cost only).
        backend: Tree: sampler kernels, ``torch`` / ``numba`` / ``auto``.
        device: Flat: where the vectors live (``cpu``, ``cuda``, ``cuda:1``).
        budget: Flat: most logits per scored block.
    """

    branching: int = 16
    leaf_size: int = 64
    seed: int = 0
    looseness: float = 1.5
    eta: float = 0.25
    backend: str = "torch"
    device: str = "cpu"
    budget: int = FLAT_BUDGET


@dataclass(frozen=True)
class StoreSpec:
    """A store by name and build parameters (``mining.index`` and its settings)."""

    name: str = "tree"
    params: StoreParams = StoreParams()

    def build(self, vectors: Tensor) -> VectorStore:
        """A new store over ``(N, d)`` vectors."""
        return make_store(self.name, vectors, self.params)


class VectorStore(Protocol):
    """What mining asks of the place its target vectors live (see the module docstring)."""

    name: str

    @property
    def num_points(self) -> int:
        """``N``."""
        ...

    @property
    def device(self) -> torch.device:
        """Where :meth:`vectors` returns tensors (and where queries are best given)."""
        ...

    def vectors(self, rows: Tensor | None = None) -> Tensor:
        """``(len(rows), d)`` current vectors (all ``N`` in id order when ``rows`` is None)."""
        ...

    def update(self, rows: Tensor, vectors: Tensor) -> dict[str, Any]:
        """Replace some rows' vectors; counters of the work done (logged)."""
        ...

    def replace(self, vectors: Tensor) -> dict[str, Any]:
        """Replace every vector (id order); counters of the work done."""
        ...

    def sample(
        self, queries: Tensor, k: int, *, temperature: float, excluded: Tensor,
        ceiling: Tensor | None, generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(ids, empty)``: ``(Q, k)`` int64 CPU ids drawn i.i.d. from ``softmax(q·t / τ)``
        over the kept targets (not excluded, at most the ceiling), and ``(Q,)`` bool: queries
        that keep none (their rows are ``-1``)."""
        ...

    def topk(
        self, queries: Tensor, k: int, *, excluded: Tensor, ceiling: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(scores, ids)``, ``(Q, k)`` CPU, best first (equal scores by id) among the kept
        targets; ``-inf`` / ``-1`` past a query's last kept target."""
        ...

    def memory_bytes(self) -> int:
        """Memory held (on the store's device)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (for checkpoints)."""
        ...


def _rank(scores: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Each row sorted by score descending, equal scores by id ascending (CPU)."""
    s, i = scores.cpu().numpy(), ids.cpu().numpy()
    order = np.lexsort((i, -s), axis=-1)
    return (
        torch.from_numpy(np.take_along_axis(s, order, 1)),
        torch.from_numpy(np.take_along_axis(i, order, 1)),
    )


def key_rows(keys: Tensor, n_queries: int, n_points: int) -> list[Tensor]:
    """The excluded ids of each query from sorted keys ``q * N + id``."""
    qrow = keys // n_points
    bounds = torch.searchsorted(qrow, torch.arange(n_queries + 1))
    ids = keys - qrow * n_points
    return [ids[bounds[i] : bounds[i + 1]] for i in range(n_queries)]


class TreeStore:
    """The dynamic tree index as a store (CPU; see ``tree.py`` for its guarantees).

    Args:
        index: The tree.
        params: Sampler and update settings.
    """

    name = "tree"

    def __init__(self, index: TreeIndex, params: StoreParams) -> None:
        self.index, self.params = index, params
        self.backend = resolve_backend(params.backend)

    @classmethod
    def build(cls, vectors: Tensor, params: StoreParams) -> TreeStore:
        """Cluster ``(N, d)`` vectors into a new tree."""
        tree = TreeIndex.build(
            vectors, branching=params.branching, leaf_size=params.leaf_size, seed=params.seed
        )
        return cls(tree, params)

    @property
    def num_points(self) -> int:
        """``N``."""
        return self.index.num_points

    @property
    def device(self) -> torch.device:
        """Always the CPU."""
        return torch.device("cpu")

    def vectors(self, rows: Tensor | None = None) -> Tensor:
        """Current vectors by id."""
        return self.index.vectors(None if rows is None else rows.cpu())

    def update(self, rows: Tensor, vectors: Tensor) -> dict[str, Any]:
        """In place; subtrees that grew too loose are re-clustered."""
        stats = self.index.update(rows.cpu(), vectors, looseness=self.params.looseness)
        return {"subtrees_rebuilt": stats.subtrees_rebuilt}

    def replace(self, vectors: Tensor) -> dict[str, Any]:
        """Every vector, same rebuild rule as :meth:`update`."""
        stats = self.index.update_all(vectors, looseness=self.params.looseness)
        return {"subtrees_rebuilt": stats.subtrees_rebuilt}

    def sample(
        self, queries: Tensor, k: int, *, temperature: float, excluded: Tensor,
        ceiling: Tensor | None, generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Exact draws by rejection from the tree's bounds, capped by the ceiling."""
        rows = [r.tolist() for r in key_rows(excluded, queries.shape[0], self.num_points)]
        _, ids, _ = self.index.sample(
            queries, k, temperature=temperature, exclude=rows, eta=self.params.eta,
            generator=generator, backend=self.backend, ceiling=ceiling,
        )  # fmt: skip
        out = torch.from_numpy(ids)
        return out, (out < 0).any(1)

    def topk(
        self, queries: Tensor, k: int, *, excluded: Tensor, ceiling: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Exact branch-and-bound search under the ceiling, excluded ids skipped."""
        rows = key_rows(excluded, queries.shape[0], self.num_points)
        width = max([0, *(len(r) for r in rows)])
        scores, ids = self.index.search(queries, k + width, ceiling=ceiling)
        out_s = torch.full((len(rows), k), -math.inf)
        out_i = torch.full((len(rows), k), -1, dtype=torch.int64)
        for q, row in enumerate(rows):
            keep = ~np.isin(ids[q], row.numpy()) & (ids[q] >= 0)
            s, i = scores[q][keep][:k], ids[q][keep][:k]
            out_s[q, : len(s)], out_i[q, : len(i)] = torch.from_numpy(s), torch.from_numpy(i)
        return out_s, out_i

    def memory_bytes(self) -> int:
        """Tree arrays and vectors."""
        return self.index.memory_bytes()

    def state_dict(self) -> dict[str, Any]:
        """The tree's state."""
        return {"index": self.index.state_dict()}


class FlatStore:
    """The vectors as one tensor on a device, scored by brute force in column chunks.

    Args:
        vectors: ``(N, d)`` target vectors (moved to ``params.device`` as float32).
        params: Device and logit budget.
    """

    name = "flat"

    def __init__(self, vectors: Tensor, params: StoreParams) -> None:
        self.params = params
        self.data = vectors.detach().to(params.device, torch.float32).contiguous()  # (N, d)

    @classmethod
    def build(cls, vectors: Tensor, params: StoreParams) -> FlatStore:
        """Hold ``(N, d)`` vectors."""
        return cls(vectors, params)

    @property
    def num_points(self) -> int:
        """``N``."""
        return int(self.data.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the vectors live."""
        return self.data.device

    def vectors(self, rows: Tensor | None = None) -> Tensor:
        """Current vectors by id."""
        return self.data if rows is None else self.data[rows.to(self.device)]

    def update(self, rows: Tensor, vectors: Tensor) -> dict[str, Any]:
        """Overwrite rows (nothing to rebuild)."""
        self.data[rows.to(self.device)] = vectors.to(self.device, torch.float32)
        return {}

    def replace(self, vectors: Tensor) -> dict[str, Any]:
        """Overwrite every row."""
        self.data = vectors.detach().to(self.device, torch.float32).contiguous()
        return {}

    def _chunks(self, n_queries: int) -> list[tuple[int, int]]:
        width = max(1, self.params.budget // max(1, n_queries))
        return [(lo, min(lo + width, self.num_points)) for lo in range(0, self.num_points, width)]

    def _logits(self, q: Tensor, lo: int, hi: int, excluded: Tensor, cap: Tensor | None) -> Tensor:
        """``(Q, hi - lo)`` scores of targets ``lo..hi-1``; excluded pairs and scores above the
        query's ``(Q, 1)`` cap at ``-inf``."""
        block = q @ self.data[lo:hi].T
        qrow, ids = excluded // self.num_points, excluded % self.num_points
        inside = (ids >= lo) & (ids < hi)
        block[qrow[inside], ids[inside] - lo] = -math.inf
        return block if cap is None else block.masked_fill(block > cap, -math.inf)

    def sample(
        self, queries: Tensor, k: int, *, temperature: float, excluded: Tensor,
        ceiling: Tensor | None, generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Two passes: each chunk's mass per query, then a chunk per draw and a target in it.

        ``generator`` must live on the store's device.
        """
        q, ex = queries.to(self.device, torch.float32), excluded.to(self.device)
        cap = None if ceiling is None else ceiling.to(self.device, torch.float32).unsqueeze(1)
        spans = self._chunks(q.shape[0])
        mass = torch.stack(
            [torch.logsumexp(self._logits(q, lo, hi, ex, cap).double() / temperature, 1)
             for lo, hi in spans], 1,
        )  # fmt: skip  # (Q, chunks)
        empty = ~torch.isfinite(mass.max(1).values)  # (Q,) nothing kept
        mass[empty] = 0.0
        chunk = torch.multinomial(torch.softmax(mass, 1), k, replacement=True, generator=generator)
        out = torch.empty_like(chunk)  # (Q, k)
        for c, (lo, hi) in enumerate(spans):
            qrow, slot = torch.nonzero(chunk == c, as_tuple=True)
            if not len(qrow):
                continue
            rows, count = torch.unique(qrow, return_counts=True)
            sub = None if cap is None else cap[rows]
            logits = self._logits(q[rows], lo, hi, self._keys_of(ex, rows), sub).double()
            logits = (logits / temperature).masked_fill(empty[rows].unsqueeze(1), 0.0)
            draws = torch.multinomial(
                torch.softmax(logits, 1), int(count.max()), replacement=True, generator=generator
            )  # (R, most)
            at = torch.searchsorted(rows, qrow)
            nth = torch.arange(len(qrow), device=self.device) - torch.searchsorted(qrow, qrow)
            out[qrow, slot] = draws[at, nth] + lo
        out[empty] = -1
        return out.cpu(), empty.cpu()

    def _keys_of(self, excluded: Tensor, rows: Tensor) -> Tensor:
        """The keys of ``rows`` renumbered as queries ``0..len(rows)-1``."""
        qrow = excluded // self.num_points
        pick = torch.isin(qrow, rows)
        return torch.searchsorted(rows, qrow[pick]) * self.num_points + excluded[pick] % (
            self.num_points
        )

    def topk(
        self, queries: Tensor, k: int, *, excluded: Tensor, ceiling: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """A running top-k over the chunks; ``-inf`` / ``-1`` past a query's kept targets."""
        q, ex = queries.to(self.device, torch.float32), excluded.to(self.device)
        cap = None if ceiling is None else ceiling.to(self.device, torch.float32).unsqueeze(1)
        best_s = torch.full((q.shape[0], 0), -math.inf, device=self.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=self.device)
        for lo, hi in self._chunks(q.shape[0]):
            block = self._logits(q, lo, hi, ex, cap)
            top = torch.topk(block, min(k, hi - lo), dim=1)
            all_s = torch.cat([best_s, top.values], 1)
            all_i = torch.cat([best_i, top.indices + lo], 1)
            keep = torch.topk(all_s, min(k, all_s.shape[1]), dim=1).indices
            best_s, best_i = torch.gather(all_s, 1, keep), torch.gather(all_i, 1, keep)
        best_i = torch.where(torch.isfinite(best_s), best_i, -1)
        return _rank(best_s, best_i)

    def memory_bytes(self) -> int:
        """The vectors' bytes."""
        return self.data.element_size() * self.data.numel()

    def state_dict(self) -> dict[str, Any]:
        """The vectors (on the CPU)."""
        return {"vectors": self.data.cpu()}


def make_store(name: str, vectors: Tensor, params: StoreParams) -> VectorStore:
    """The store called ``name`` (``tree`` or ``flat``) over ``(N, d)`` vectors.

    Raises:
        ValueError: For an unknown name.
    """
    builders: dict[str, Any] = {"tree": TreeStore.build, "flat": FlatStore.build}
    if name not in builders:
        raise ValueError(f"unknown vector store {name!r}; use one of {STORES}")
    store: VectorStore = builders[name](vectors, params)
    return store


def load_store(name: str, state: dict[str, Any], params: StoreParams) -> VectorStore:
    """A store from :meth:`VectorStore.state_dict`.

    Raises:
        ValueError: For an unknown name, or a state of another store.
    """
    if name == "tree" and "index" in state:
        return TreeStore(TreeIndex.from_state_dict(dict(state["index"])), params)
    if name == "flat" and "vectors" in state:
        return FlatStore(state["vectors"], params)
    raise ValueError(f"not a {name!r} store state (keys {sorted(state)})")
