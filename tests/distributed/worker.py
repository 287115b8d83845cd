"""A worker process of the distributed tests: ``python -m tests.distributed.worker SPEC OUT``.

Started by :func:`tests.distributed.launch.run_workers` with torchrun's environment. Runs one
Gradient Cache step of the scenario ``SPEC`` (JSON) under DDP with every-rank exchange, counts
the gradient all-reduces with a DDP comm hook, and saves its gradients to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from dualforge.gradcache.exchange import ProcessGroupExchange
from dualforge.train.components import tower_encoders
from dualforge.train.distributed import ProcessInfo, setup
from dualforge.train.replicas import Ddp, Fsdp
from tests.distributed import scenario


def parts_case(spec: dict[str, Any], out: Path) -> None:
    """Build a run's parts from config overrides and mine one batch; save who holds what."""
    from dualforge.config import load_config
    from dualforge.train.loop import batches, build_parts, mine

    p = build_parts(load_config(None, spec["overrides"]))
    batch, _ = mine(p, next(batches(p.sampler)), 1)
    held = type(p.miner).__name__ if p.miner is not None else None
    torch.save({"miner": held, "negatives": batch.negative_ids}, out / f"rank{p.proc.rank}.pt")
    dist.destroy_process_group()


def main(spec: dict[str, Any], out: Path) -> None:
    if spec.get("mode") == "parts":
        parts_case(spec, out)
        return
    torch.set_num_threads(1)
    proc = ProcessInfo.from_env()
    setup("cpu", proc)
    tok = scenario.tokenizer()
    model = scenario.model(spec, tok)
    reduced: list[int] = []
    if spec.get("strategy") == "fsdp":
        holder = Fsdp(model)
        gc = scenario.engine(
            spec, tower_encoders(model), no_sync=holder.no_sync, keep_graphs=0,
            exchange=ProcessGroupExchange(),
        )  # fmt: skip
    else:
        ddp = Ddp(model, torch.device("cpu")).ddp

        def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
            reduced.append(bucket.index())
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_hook)
        gc = scenario.engine(
            spec, tower_encoders(ddp), no_sync=ddp.no_sync, exchange=ProcessGroupExchange()
        )
    q, d = scenario.local_batches(spec, tok, proc.rank)
    chunks = [len(gc.split(q)), len(gc.split(d))]
    torch.manual_seed(scenario.RANK_SEED + proc.rank)
    result = gc.step(q, d, scenario.loss_inputs(spec))
    torch.save(
        {"grads": {**scenario.full_grads(model), **scenario.loss_grads(gc.loss_fn)}, "loss": float(result.loss), "parts": result.parts,
         "reduced": reduced, "chunks": chunks},
        out / f"rank{proc.rank}.pt",
    )  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), Path(sys.argv[2]))
