"""Mining under several processes with the index held once per job (by rank 0).

Rank 0 holds the :class:`~dualforge.train.negatives.NegativeMiner` (tree, target vectors,
policy); the other ranks hold nothing of it. Every encode the miner asks for (a refresh's
targets, each step's queries) is announced to all ranks, encoded in shares by all of them and
gathered (:func:`~dualforge.train.evaluation.encode_texts`), so the work is sharded while the
index is not duplicated. When the batch is mined, rank 0 sends it (and the refresh report) to the
others. Every rank calls :meth:`prepare` at every step: rank 0's :class:`LeadingMiner` and the
others' :class:`FollowingMiner` exchange messages until the batch is done.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualforge.data import Batch
from dualforge.mining.policies import RefreshReport
from dualforge.train.distributed import ProcessInfo, broadcast_object
from dualforge.train.negatives import Encode, NegativeMiner, Side

ENCODE = "encode"
DONE = "done"


def announcing(encode: Encode, proc: ProcessInfo) -> Encode:
    """``encode`` for rank 0's miner: tell every rank what to encode, then encode in shares."""

    def run(texts: list[str], side: Side) -> np.ndarray:
        broadcast_object((ENCODE, list(texts), side), proc)
        return encode(texts, side)

    return run


class LeadingMiner:
    """Rank 0: mines with the one index of the job and sends the result to the other ranks.

    Args:
        miner: The miner, built with an :func:`announcing` encode.
        proc: This process's place in the job.
    """

    def __init__(self, miner: NegativeMiner, proc: ProcessInfo) -> None:
        self.miner, self.proc = miner, proc

    def prepare(self, batch: Batch, step: int) -> tuple[Batch, RefreshReport | None]:
        """The mined batch and the refresh report (sent to every rank as well)."""
        mined, report = self.miner.prepare(batch, step)
        broadcast_object((DONE, mined, report), self.proc)
        return mined, report


class FollowingMiner:
    """Any rank but 0: encodes its share of what rank 0's miner asks for, and receives the mined
    batch.

    Args:
        encode: The sharded mining encoder (the same one rank 0's miner calls).
        proc: This process's place in the job.
    """

    def __init__(self, encode: Encode, proc: ProcessInfo) -> None:
        self.encode, self.proc = encode, proc

    def prepare(self, batch: Batch, step: int) -> tuple[Batch, RefreshReport | None]:
        """Follow rank 0 until it sends the mined batch; return it and the refresh report."""
        while True:
            message: tuple[Any, ...] = broadcast_object(None, self.proc)
            if message[0] == DONE:
                return message[1], message[2]
            _, texts, side = message
            self.encode(texts, side)
