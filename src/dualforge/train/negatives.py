"""Hard negatives for training batches, mined from the training corpus by the current model.

:class:`NegativeMiner` fills each batch's hard negatives (``[pos, neg_1..neg_K]`` per query) with
targets drawn from (or ranked by) the current target vectors; a
:class:`~dualforge.mining.policies.Policy` decides when those are refreshed (static / refresh /
oracle / dynamic, see ``dualforge.mining.policies``). The miner gets an ``encode`` callable, not
the model, and returns each refresh's report to the loop, which logs it and owns the clock.
Known positives of a query (qrels) are never mined.

:func:`build_miner` is the one place that reads the ``mining:`` config section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch

from dualforge.config import MiningConfig
from dualforge.data import Batch
from dualforge.mining import exclusion_matrix, mine_negatives, resolve_backend
from dualforge.mining.policies import (
    DriftParams,
    DynamicPolicy,
    OraclePolicy,
    Policy,
    RefreshPolicy,
    RefreshReport,
    StaticPolicy,
    TargetVectors,
    TreeParams,
)

Side = Literal["query", "document"]
Encode = Callable[[list[str], Side], np.ndarray]  # texts, side -> (len(texts), d) float32


class NegativeMiner:
    """Mines ``num_negatives`` negatives per query under one policy (see the module docstring).

    Args:
        policy: When and how the target vectors are refreshed.
        encode: ``encode(texts, side)`` -> fresh ``(len(texts), d)`` embeddings (no grad).
        corpus: Target id -> text (the training corpus).
        known_positives: Query id -> ids of its relevant documents; never mined.
        num_negatives: Negatives per query.
        mode: ``"softmax"`` (draws at ``temperature``) or ``"topk"`` (after ``skip_first``).
        temperature: Softmax temperature of the draws.
        skip_first: Top ranks skipped in top-k mode.
        eta: Tree sampler refinement threshold (cost only).
        backend: Tree sampler backend, resolved: ``"torch"`` or ``"numba"``.
        seed: Seed of the per-step draws.

    Raises:
        ValueError: An empty corpus.
    """

    def __init__(
        self,
        policy: Policy,
        encode: Encode,
        corpus: Mapping[str, str],
        known_positives: Mapping[str, set[str]],
        *,
        num_negatives: int,
        mode: str = "softmax",
        temperature: float = 0.05,
        skip_first: int = 0,
        eta: float = 0.25,
        backend: str = "torch",
        seed: int = 0,
    ) -> None:
        if not corpus:
            raise ValueError("negative mining needs a non-empty training corpus")
        self.policy, self.encode, self.seed = policy, encode, seed
        self.num_negatives, self.mode, self.temperature = num_negatives, mode, temperature
        self.skip_first, self.eta, self.backend = skip_first, eta, backend
        self.ids = list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        self.row = {doc_id: r for r, doc_id in enumerate(self.ids)}
        self.known = {
            q: {self.row[d] for d in docs if d in self.row} for q, docs in known_positives.items()
        }
        self.targets = TargetVectors.empty(len(self.ids))
        self.counts = {"mined": 0, "positive_hits": 0, "refreshes": 0}
        self.last_hits = (0, 0)

    @property
    def num_targets(self) -> int:
        """Number of targets (documents of the training corpus)."""
        return len(self.ids)

    def encode_targets(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Fresh ``(len(rows), d)`` embeddings of targets (all when ``rows`` is None)."""
        texts = self.texts if rows is None else [self.texts[int(r)] for r in rows]
        return self.encode(texts, "document")

    def maintain(self, step: int) -> RefreshReport | None:
        """Refresh the target vectors when the policy says so; the report, if any."""
        if not self.policy.due(step, self.targets):
            return None
        report = self.policy.refresh(step, self.targets, self.encode_targets)
        self.targets.last_refresh = step
        self.counts["refreshes"] += 1
        return report

    def prepare(self, batch: Batch, step: int) -> tuple[Batch, RefreshReport | None]:
        """Refresh when due, then ``batch`` with mined negatives, and the refresh's report.

        Args:
            batch: A sampler batch (its own negatives, if any, are replaced).
            step: The 1-based step this batch is for.
        """
        report = self.maintain(step)
        exclude = exclusion_matrix(self._excluded(batch))
        q = self.encode(list(batch.queries), "query")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = mine_negatives(
            self.targets.source(), q, self.num_negatives, mode=self.mode, exclude=exclude,
            temperature=self.temperature, skip_first=self.skip_first, generator=gen,
            eta=self.eta, backend=self.backend,
        )  # fmt: skip
        self._count_hits(batch, rows)
        seen = [self.row[p] for p in batch.positive_ids if p is not None and p in self.row]
        self.policy.observe(np.concatenate([np.asarray(seen, np.int64), rows.reshape(-1)]))
        mined = batch.with_negatives(
            [[self.texts[int(r)] for r in row] for row in rows],
            [[self.ids[int(r)] for r in row] for row in rows],
        )
        return mined, report

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

    def telemetry(self, step: int) -> dict[str, Any]:
        """Staleness, steps since the refresh, labelled-positive fraction and index memory."""
        age = step - self.targets.last_encoded
        hits, mined = self.last_hits
        return {
            "staleness_mean": float(age.mean()),
            "staleness_max": int(age.max()),
            "steps_since_refresh": step - self.targets.last_refresh,
            "mined_positive_fraction": hits / max(mined, 1),
            "index_bytes": self.targets.memory_bytes(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values)."""
        return {
            "strategy": self.policy.name,
            "num_targets": self.num_targets,
            "counts": dict(self.counts),
            "targets": self.targets.state_dict(),
            "policy": self.policy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: The state was mined under another strategy or corpus.
        """
        if state["strategy"] != self.policy.name or state["num_targets"] != self.num_targets:
            raise ValueError(
                f"mined with strategy {state['strategy']!r} over {state['num_targets']} "
                f"targets; this run: {self.policy.name!r}, {self.num_targets}"
            )
        self.counts.update(state["counts"])
        self.targets.load_state_dict(state["targets"])
        self.policy.load_state_dict(state["policy"])


def build_policy(cfg: MiningConfig, seed: int, normalized: bool) -> Policy | None:
    """The policy of ``cfg.strategy`` from plain values (None for ``in_batch``).

    Args:
        cfg: Mining settings.
        seed: Seed of tree builds and landmark choices.
        normalized: Whether the model outputs unit vectors (dynamic corrections are rescaled).
    """
    tree = TreeParams(cfg.branching, cfg.leaf_size, seed)
    drift = DriftParams(
        cfg.landmarks, cfg.holdout, cfg.recent, cfg.ridge, cfg.correction == "residual",
        cfg.kernel, cfg.looseness, normalized,
    )  # fmt: skip
    policies: dict[str, Callable[[], Policy | None]] = {
        "in_batch": lambda: None,
        "static": lambda: StaticPolicy(tree),
        "refresh": lambda: RefreshPolicy(cfg.refresh_every, tree),
        "oracle": OraclePolicy,
        "dynamic": lambda: DynamicPolicy(cfg.refresh_every, tree, drift),
    }
    return policies[cfg.strategy]()


def build_miner(
    cfg: MiningConfig,
    encode: Encode,
    corpus: Mapping[str, str] | None,
    known_positives: Mapping[str, set[str]],
    seed: int,
    normalized: bool,
) -> NegativeMiner | None:
    """The run's miner, or None for ``in_batch`` (no mining).

    Raises:
        ValueError: No corpus, or the oracle over more than ``oracle_max_targets`` targets.
    """
    policy = build_policy(cfg, seed, normalized)
    if policy is None:
        return None
    if corpus is None:
        raise ValueError(f"mining.strategy={cfg.strategy!r} needs a BEIR training corpus")
    if cfg.strategy == "oracle" and len(corpus) > cfg.oracle_max_targets:
        raise ValueError(
            f"mining.strategy='oracle' re-encodes all {len(corpus)} targets every step, more "
            f"than mining.oracle_max_targets={cfg.oracle_max_targets}; use 'dynamic' or "
            f"'refresh', or raise the cap"
        )
    return NegativeMiner(
        policy, encode, corpus, known_positives, num_negatives=cfg.num_negatives,
        mode=cfg.mode, temperature=cfg.temperature, skip_first=cfg.skip_first, eta=cfg.eta,
        backend=resolve_backend(cfg.backend), seed=seed,
    )  # fmt: skip
