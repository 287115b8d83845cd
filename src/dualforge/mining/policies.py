"""When and how the target vectors that mining reads are refreshed: one small policy a strategy.

A policy owns no model: it gets an ``encode(rows)`` callable that returns fresh target vectors
(``rows`` None: all of them), and keeps a :class:`TargetVectors` up to date:

* :class:`StaticPolicy`: build a tree index once from the initial vectors, never refresh;
* :class:`RefreshPolicy`: re-encode every target and rebuild the tree every ``every`` steps;
* :class:`OraclePolicy`: re-encode every target every step; brute force over a dense matrix;
* :class:`DynamicPolicy`: build once; then every ``every`` steps re-encode landmarks (plus a
  held-out sample that measures the drift error, and targets seen since the last refresh),
  Nyström-correct the rest and update the tree in place (Monath et al. 2023).

``in_batch`` training mines nothing and has no policy. A refresh returns a
:class:`RefreshReport`; logging it is the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dualforge.mining.nystrom import choose_landmarks, correct_drift, drift_error
from dualforge.mining.tree import TreeIndex

EncodeRows = Callable[[np.ndarray | None], np.ndarray]  # rows (None: all) -> (len, d) float32


@dataclass
class TargetVectors:
    """The target vectors mining reads, and when each was last encoded.

    Attributes:
        last_encoded: ``(N,)`` step of each target's last encode (-1: never).
        index: The tree over the vectors (tree strategies), or None.
        dense: ``(N, d)`` vectors scored by brute force (the oracle), or None.
        last_refresh: Step of the last refresh (0: none yet).
    """

    last_encoded: np.ndarray
    index: TreeIndex | None = None
    dense: np.ndarray | None = None
    last_refresh: int = 0

    @classmethod
    def empty(cls, num_targets: int) -> TargetVectors:
        """No vectors yet for ``num_targets`` targets."""
        return cls(np.full(num_targets, -1, dtype=np.int64))

    @property
    def built(self) -> bool:
        """Whether there are vectors to mine from."""
        return self.index is not None or self.dense is not None

    def source(self) -> TreeIndex | np.ndarray:
        """What to mine from: the tree, else the dense matrix.

        Raises:
            RuntimeError: Before the first refresh.
        """
        if self.index is not None:
            return self.index
        if self.dense is not None:
            return self.dense
        raise RuntimeError("no target vectors yet: refresh before mining (a dualforge bug)")

    def current(self) -> np.ndarray | None:
        """The ``(N, d)`` vectors in id order, or None before the first refresh."""
        return self.index.vectors().numpy() if self.index is not None else self.dense

    def memory_bytes(self) -> int:
        """Host memory of the index (or of the dense matrix)."""
        if self.index is not None:
            return self.index.memory_bytes()
        return 0 if self.dense is None else int(self.dense.nbytes)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (the dense matrix is not kept: the oracle re-encodes)."""
        return {
            "last_encoded": torch.from_numpy(self.last_encoded.copy()),
            "last_refresh": self.last_refresh,
            "index": None if self.index is None else self.index.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.last_encoded = state["last_encoded"].numpy().copy()
        self.last_refresh = int(state["last_refresh"])
        index = state["index"]
        self.index = None if index is None else TreeIndex.from_state_dict(dict(index))


@dataclass(frozen=True)
class RefreshReport:
    """One build or refresh of the target vectors.

    Attributes:
        step: The step it ran before.
        kind: ``build``, ``rebuild`` or ``nystrom``.
        encoded: Targets re-encoded.
        encode_seconds: Time spent encoding.
        seconds: Time of the whole refresh.
        index_bytes: Index memory after it.
        fields: Kind-specific values (drift errors, landmark counts, rebuilt subtrees).
    """

    step: int
    kind: str
    encoded: int
    encode_seconds: float
    seconds: float
    index_bytes: int
    fields: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Flat fields for a metrics-log event."""
        return {
            "step": self.step, "kind": self.kind, "encoded": self.encoded,
            "encode_seconds": self.encode_seconds, "seconds": self.seconds,
            "index_bytes": self.index_bytes, **self.fields,
        }  # fmt: skip


class Policy(Protocol):
    """What the miner asks of a strategy."""

    name: str

    def due(self, step: int, targets: TargetVectors) -> bool:
        """Whether ``targets`` must be (re)made before ``step``."""
        ...

    def refresh(
        self, step: int, targets: TargetVectors, encode: EncodeRows
    ) -> RefreshReport | None:
        """Make ``targets`` current for ``step``; a report of what was done (None: not logged)."""
        ...

    def observe(self, rows: np.ndarray) -> None:
        """Note targets used by a batch (positives, then mined negatives)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state (for checkpoints)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


@dataclass(frozen=True)
class TreeParams:
    """How tree indexes are built: branching, leaf size, seed."""

    branching: int = 16
    leaf_size: int = 64
    seed: int = 0


def rebuild(
    step: int, targets: TargetVectors, encode: EncodeRows, tree: TreeParams
) -> RefreshReport:
    """Re-encode every target and build a new tree over them."""
    tick = time.perf_counter()
    old = targets.current()
    fresh = encode(None)
    encoded = time.perf_counter() - tick
    targets.last_encoded[:] = step
    targets.index = TreeIndex.build(
        fresh, branching=tree.branching, leaf_size=tree.leaf_size, seed=tree.seed
    )
    fields: dict[str, Any] = {}
    if old is not None:
        fields["drift_error_stale"] = drift_error(old, fresh)
    kind = "rebuild" if old is not None else "build"
    seconds = time.perf_counter() - tick
    return RefreshReport(step, kind, len(fresh), encoded, seconds, targets.memory_bytes(), fields)


class _Stateless:
    """Policies with no state of their own."""

    def observe(self, rows: np.ndarray) -> None:
        """Nothing to note."""

    def state_dict(self) -> dict[str, Any]:
        """Empty."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


class StaticPolicy(_Stateless):
    """Index the initial model's target vectors once; never refresh."""

    name = "static"

    def __init__(self, tree: TreeParams) -> None:
        self.tree = tree

    def due(self, step: int, targets: TargetVectors) -> bool:
        """Only before the first step."""
        return not targets.built

    def refresh(self, step: int, targets: TargetVectors, encode: EncodeRows) -> RefreshReport:
        """Build the tree."""
        return rebuild(step, targets, encode, self.tree)


class RefreshPolicy(_Stateless):
    """Re-encode every target and rebuild the tree every ``every`` steps."""

    name = "refresh"

    def __init__(self, every: int, tree: TreeParams) -> None:
        self.every, self.tree = every, tree

    def due(self, step: int, targets: TargetVectors) -> bool:
        """First, then every ``every`` steps."""
        return not targets.built or step - targets.last_refresh >= self.every

    def refresh(self, step: int, targets: TargetVectors, encode: EncodeRows) -> RefreshReport:
        """Rebuild the tree from fresh vectors."""
        return rebuild(step, targets, encode, self.tree)


class OraclePolicy(_Stateless):
    """Re-encode every target every step (brute force; small corpora only)."""

    name = "oracle"

    def due(self, step: int, targets: TargetVectors) -> bool:
        """Always."""
        return True

    def refresh(self, step: int, targets: TargetVectors, encode: EncodeRows) -> None:
        """Fresh dense vectors (not reported: it happens every step)."""
        targets.dense = encode(None)
        targets.last_encoded[:] = step


@dataclass(frozen=True)
class DriftParams:
    """The dynamic policy's Nyström correction (see ``correct_drift``).

    Attributes:
        landmarks: Targets re-encoded per refresh: a fraction of them (< 1) or a count.
        holdout: Non-landmark targets also re-encoded to measure the drift error (0: off).
        recent: Most targets seen in batches since the last refresh re-encoded with them.
        ridge: Ridge of the Nyström fit.
        residual: Fit the map to the drift and add it to the stale vectors (else map them).
        kernel: ``linear``, ``rbf`` or ``poly``.
        looseness: Tree rebuild factor of in-place updates (> 1).
        normalize: Rescale corrected vectors to unit length (a normalising model).
    """

    landmarks: float = 0.05
    holdout: int = 256
    recent: int = 256
    ridge: float = 0.1
    residual: bool = True
    kernel: str = "rbf"
    looseness: float = 1.5
    normalize: bool = True


class DynamicPolicy:
    """Build once; every ``every`` steps re-encode landmarks (+ held-out, + recent targets),
    Nyström-correct the others and update the tree in place."""

    name = "dynamic"

    def __init__(self, every: int, tree: TreeParams, drift: DriftParams) -> None:
        self.every, self.tree, self.drift = every, tree, drift
        self.recent: dict[int, None] = {}  # targets seen in batches since the last refresh

    def due(self, step: int, targets: TargetVectors) -> bool:
        """First, then every ``every`` steps."""
        return not targets.built or step - targets.last_refresh >= self.every

    def observe(self, rows: np.ndarray) -> None:
        """Move ``rows`` to the most recent end of the recently seen targets."""
        for r in rows.reshape(-1).tolist():
            self.recent.pop(int(r), None)
            self.recent[int(r)] = None

    def refresh(self, step: int, targets: TargetVectors, encode: EncodeRows) -> RefreshReport:
        """Build the tree the first time, then Nyström-update it."""
        if targets.index is None:
            report = rebuild(step, targets, encode, self.tree)
        else:
            report = self._update(step, targets.index, targets, encode)
        self.recent.clear()
        return report

    def _update(
        self, step: int, index: TreeIndex, targets: TargetVectors, encode: EncodeRows
    ) -> RefreshReport:
        tick = time.perf_counter()
        landmarks, holdout, recent = self.refresh_rows(step, len(targets.last_encoded))
        rows = np.concatenate([landmarks, holdout, recent])
        fresh = encode(rows)  # (len(rows), d)
        encoded = time.perf_counter() - tick
        stale = index.vectors().numpy()
        d = self.drift
        estimate = correct_drift(
            stale, landmarks, fresh[: len(landmarks)], ridge=d.ridge, residual=d.residual,
            kernel=d.kernel,
        )  # fmt: skip
        if d.normalize:
            estimate /= np.maximum(np.linalg.norm(estimate, axis=1, keepdims=True), 1e-12)
        fields: dict[str, Any] = {"landmarks": len(landmarks)}
        if len(holdout):
            truth = fresh[len(landmarks) : len(landmarks) + len(holdout)]
            fields["drift_error_stale"] = drift_error(stale[holdout], truth)
            fields["drift_error_corrected"] = drift_error(estimate[holdout], truth)
            fields["holdout"] = len(holdout)
        estimate[rows] = fresh
        stats = index.update_all(estimate, looseness=d.looseness)
        targets.last_encoded[rows] = step
        fields.update(recent=len(recent), subtrees_rebuilt=stats.subtrees_rebuilt)
        seconds = time.perf_counter() - tick
        return RefreshReport(
            step, "nystrom", len(rows), encoded, seconds, targets.memory_bytes(), fields
        )

    def refresh_rows(self, step: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Landmarks, held-out rows and recent rows to re-encode (disjoint, seeded by step)."""
        d, seed = self.drift, self.tree.seed
        m = round(d.landmarks * n) if d.landmarks < 1 else int(d.landmarks)
        landmarks = choose_landmarks(n, min(max(m, 1), n), seed=seed * 1_000_003 + step)
        rest = np.setdiff1d(np.arange(n), landmarks)
        rng = np.random.default_rng([seed, step])
        holdout = np.sort(rng.choice(rest, min(d.holdout, len(rest)), replace=False))
        taken = set(np.concatenate([landmarks, holdout]).tolist())
        recent = [r for r in reversed(self.recent) if r not in taken]
        return landmarks, holdout.astype(np.int64), np.array(recent[: d.recent], np.int64)

    def state_dict(self) -> dict[str, Any]:
        """The recently seen targets, oldest first."""
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.recent = dict.fromkeys(int(r) for r in state["recent"])
