"""A rank of the mining-protocol tests: ``python -m tests.distributed.mining_worker SPEC OUT``.

A fake encoder (one seeded vector per text: the same whatever the batching) and a corpus with
planted copies of each positive; every step mines a fixed batch through
:class:`~dualforge.train.shared_mining.MiningProtocol` (or, with one process, the miner itself)
and rank ``r`` saves its negatives to ``OUT/rank<r>.pt``. ``SPEC["fail"]`` makes rank 1 raise
(``"raise"``) or hang (``"hang"``) in its encode at step 2.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dualforge.data import Batch
from dualforge.mining.policies import DriftParams, DynamicPolicy
from dualforge.mining.stores import StoreParams, StoreSpec
from dualforge.train.distributed import ProcessInfo, setup
from dualforge.train.negatives import Draws, NegativeMiner, Targets
from dualforge.train.shared_mining import MiningProtocol

DIM, DOCS, STEPS, BATCH = 16, 120, 5, 8


def corpus() -> dict[str, str]:
    """``DOCS`` documents plus a planted copy (same text, new id) of the first 8."""
    docs = {f"d{i}": f"document {i} about topic {i % 7}" for i in range(DOCS)}
    docs.update({f"copy{i}": docs[f"d{i}"] for i in range(8)})
    return docs


def vector(text: str, side: str, step: int) -> torch.Tensor:
    """A seeded unit vector per text; a query lies near its document; drifts with the step."""
    base = text.replace("query for ", "")
    gen = torch.Generator().manual_seed(zlib.crc32(base.encode()))
    v = torch.randn(DIM, generator=gen)
    if side == "query":
        v += 0.3 * torch.randn(
            DIM, generator=torch.Generator().manual_seed(zlib.crc32(text.encode()))
        )
    v[0] += 0.05 * step  # the model drifts
    return v / v.norm()


def batch(step: int) -> Batch:
    """A fixed batch of ``BATCH`` queries, each with its positive ``d<i>``."""
    rows = [(step * 3 + j) % 8 for j in range(BATCH)]
    texts = corpus()
    return Batch(
        queries=[f"query for {texts[f'd{r}']}" for r in rows],
        positives=[texts[f"d{r}"] for r in rows],
        negatives=[[] for _ in rows],
        query_ids=[f"q{r}" for r in rows],
        positive_ids=[f"d{r}" for r in rows],
        negative_ids=[[] for _ in rows],
    )


def main(spec: dict[str, Any], out: Path) -> None:
    torch.set_num_threads(1)
    proc = ProcessInfo.from_env()
    if proc.world > 1:
        setup("cpu", proc)
    now = {"step": 0}

    def encode(texts: list[str], side: Any) -> torch.Tensor:
        if proc.rank == 1 and now["step"] == 2 and spec.get("fail") == "raise":
            raise RuntimeError("rank 1 broke while encoding")
        if proc.rank == 1 and now["step"] == 2 and spec.get("fail") == "hang":
            time.sleep(120)
        return torch.stack([vector(t, side, now["step"]) for t in texts]).reshape(-1, DIM)

    targets = Targets(corpus())
    miner = None
    if proc.main:
        policy = DynamicPolicy(2, DriftParams(landmarks=20, holdout=10, recent=5, kernel="linear"))
        draws = Draws(num_negatives=3, filter=spec.get("filter", "none"), margin=0.05, probe=8)
        spec_ = StoreSpec(spec.get("index", "tree"), StoreParams(branching=4, leaf_size=8))
        miner = NegativeMiner(policy, encode, targets, {}, draws=draws, spec=spec_, seed=3)
    prepare = miner.prepare if proc.world == 1 and miner is not None else None
    if prepare is None:
        prepare = MiningProtocol(proc, encode, targets, miner, 3, spec.get("timeout", 60)).prepare
    mined = []
    for step in range(1, STEPS + 1):
        now["step"] = step
        done, _ = prepare(batch(step), step)
        mined.append(done.negative_ids)
    torch.save({"negatives": mined}, out / f"rank{proc.rank}.pt")
    if proc.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), Path(sys.argv[2]))
