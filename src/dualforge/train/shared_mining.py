"""Mining under several processes: one explicit step protocol, the store held once (by rank 0).

Every rank calls :meth:`MiningProtocol.prepare` at every step; the phases are the same on all::

    plan    rank 0's policy picks the target rows to re-encode -> broadcast (an int64 tensor)
    encode  every rank encodes its share of those targets' texts and of the batch's queries
    gather  the shares are all-gathered as tensors (on the training device)
    draw    rank 0 applies the refresh to its store and draws the negatives
    send    rank 0 broadcasts the (Q, k) target rows; every rank fills its batch from its own
            copy of the corpus

A monitored barrier opens ``plan`` and ``gather`` on a gloo group with ``mining.timeout``: a rank
that died or hangs is named (``mining step 7, encode: rank 1 did not answer within 60 s``), as is
rank 0 when a follower waits for it in vain. Nothing is pickled: plans, vectors and negatives
travel as tensors.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from dualforge.data import Batch
from dualforge.mining.policies import RefreshReport
from dualforge.train.distributed import ProcessInfo
from dualforge.train.faults import RunStoppedError
from dualforge.train.negatives import Encode, NegativeMiner, Targets

NO_REFRESH = -1  # the plan's length when no refresh is due
Group = dist.ProcessGroup


class MiningProtocolError(RunStoppedError):
    """A rank stopped answering in the multi-process mining step (the message names it)."""


def shares(n: int, world: int) -> list[np.ndarray]:
    """Each rank's positions of ``n`` items, dealt round-robin (sizes differ by at most 1)."""
    return [np.arange(r, n, world) for r in range(world)]


class MiningProtocol:
    """This rank's side of the mining step (see the module docstring).

    Args:
        proc: This process's place in the job.
        encode: This rank's own (unsharded, no grad) ``encode(texts, side)``.
        targets: The corpus (every rank holds it).
        miner: Rank 0's miner; None on the other ranks.
        num_negatives: Negatives per query (the shape of what rank 0 sends).
        timeout: Seconds to wait for the other ranks at each phase.
        group: The gloo group of the barriers and small broadcasts (None: a new one, so every
            rank must build its protocol at the same point).
    """

    def __init__(
        self,
        proc: ProcessInfo,
        encode: Encode,
        targets: Targets,
        miner: NegativeMiner | None,
        num_negatives: int,
        timeout: float,
        group: Group | None = None,
    ) -> None:
        self.proc, self.encode, self.corpus, self.miner = proc, encode, targets, miner
        self.num_negatives, self.timeout = num_negatives, timedelta(seconds=timeout)
        self.group = group or dist.new_group(backend="gloo", timeout=self.timeout)

    def prepare(self, batch: Batch, step: int) -> tuple[Batch, RefreshReport | None]:
        """The mined batch on every rank; rank 0 also returns the refresh report."""
        self._barrier(step, "plan")
        rows = self._plan(step)
        tick = time.perf_counter()
        texts = [] if rows is None else [self.corpus.texts[int(r)] for r in rows]
        fresh, queries = self._encode(step, texts, list(batch.queries))
        report = None
        ids = torch.empty((len(batch), self.num_negatives), dtype=torch.int64)
        if self.miner is not None:
            if rows is not None:
                report = self.miner.refresh(step, rows, fresh, time.perf_counter() - tick)
            ids = torch.from_numpy(self.miner.draw(batch, step, queries))
        self._broadcast(step, "send", ids)
        return self.corpus.fill(batch, ids.numpy()), report

    def _plan(self, step: int) -> np.ndarray | None:
        """Rank 0's refresh rows on every rank (None when no refresh is due)."""
        planned = self.miner.plan(step) if self.miner is not None else None
        size = torch.tensor([NO_REFRESH if planned is None else len(planned)])
        self._broadcast(step, "plan", size)
        if int(size) == NO_REFRESH:
            return None
        rows = (
            torch.empty(int(size), dtype=torch.int64)
            if planned is None
            else (torch.from_numpy(np.ascontiguousarray(planned, np.int64)))
        )
        self._broadcast(step, "plan", rows)
        return rows.numpy()

    def _encode(
        self, step: int, targets: list[str], queries: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's share of both lists encoded, then all-gathered: ``(T, d)``, ``(Q, d)``."""
        t_share, q_share = (shares(len(x), self.proc.world) for x in (targets, queries))
        mine_t, mine_q = t_share[self.proc.rank], q_share[self.proc.rank]
        local = self._local([targets[i] for i in mine_t], [queries[i] for i in mine_q])
        self._barrier(step, "encode")
        width = len(t_share[0]) + len(q_share[0])
        padded = local.new_zeros((width, local.shape[1]))
        padded[: len(mine_t)] = local[: len(mine_t)]
        padded[len(t_share[0]) : len(t_share[0]) + len(mine_q)] = local[len(mine_t) :]
        parts = [torch.empty_like(padded) for _ in range(self.proc.world)]
        dist.all_gather(parts, padded)
        fresh = local.new_empty((len(targets), local.shape[1]))
        vectors = local.new_empty((len(queries), local.shape[1]))
        for r, part in enumerate(parts):
            fresh[torch.from_numpy(t_share[r]).to(fresh.device)] = part[: len(t_share[r])]
            at = len(t_share[0])
            vectors[torch.from_numpy(q_share[r]).to(fresh.device)] = part[at : at + len(q_share[r])]
        return fresh, vectors

    def _local(self, targets: list[str], queries: list[str]) -> torch.Tensor:
        """This rank's ``(len(targets) + len(queries), d)`` vectors."""
        parts = [self.encode(targets, "document")] if targets else []
        return torch.cat([*parts, self.encode(queries, "query")])

    def _broadcast(self, step: int, phase: str, tensor: torch.Tensor) -> None:
        try:
            dist.broadcast(tensor, src=0, group=self.group)
        except RuntimeError as err:
            raise self._error(step, phase, "rank 0", err) from None

    def _barrier(self, step: int, phase: str) -> None:
        try:
            dist.monitored_barrier(self.group, timeout=self.timeout, wait_all_ranks=True)
        except RuntimeError as err:
            found = re.search(r"Ranks? ([\d, ]+) failed", str(err))
            who = f"rank {found.group(1).strip()}" if found and self.proc.main else "rank 0"
            raise self._error(step, phase, who, err) from None

    def _error(self, step: int, phase: str, who: str, err: Exception) -> MiningProtocolError:
        seconds = int(self.timeout.total_seconds())
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return MiningProtocolError(
            f"mining step {step}, {phase}: {who} did not answer within {seconds} s or stopped "
            f"({first}); mining.timeout sets the wait"
        )
