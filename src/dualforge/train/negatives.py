"""Negative-mining strategies for the training loop: state, refreshes, telemetry, checkpoints.

:class:`NegativeMiner` fills each batch's hard negatives (``[pos, neg_1..neg_K]`` per query) with
targets mined from the training corpus by the current model (queries encoded without grad):

* ``static``: the index of the initial model's target embeddings, never refreshed;
* ``refresh``: every ``refresh_every`` steps, re-encode every target and rebuild the index;
* ``oracle``: every step, re-encode every target and mine by brute force (small corpora);
* ``dynamic``: every ``refresh_every`` steps, re-encode ``landmarks`` targets (plus a held-out
  sample for the drift error, and targets seen in recent batches), Nyström-correct the others
  and update the tree in place.

Known positives of a query (qrels) are excluded. A refresh logs a ``mining`` event (drift error,
seconds, index memory); :meth:`NegativeMiner.telemetry` adds staleness, the labelled-positive
fraction, seconds mining vs training and index memory to every ``train`` record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualforge.config import MiningConfig
from dualforge.data import Batch
from dualforge.mining import TreeIndex, choose_landmarks, correct_drift, drift_error
from dualforge.mining.negatives import exclusion_matrix, mine_negatives
from dualforge.modeling import DualEncoder
from dualforge.train.metrics_log import MetricsLog

INDEX_FILE = "mining_index.safetensors"
STATE_FILE = "mining_state.safetensors"
INDEXED = ("static", "refresh", "dynamic")


class NegativeMiner:
    """Mines ``cfg.num_negatives`` negatives per query under one strategy (see module docstring).

    Args:
        cfg: Mining settings (``strategy`` other than ``in_batch``).
        model: The model being trained (used without grad, in eval mode).
        corpus: Target id -> text (the training corpus).
        known_positives: Query id -> ids of its relevant documents; never mined.
        lengths: ``(query_max_length, doc_max_length)`` truncation for encoding.
        seed: Seed of index builds, landmark choices and softmax draws (per step).
        log: Metrics log for ``mining`` events (None: not logged).

    Raises:
        ValueError: An empty corpus, or the oracle over more than ``oracle_max_targets``.
    """

    def __init__(
        self,
        cfg: MiningConfig,
        model: DualEncoder,
        corpus: Mapping[str, str],
        known_positives: Mapping[str, set[str]],
        lengths: tuple[int, int],
        seed: int = 0,
        log: MetricsLog | None = None,
    ) -> None:
        if not corpus:
            raise ValueError("negative mining needs a non-empty training corpus")
        n = len(corpus)
        if cfg.strategy == "oracle" and n > cfg.oracle_max_targets:
            raise ValueError(
                f"mining.strategy='oracle' re-encodes all {n} targets every step, more than "
                f"mining.oracle_max_targets={cfg.oracle_max_targets}; use 'dynamic' or "
                f"'refresh', or raise the cap"
            )
        self.cfg, self.model, self.log, self.seed = cfg, model, log, seed
        self.query_len = lengths[0]
        self.doc_len = cfg.doc_max_length or lengths[1]
        self.ids = list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        self.row = {doc_id: r for r, doc_id in enumerate(self.ids)}
        self.known = {
            q: {self.row[d] for d in docs if d in self.row} for q, docs in known_positives.items()
        }
        self.index: TreeIndex | None = None
        self.vectors: np.ndarray | None = None  # oracle only
        self.last_encoded = np.full(n, -1, dtype=np.int64)  # step of each target's last encode
        self.last_refresh = 0
        self.recent: dict[int, None] = {}  # targets seen in batches since the last refresh
        self.counts = {"mined": 0, "positive_hits": 0, "refreshes": 0}
        self.seconds = {"mining": 0.0, "training": 0.0, "step_mining": 0.0}
        self.last_hits = (0, 0)

    @property
    def num_targets(self) -> int:
        """Number of targets (documents of the training corpus)."""
        return len(self.ids)

    # ---- encoding -------------------------------------------------------------------------

    def encode_targets(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Fresh ``(len(rows), d)`` embeddings of targets (all when ``rows`` is None)."""
        texts = self.texts if rows is None else [self.texts[int(r)] for r in rows]
        bs = self.cfg.encode_batch_size
        return self.model.encode(texts, "document", bs, max_length=self.doc_len)

    def _encode_queries(self, queries: list[str]) -> np.ndarray:
        bs = self.cfg.encode_batch_size
        return self.model.encode(queries, "query", bs, max_length=self.query_len)

    # ---- per step ---------------------------------------------------------------------------

    def prepare(self, batch: Batch, step: int) -> Batch:
        """Refresh the index when due, then return ``batch`` with mined negatives.

        Args:
            batch: A sampler batch (its own negatives, if any, are replaced).
            step: The 1-based step this batch is for.
        """
        tick = time.perf_counter()
        self.maintain(step)
        exclude = exclusion_matrix(self._excluded(batch))
        q = self._encode_queries(batch.queries)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        source = self.index if self.index is not None else self.vectors
        if source is None:
            raise RuntimeError("no target vectors after maintain(); this is a dualforge bug")
        rows = mine_negatives(
            source, q, self.cfg.num_negatives, mode=self.cfg.mode, exclude=exclude,
            temperature=self.cfg.temperature, skip_first=self.cfg.skip_first, generator=gen,
            eta=self.cfg.eta,
        )  # fmt: skip
        self._count_hits(batch, rows)
        if self.cfg.strategy == "dynamic":
            self._remember(batch, rows)
        self.seconds["step_mining"] = time.perf_counter() - tick
        self.seconds["mining"] += self.seconds["step_mining"]
        return replace(
            batch,
            negatives=[[self.texts[int(r)] for r in row] for row in rows],
            negative_ids=[[self.ids[int(r)] for r in row] for row in rows],
        )

    def _excluded(self, batch: Batch) -> list[list[int]]:
        """Rows never to mine per query: its known positives and its own positive."""
        out = []
        for qid, pid in zip(batch.query_ids, batch.positive_ids):
            rows = set(self.known.get(qid, set())) if qid is not None else set()
            if pid is not None and pid in self.row:
                rows.add(self.row[pid])
            out.append(sorted(rows))
        return out

    def _count_hits(self, batch: Batch, rows: np.ndarray) -> None:
        """Count mined negatives that are labelled positives of their query (should be 0)."""
        hits = sum(
            int(np.isin(r, list(self.known.get(qid, ())) or [-1]).sum())
            for qid, r in zip(batch.query_ids, rows)
            if qid is not None
        )
        self.last_hits = (hits, rows.size)
        self.counts["mined"] += rows.size
        self.counts["positive_hits"] += hits

    def _remember(self, batch: Batch, rows: np.ndarray) -> None:
        """Note the batch's targets (positives and negatives) as recently seen."""
        seen = [self.row[p] for p in batch.positive_ids if p is not None and p in self.row]
        for r in [*seen, *rows.reshape(-1).tolist()]:
            self.recent.pop(int(r), None)
            self.recent[int(r)] = None

    # ---- maintenance ----------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether the index (or the oracle's vectors) must be (re)made before ``step``."""
        if self.cfg.strategy == "oracle" or (self.index is None and self.vectors is None):
            return True
        if self.cfg.strategy == "static":
            return False
        return step - self.last_refresh >= self.cfg.refresh_every

    def maintain(self, step: int) -> None:
        """Build, rebuild or Nyström-update the index when due (see the module docstring)."""
        if not self.due(step):
            return
        if self.cfg.strategy == "dynamic" and self.index is not None:
            self._dynamic_refresh(step)
        else:
            self._full_refresh(step)
        self.last_refresh = step
        self.counts["refreshes"] += 1

    def _full_refresh(self, step: int) -> None:
        """Re-encode every target; rebuild the index (or keep the matrix, for the oracle)."""
        tick = time.perf_counter()
        old = self.current_vectors()
        fresh = self.encode_targets()
        encoded = time.perf_counter() - tick
        self.last_encoded[:] = step
        self.recent.clear()
        if self.cfg.strategy == "oracle":
            self.vectors = fresh
            return
        self.index = TreeIndex.build(
            fresh, branching=self.cfg.branching, leaf_size=self.cfg.leaf_size, seed=self.seed
        )
        fields: dict[str, Any] = {"kind": "rebuild" if old is not None else "build"}
        if old is not None:
            fields["drift_error_stale"] = drift_error(old, fresh)
        self._log_refresh(step, tick, encoded, self.num_targets, **fields)

    def _dynamic_refresh(self, step: int) -> None:
        """Re-encode landmarks (+ held-out, + recent), Nyström-correct the rest, update."""
        if self.index is None:
            raise RuntimeError("a dynamic refresh needs a built index; this is a dualforge bug")
        tick = time.perf_counter()
        landmarks, holdout, recent = self._refresh_rows(step)
        rows = np.concatenate([landmarks, holdout, recent])
        fresh = self.encode_targets(rows)
        encoded = time.perf_counter() - tick
        stale = self.index.vectors().numpy()
        estimate = correct_drift(
            stale, landmarks, fresh[: len(landmarks)], ridge=self.cfg.ridge,
            residual=self.cfg.correction == "residual", kernel=self.cfg.kernel,
        )  # fmt: skip
        if self.model.doc_encoder.normalize:
            estimate /= np.maximum(np.linalg.norm(estimate, axis=1, keepdims=True), 1e-12)
        fields: dict[str, Any] = {"kind": "nystrom", "landmarks": len(landmarks)}
        if len(holdout):
            truth = fresh[len(landmarks) : len(landmarks) + len(holdout)]
            fields["drift_error_stale"] = drift_error(stale[holdout], truth)
            fields["drift_error_corrected"] = drift_error(estimate[holdout], truth)
            fields["holdout"] = len(holdout)
        estimate[rows] = fresh
        stats = self.index.update_all(estimate, looseness=self.cfg.looseness)
        self.last_encoded[rows] = step
        self.recent.clear()
        fields.update(recent=len(recent), subtrees_rebuilt=stats.subtrees_rebuilt)
        self._log_refresh(step, tick, encoded, len(rows), **fields)

    def _refresh_rows(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Landmarks, held-out rows and recent rows to re-encode (disjoint, seeded by step)."""
        n, cfg = self.num_targets, self.cfg
        m = round(cfg.landmarks * n) if cfg.landmarks < 1 else int(cfg.landmarks)
        landmarks = choose_landmarks(n, min(max(m, 1), n), seed=self.seed * 1_000_003 + step)
        rest = np.setdiff1d(np.arange(n), landmarks)
        rng = np.random.default_rng([self.seed, step])
        holdout = np.sort(rng.choice(rest, min(cfg.holdout, len(rest)), replace=False))
        taken = np.concatenate([landmarks, holdout])
        taken_set = set(taken.tolist())
        recent = [r for r in reversed(self.recent) if r not in taken_set]
        return landmarks, holdout.astype(np.int64), np.array(recent[: cfg.recent], np.int64)

    def _log_refresh(self, step: int, tick: float, encoded: float, count: int, **kw: Any) -> None:
        """Write a ``mining`` event for a build / refresh that started at ``tick``."""
        if self.log is not None:
            self.log.write(
                "mining", step=step, strategy=self.cfg.strategy, encoded=count,
                encode_seconds=encoded, seconds=time.perf_counter() - tick,
                index_bytes=self.memory_bytes(), **kw,
            )  # fmt: skip

    def current_vectors(self) -> np.ndarray | None:
        """The target vectors mining uses now, ``(N, d)`` in id order (None before the first)."""
        if self.index is not None:
            return self.index.vectors().numpy()
        return self.vectors

    def memory_bytes(self) -> int:
        """Host memory of the index (or of the oracle's vector matrix)."""
        if self.index is not None:
            return self.index.memory_bytes()
        return 0 if self.vectors is None else int(self.vectors.nbytes)

    # ---- telemetry and checkpoints ------------------------------------------------------------

    def telemetry(self, step: int, step_seconds: float) -> dict[str, Any]:
        """Fields for the ``train`` record of ``step``; call once per step (accumulates time).

        Args:
            step: The step just run.
            step_seconds: Wall time of the whole step, mining included.
        """
        self.seconds["training"] += max(step_seconds - self.seconds["step_mining"], 0.0)
        age = step - self.last_encoded
        hits, mined = self.last_hits
        return {
            "mining_seconds": self.seconds["mining"],
            "training_seconds": self.seconds["training"],
            "staleness_mean": float(age.mean()),
            "staleness_max": int(age.max()),
            "steps_since_refresh": step - self.last_refresh,
            "mined_positive_fraction": hits / max(mined, 1),
            "index_bytes": self.memory_bytes(),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON part of the miner's state (the arrays go to :meth:`save`)."""
        return {
            "strategy": self.cfg.strategy,
            "num_targets": self.num_targets,
            "last_refresh": self.last_refresh,
            "recent": list(self.recent),
            "counts": dict(self.counts),
            "seconds": dict(self.seconds),
        }

    def save(self, folder: Path) -> None:
        """Write the index and per-target encode steps into a checkpoint folder."""
        from safetensors.torch import save_file

        if self.index is not None:
            self.index.save(folder / INDEX_FILE)
        save_file({"last_encoded": torch.from_numpy(self.last_encoded)}, str(folder / STATE_FILE))

    def load(self, folder: Path, state: Mapping[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` and :meth:`save` wrote (nothing when ``state`` is None).

        Raises:
            ValueError: The checkpoint was mined under another strategy or corpus.
        """
        from safetensors.torch import load_file

        if state is None:
            return
        if state["strategy"] != self.cfg.strategy or state["num_targets"] != self.num_targets:
            raise ValueError(
                f"{folder}: mined with strategy {state['strategy']!r} over "
                f"{state['num_targets']} targets; this run: {self.cfg.strategy!r}, "
                f"{self.num_targets}"
            )
        self.last_refresh = int(state["last_refresh"])
        self.recent = dict.fromkeys(int(r) for r in state["recent"])
        self.counts.update(state["counts"])
        self.seconds.update(state["seconds"])
        if (folder / STATE_FILE).is_file():
            self.last_encoded = load_file(str(folder / STATE_FILE))["last_encoded"].numpy().copy()
        if (folder / INDEX_FILE).is_file():
            self.index = TreeIndex.load(folder / INDEX_FILE)


def build_miner(
    cfg: MiningConfig,
    model: DualEncoder,
    corpus: Mapping[str, str] | None,
    known_positives: Mapping[str, set[str]],
    lengths: tuple[int, int],
    seed: int,
    log: MetricsLog | None,
) -> NegativeMiner | None:
    """The run's miner, or None for ``in_batch`` (no mining)."""
    if not cfg.active:
        return None
    if corpus is None:
        raise ValueError(f"mining.strategy={cfg.strategy!r} needs a BEIR training corpus")
    return NegativeMiner(cfg, model, corpus, known_positives, lengths, seed, log)
