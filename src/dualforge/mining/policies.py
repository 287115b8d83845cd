"""When and how the target vectors that mining reads are refreshed: one small policy a strategy.

A policy owns no model and encodes nothing: it plans which rows to re-encode before a step
(:meth:`Policy.plan`), and applies their fresh vectors (:meth:`Policy.apply`) to keep a
:class:`TargetVectors` (a :class:`~dualforge.mining.stores.VectorStore` built by its spec) up to
date. Whoever holds the model encodes in between: :func:`refresh` in one process, the mining
protocol (``train/shared_mining.py``) sharded over several.

* :class:`StaticPolicy`: build a store once from the initial vectors, never refresh;
* :class:`RefreshPolicy`: re-encode every target and rebuild the store every ``every`` steps;
* :class:`OraclePolicy`: re-encode every target every step; brute force (a flat store);
* :class:`DynamicPolicy`: build once; then every ``every`` steps re-encode landmarks (plus a
  held-out sample that measures the drift error, and targets seen since the last refresh),
  Nyström-correct the rest and update the store in place (Monath et al. 2023).

``in_batch`` training mines nothing and has no policy. A refresh returns a
:class:`RefreshReport`; logging it is the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from dualforge.mining.nystrom import choose_landmarks, correct_drift, drift_error
from dualforge.mining.stores import StoreSpec, VectorStore, load_store, make_store

EncodeRows = Callable[[np.ndarray], torch.Tensor]  # (R,) rows -> (R, d) fresh vectors


@dataclass
class TargetVectors:
    """The target vectors mining reads, and when each was last encoded.

    Attributes:
        last_encoded: ``(N,)`` step of each target's last encode (-1: never).
        spec: Which store holds them (``mining.index``) and how it is built.
        store: The store, or None before the first refresh.
        last_refresh: Step of the last refresh (0: none yet).
    """

    last_encoded: np.ndarray
    spec: StoreSpec = field(default_factory=StoreSpec)
    store: VectorStore | None = None
    last_refresh: int = 0

    @classmethod
    def empty(cls, num_targets: int, spec: StoreSpec | None = None) -> TargetVectors:
        """No vectors yet for ``num_targets`` targets."""
        return cls(np.full(num_targets, -1, dtype=np.int64), spec or StoreSpec())

    @property
    def built(self) -> bool:
        """Whether there are vectors to mine from."""
        return self.store is not None

    def source(self) -> VectorStore:
        """The store to mine from.

        Raises:
            RuntimeError: Before the first refresh.
        """
        if self.store is None:
            raise RuntimeError("no target vectors yet: refresh before mining (a dualforge bug)")
        return self.store

    def current(self) -> np.ndarray | None:
        """The ``(N, d)`` vectors in id order (on the CPU), or None before the first refresh."""
        return None if self.store is None else self.store.vectors().cpu().numpy()

    def memory_bytes(self) -> int:
        """Memory of the store (0 before the first refresh)."""
        return 0 if self.store is None else self.store.memory_bytes()

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values."""
        store = self.store
        return {
            "last_encoded": torch.from_numpy(self.last_encoded.copy()),
            "last_refresh": self.last_refresh,
            "store": None if store is None else {"name": store.name, **store.state_dict()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the store built with this ``spec``)."""
        self.last_encoded = state["last_encoded"].numpy().copy()
        self.last_refresh = int(state["last_refresh"])
        saved = state.get("store")
        if saved is None:
            self.store = None
            return
        rest = {k: v for k, v in saved.items() if k != "name"}
        self.store = load_store(saved["name"], rest, self.spec.params)


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
    """What the miner asks of a strategy: a refresh is planned (which rows to re-encode), the
    rows are encoded by whoever holds the model (sharded under several processes), then
    applied. :func:`refresh` runs the three in one process."""

    name: str

    def plan(self, step: int, targets: TargetVectors) -> np.ndarray | None:
        """Rows to re-encode before ``step``: ``(R,)`` int64 ids (``arange(N)``: all), or None
        when no refresh is due."""
        ...

    def apply(
        self, step: int, targets: TargetVectors, rows: np.ndarray, fresh: torch.Tensor,
        encode_seconds: float,
    ) -> RefreshReport | None:  # fmt: skip
        """Make ``targets`` current from the planned rows' fresh ``(R, d)`` vectors; a report
        of what was done (None: not logged)."""
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


def refresh(
    policy: Policy, step: int, targets: TargetVectors, encode: EncodeRows
) -> tuple[bool, RefreshReport | None]:
    """Plan, encode and apply a refresh in this process: ``(refreshed, report)``."""
    rows = policy.plan(step, targets)
    if rows is None:
        return False, None
    tick = time.perf_counter()
    fresh = encode(rows)
    report = policy.apply(step, targets, rows, fresh, time.perf_counter() - tick)
    targets.last_refresh = step
    return True, report


def everything(targets: TargetVectors) -> np.ndarray:
    """Every row: ``arange(N)``."""
    return np.arange(len(targets.last_encoded), dtype=np.int64)


def rebuild(
    step: int, targets: TargetVectors, fresh: torch.Tensor, encode_seconds: float
) -> RefreshReport:
    """A new store over every target's fresh vectors."""
    tick = time.perf_counter()
    old = targets.current()
    targets.last_encoded[:] = step
    targets.store = targets.spec.build(fresh)
    fields: dict[str, Any] = {}
    if old is not None:
        fields["drift_error_stale"] = drift_error(old, fresh.cpu().numpy())
    kind = "rebuild" if old is not None else "build"
    seconds = time.perf_counter() - tick + encode_seconds
    return RefreshReport(
        step, kind, len(fresh), encode_seconds, seconds, targets.memory_bytes(), fields
    )


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

    def plan(self, step: int, targets: TargetVectors) -> np.ndarray | None:
        """Every row, before the first step only."""
        return None if targets.built else everything(targets)

    def apply(
        self, step: int, targets: TargetVectors, rows: np.ndarray, fresh: torch.Tensor,
        encode_seconds: float,
    ) -> RefreshReport:  # fmt: skip
        """Build the store."""
        return rebuild(step, targets, fresh, encode_seconds)


class RefreshPolicy(_Stateless):
    """Re-encode every target and rebuild the store every ``every`` steps."""

    name = "refresh"

    def __init__(self, every: int) -> None:
        self.every = every

    def plan(self, step: int, targets: TargetVectors) -> np.ndarray | None:
        """Every row: first, then every ``every`` steps."""
        due = not targets.built or step - targets.last_refresh >= self.every
        return everything(targets) if due else None

    def apply(
        self, step: int, targets: TargetVectors, rows: np.ndarray, fresh: torch.Tensor,
        encode_seconds: float,
    ) -> RefreshReport:  # fmt: skip
        """Rebuild the store from fresh vectors."""
        return rebuild(step, targets, fresh, encode_seconds)


class OraclePolicy(_Stateless):
    """Re-encode every target every step; brute force (a ``flat`` store whatever
    ``mining.index`` says; small corpora only)."""

    name = "oracle"

    def plan(self, step: int, targets: TargetVectors) -> np.ndarray:
        """Every row, every step."""
        return everything(targets)

    def apply(
        self, step: int, targets: TargetVectors, rows: np.ndarray, fresh: torch.Tensor,
        encode_seconds: float,
    ) -> None:  # fmt: skip
        """Fresh flat vectors (not reported: it happens every step)."""
        targets.store = make_store("flat", fresh, targets.spec.params)
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
    Nyström-correct the others and update the store in place."""

    name = "dynamic"

    def __init__(self, every: int, drift: DriftParams, seed: int = 0) -> None:
        self.every, self.drift, self.seed = every, drift, seed
        self.recent: dict[int, None] = {}  # targets seen in batches since the last refresh
        self._split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def plan(self, step: int, targets: TargetVectors) -> np.ndarray | None:
        """Every row first; then every ``every`` steps landmarks, held-out and recent rows."""
        if not targets.built:
            self._split = None
            return everything(targets)
        if step - targets.last_refresh < self.every:
            return None
        self._split = self.refresh_rows(step, len(targets.last_encoded))
        return np.concatenate(self._split)

    def observe(self, rows: np.ndarray) -> None:
        """Move ``rows`` to the most recent end of the recently seen targets."""
        for r in rows.reshape(-1).tolist():
            self.recent.pop(int(r), None)
            self.recent[int(r)] = None

    def apply(
        self, step: int, targets: TargetVectors, rows: np.ndarray, fresh: torch.Tensor,
        encode_seconds: float,
    ) -> RefreshReport:  # fmt: skip
        """Build the store the first time, then Nyström-update it."""
        if self._split is None or targets.store is None:
            report = rebuild(step, targets, fresh, encode_seconds)
        else:
            report = self._update(step, targets.store, targets, fresh.cpu().numpy())
            report = replace(report, encode_seconds=encode_seconds,
                             seconds=report.seconds + encode_seconds)  # fmt: skip
        self.recent.clear()
        self._split = None
        return report

    def _update(
        self, step: int, store: VectorStore, targets: TargetVectors, fresh: np.ndarray
    ) -> RefreshReport:
        tick = time.perf_counter()
        if self._split is None:
            raise RuntimeError("DynamicPolicy.apply without a plan (a dualforge bug)")
        landmarks, holdout, recent = self._split
        rows = np.concatenate(self._split)
        stale = store.vectors().cpu().numpy()
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
        fields.update(store.replace(torch.from_numpy(estimate)))
        targets.last_encoded[rows] = step
        fields["recent"] = len(recent)
        seconds = time.perf_counter() - tick
        return RefreshReport(
            step, "nystrom", len(rows), 0.0, seconds, targets.memory_bytes(), fields
        )

    def refresh_rows(self, step: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Landmarks, held-out rows and recent rows to re-encode (disjoint, seeded by step)."""
        d, seed = self.drift, self.seed
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
