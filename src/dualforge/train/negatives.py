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

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dualforge.config import MiningConfig
from dualforge.data import Batch
from dualforge.data.beir import load_qrels
from dualforge.mining import exclusion_matrix, resolve_backend
from dualforge.mining.negatives import Mined, mine, positive_ceiling
from dualforge.mining.policies import (
    DriftParams,
    DynamicPolicy,
    OraclePolicy,
    Policy,
    RefreshPolicy,
    RefreshReport,
    StaticPolicy,
    TargetVectors,
    refresh,
)
from dualforge.mining.stores import StoreParams, StoreSpec

Side = Literal["query", "document"]
Encode = Callable[[list[str], Side], torch.Tensor]  # texts, side -> (len(texts), d) float32


@dataclass(frozen=True)
class Draws:
    """How negatives are drawn (plain values from the ``mining:`` section).

    Attributes:
        num_negatives: Negatives per query.
        mode: ``softmax`` (draws at ``temperature``) or ``topk`` (after ``skip_first``).
        temperature: Softmax temperature of the draws.
        skip_first: Top ranks skipped in top-k mode.
        filter: Positive-aware filter rule, ``none`` / ``absolute`` / ``relative``.
        margin: The filter's margin (score units, or a fraction of ``|s+|``).
        probe: Top ranks inspected per step for telemetry (0: off).
    """

    num_negatives: int = 4
    mode: str = "softmax"
    temperature: float = 0.05
    skip_first: int = 0
    filter: str = "none"
    margin: float = 0.05
    probe: int = 0


class Targets:
    """The training corpus as mining targets: ids, texts and row numbers (every rank holds it).

    Args:
        corpus: Target id -> text.

    Raises:
        ValueError: An empty corpus.
    """

    def __init__(self, corpus: Mapping[str, str]) -> None:
        if not corpus:
            raise ValueError("negative mining needs a non-empty training corpus")
        self.ids = list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        self.row = {doc_id: r for r, doc_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def fill(self, batch: Batch, rows: np.ndarray) -> Batch:
        """``batch`` with the ``(Q, k)`` target rows as its negatives."""
        return batch.with_negatives(
            [[self.texts[int(r)] for r in row] for row in rows],
            [[self.ids[int(r)] for r in row] for row in rows],
        )


class NegativeMiner:
    """Mines negatives per query under one policy (see the module docstring).

    One process calls :meth:`prepare`; under several, the mining protocol calls its parts
    (:meth:`plan`, :meth:`refresh`, :meth:`draw`) around the sharded encodes.

    Args:
        policy: When and how the target vectors are refreshed.
        encode: ``encode(texts, side)`` -> fresh ``(len(texts), d)`` embeddings (no grad).
        corpus: Target id -> text (the training corpus).
        known_positives: Query id -> ids of its relevant documents; never mined.
        draws: How negatives are drawn.
        spec: The store the target vectors live in.
        seed: Seed of the per-step draws.
        checks: Query id -> ids known to be unlabelled positives (telemetry only), or None.
    """

    def __init__(
        self,
        policy: Policy,
        encode: Encode,
        corpus: Mapping[str, str] | Targets,
        known_positives: Mapping[str, set[str]],
        *,
        draws: Draws,
        spec: StoreSpec | None = None,
        seed: int = 0,
        checks: Mapping[str, set[str]] | None = None,
    ) -> None:
        self.policy, self.encode, self.draws, self.seed = policy, encode, draws, seed
        self.corpus = corpus if isinstance(corpus, Targets) else Targets(corpus)
        self.known = self._rows_of(known_positives)
        self.checks = None if checks is None else self._rows_of(checks)
        self.targets = TargetVectors.empty(len(self.corpus), spec)
        self.counts = {"mined": 0, "positive_hits": 0, "refreshes": 0}
        self.last: dict[str, Any] = {"mined_positive_fraction": 0.0}

    def _rows_of(self, pairs: Mapping[str, set[str]]) -> dict[str, set[int]]:
        row = self.corpus.row
        return {q: {row[d] for d in docs if d in row} for q, docs in pairs.items()}

    @property
    def num_targets(self) -> int:
        """Number of targets (documents of the training corpus)."""
        return len(self.corpus)

    @property
    def backend(self) -> str:
        """The store and, for a tree, its sampler kernels (logged at the start)."""
        spec = self.targets.spec
        return spec.params.backend if spec.name == "tree" else f"flat:{spec.params.device}"

    def plan(self, step: int) -> np.ndarray | None:
        """Target rows to re-encode before ``step`` (None: no refresh due)."""
        return self.policy.plan(step, self.targets)

    def refresh(
        self, step: int, rows: np.ndarray, fresh: torch.Tensor, encode_seconds: float
    ) -> RefreshReport | None:
        """Apply a planned refresh's fresh vectors; its report, if any."""
        report = self.policy.apply(step, self.targets, rows, fresh, encode_seconds)
        self.targets.last_refresh = step
        self.counts["refreshes"] += 1
        return report

    def prepare(self, batch: Batch, step: int) -> tuple[Batch, RefreshReport | None]:
        """One process: refresh when due, then ``batch`` with mined negatives, and the report.

        Args:
            batch: A sampler batch (its own negatives, if any, are replaced).
            step: The 1-based step this batch is for.
        """

        def encode_rows(rows: np.ndarray) -> torch.Tensor:
            return self.encode([self.corpus.texts[int(r)] for r in rows], "document")

        done, report = refresh(self.policy, step, self.targets, encode_rows)
        if done:
            self.counts["refreshes"] += 1
        rows = self.draw(batch, step, self.encode(list(batch.queries), "query"))
        return self.corpus.fill(batch, rows), report

    def draw(self, batch: Batch, step: int, queries: torch.Tensor) -> np.ndarray:
        """``(Q, k)`` target rows for the batch's queries (their ``(Q, d)`` vectors)."""
        d, store = self.draws, self.targets.source()
        q = queries.to(store.device, torch.float32)
        own = self._own_rows(batch)
        ceiling = None if d.filter == "none" else self._ceiling(q, own)
        gen = torch.Generator(store.device).manual_seed(self.seed * 1_000_003 + step)
        mined = mine(
            store, q, d.num_negatives, mode=d.mode, exclude=exclusion_matrix(self._excluded(batch, own)),
            ceiling=ceiling, temperature=d.temperature, skip_first=d.skip_first, generator=gen,
        )  # fmt: skip
        self._telemetry(batch, q, own, ceiling, mined)
        seen = np.asarray([r for r in own if r >= 0], np.int64)
        self.policy.observe(np.concatenate([seen, mined.ids.reshape(-1)]))
        return mined.ids

    def _own_rows(self, batch: Batch) -> list[int]:
        """Each query's own positive as a target row (-1: not in the corpus)."""
        row = self.corpus.row
        return [row.get(p, -1) if p is not None else -1 for p in batch.positive_ids]

    def _ceiling(self, q: torch.Tensor, own: list[int]) -> torch.Tensor:
        """``(Q,)`` filter ceilings from the store's vectors of each query's positive."""
        store, rows = self.targets.source(), torch.tensor(own)
        pos = store.vectors(rows.clamp(min=0)).to(q.device)  # (Q, d)
        s_pos = (q * pos).sum(1).double().cpu()  # (Q,)
        ceiling = positive_ceiling(s_pos, self.draws.filter, self.draws.margin)
        return torch.where(rows >= 0, ceiling, math.inf)

    def _excluded(self, batch: Batch, own: list[int]) -> list[list[int]]:
        """Rows never to mine per query: its known positives and its own positive."""
        out = []
        for qid, r in zip(batch.query_ids, own):
            rows = set(self.known.get(qid, set())) if qid is not None else set()
            if r >= 0:
                rows.add(r)
            out.append(sorted(rows))
        return out

    def _telemetry(
        self, batch: Batch, q: torch.Tensor, own: list[int], ceiling: torch.Tensor | None,
        mined: Mined,
    ) -> None:  # fmt: skip
        """What this step's draw did (read by :meth:`telemetry`)."""
        ids, qids = mined.ids, list(batch.query_ids)
        hits = _hits(qids, ids, self.known)
        self.counts["mined"] += ids.size
        self.counts["positive_hits"] += hits
        last: dict[str, Any] = {
            "mined_positive_fraction": hits / max(ids.size, 1),
            "negatives_crc32": zlib.crc32(np.ascontiguousarray(ids, np.int64).tobytes()),
        }
        if ceiling is not None:
            last["filter_fallbacks"] = int(mined.fallback.sum())
        if self.checks is not None:
            last["planted_rate"] = _hits(qids, ids, self.checks) / max(ids.size, 1)
        if self.draws.probe > 0:
            last.update(self._probe(qids, q, own, ceiling))
        self.last = last

    def _probe(
        self, qids: list[str | None], q: torch.Tensor, own: list[int], ceiling: torch.Tensor | None
    ) -> dict[str, float]:
        """Of each query's top ``probe`` targets (nothing excluded): the fractions that the
        qrels exclusion and the filter remove."""
        store = self.targets.source()
        k = min(self.draws.probe, store.num_points)
        none = torch.zeros(0, dtype=torch.int64)
        scores, rows = store.topk(q, k, excluded=none, ceiling=None)  # (Q, k)
        known = [set(self.known.get(qid, set())) | {r} if qid is not None else {r}
                 for qid, r in zip(qids, own)]  # fmt: skip
        is_known = np.array([[int(r) in kn for r in row] for kn, row in zip(known, rows.tolist())])
        out = {"probe_qrels_fraction": float(is_known.mean())}
        if ceiling is not None:
            above = (scores.double() > ceiling.unsqueeze(1)).numpy() & ~is_known
            out["probe_filter_fraction"] = float(above.mean())
        return out

    def telemetry(self, step: int) -> dict[str, Any]:
        """Staleness, steps since the refresh, the last draw's fractions and store memory."""
        age = step - self.targets.last_encoded
        return {
            "staleness_mean": float(age.mean()),
            "staleness_max": int(age.max()),
            "steps_since_refresh": step - self.targets.last_refresh,
            **self.last,
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


def _hits(qids: list[str | None], rows: np.ndarray, pairs: Mapping[str, set[int]]) -> int:
    """How many mined rows are in their query's set of ``pairs``."""
    return sum(
        int(np.isin(r, list(pairs.get(qid, ())) or [-1]).sum())
        for qid, r in zip(qids, rows)
        if qid is not None
    )


def load_checks(path: str | None) -> dict[str, set[str]] | None:
    """``mining.check_qrels``: query id -> documents known to be unlabelled positives (a BEIR
    qrels TSV; rows of any score count), or None when not set."""
    if path is None:
        return None
    return {q: set(docs) for q, docs in load_qrels(path).items()}


def build_policy(cfg: MiningConfig, seed: int, normalized: bool) -> Policy | None:
    """The policy of ``cfg.strategy`` from plain values (None for ``in_batch``).

    Args:
        cfg: Mining settings.
        seed: Seed of landmark choices.
        normalized: Whether the model outputs unit vectors (dynamic corrections are rescaled).
    """
    drift = DriftParams(
        cfg.landmarks, cfg.holdout, cfg.recent, cfg.ridge, cfg.correction == "residual",
        cfg.kernel, cfg.looseness, normalized,
    )  # fmt: skip
    policies: dict[str, Callable[[], Policy | None]] = {
        "in_batch": lambda: None,
        "static": StaticPolicy,
        "refresh": lambda: RefreshPolicy(cfg.refresh_every),
        "oracle": OraclePolicy,
        "dynamic": lambda: DynamicPolicy(cfg.refresh_every, drift, seed),
    }
    return policies[cfg.strategy]()


def store_spec(cfg: MiningConfig, seed: int, device: str) -> StoreSpec:
    """``mining.index`` and its settings; a ``flat`` store lives on ``device``."""
    params = StoreParams(
        cfg.branching, cfg.leaf_size, seed, cfg.looseness, cfg.eta,
        resolve_backend(cfg.backend) if cfg.index == "tree" else cfg.backend, device,
    )  # fmt: skip
    return StoreSpec(cfg.index, params)


def draws_of(cfg: MiningConfig) -> Draws:
    """How negatives are drawn, from the ``mining:`` section."""
    return Draws(
        cfg.num_negatives, cfg.mode, cfg.temperature, cfg.skip_first, cfg.filter, cfg.margin,
        cfg.probe,
    )  # fmt: skip


def build_miner(
    cfg: MiningConfig,
    encode: Encode,
    corpus: Mapping[str, str] | None,
    known_positives: Mapping[str, set[str]],
    seed: int,
    normalized: bool,
    device: str = "cpu",
    checks: Mapping[str, set[str]] | None = None,
) -> NegativeMiner | None:
    """The run's miner, or None for ``in_batch`` (no mining).

    Raises:
        ValueError: No corpus, or the oracle over more than ``oracle_max_targets`` targets.
    """
    policy = build_policy(cfg, seed, normalized)
    if policy is None:
        return None
    if corpus is None:
        raise ValueError(f"mining.strategy={cfg.strategy!r} needs a training corpus")
    if cfg.strategy == "oracle" and len(corpus) > cfg.oracle_max_targets:
        raise ValueError(
            f"mining.strategy='oracle' re-encodes all {len(corpus)} targets every step, more "
            f"than mining.oracle_max_targets={cfg.oracle_max_targets}; use 'dynamic' or "
            f"'refresh', or raise the cap"
        )
    return NegativeMiner(
        policy, encode, corpus, known_positives, draws=draws_of(cfg),
        spec=store_spec(cfg, seed, device), seed=seed, checks=checks,
    )  # fmt: skip
