"""One process vs two on the CPU (gloo) at the same global batch: step time, bytes, memory.

Every arm trains the model of ``configs/scifact-minilm.yaml`` (all-MiniLM-L6-v2, tied towers,
attention dropout 0; queries <= 64 tokens, documents <= 256) on the same global batch of SciFact
train (query, title + abstract) pairs, as ``dualforge train`` builds it: InfoNCE (temperature
0.05), ``GradCache(chunk_size=8, keep_graphs=1)``, fp32 (``--precision bf16`` for autocast),
AdamW. With two processes the model is wrapped in DDP as the training loop does
(``dualforge.train.replicas.Ddp``), the engine gets ``no_sync=ddp.no_sync`` and a
``ProcessGroupExchange``, and rank r encodes rows ``[r * B/W, (r + 1) * B/W)``. The arms:

    1proc-1thread    one process, torch.set_num_threads(1)
    1proc-2threads   one process, 2 threads (all of a 2-core machine)
    2proc-1thread    two processes (torchrun's environment, gloo on localhost), 1 thread each

A step is ``zero_grad; gc.step(q, d); optimizer.step()``, timed after a barrier on every rank;
the step time of a multi-process arm is the slowest rank's, and the arm's figure is the median
over the timed steps after ``--warmup`` untimed ones. Peak RSS is each rank's VmHWM (and
``resource.getrusage`` ru_maxrss) at the end.

Bytes per step and rank, counted while the step runs:

    reps all-gather       the engine's ``exchange.gather`` calls (all_gather_into_tensor): the
                          gathered (W * b, D) tensor, one per tower
    grads reduce-scatter  ``exchange.scatter`` (reduce_scatter_tensor): its (W * b, D) input
    scalar all-reduce     ``exchange.total`` / ``exchange.most`` (the summed loss, chunk counts)
    DDP all-reduce        a DDP comm hook summing ``bucket.buffer().numel() * element_size()``
                          over the buckets it reduces (then running the default all-reduce)

"tensor" bytes are those sizes (the whole collective's tensor); "sent" estimates what one rank
puts on the wire with ring algorithms: (W-1)/W of the tensor for all-gather and reduce-scatter,
2 (W-1)/W for all-reduce. Not counted: DDP's per-step all-reduce of its unused-parameter map
(one int32 per parameter tensor) and the one-off parameter broadcast at construction.

Run (about 20 s for the smoke test, about 6 min for the full benchmark on 2 cores):

    python bench/distributed.py --quick --output /tmp/distributed-quick.json
    python bench/distributed.py                      # writes bench/out/distributed.json

``--quick`` runs a tiny random BERT (MiniLM's tokenizer) on the SciFact cut: global batch 8,
chunk 2, 2 timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _common import OUT, SCIFACT, finish_report, load_pairs, parse_args, quick_scifact
from gradcache import code_version, peak_rss_mib
from hardware import build_model, cpu_info, loss_fn

ARMS = (("1proc-1thread", 1, 1), ("1proc-2threads", 1, 2), ("2proc-1thread", 2, 1))
CATEGORIES = ("reps_all_gather", "grads_reduce_scatter", "scalar_all_reduce", "ddp_all_reduce")
WIRE = {"all_gather": 1, "reduce_scatter": 1, "all_reduce": 2}  # x (W-1)/W of the tensor


# --------------------------------------------------------------------------- one rank


class Counter:
    """Bytes handed to collectives this step, by category: [(kind, tensor bytes), ...]."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[str, int]]] = {c: [] for c in CATEGORIES}

    def add(self, category: str, kind: str, tensor: torch.Tensor) -> None:
        self.calls[category].append((kind, tensor.numel() * tensor.element_size()))

    def summary(self, world: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for category, calls in self.calls.items():
            tensor = sum(n for _, n in calls)
            sent = sum(WIRE[kind] * n * (world - 1) / world for kind, n in calls)
            out[category] = {"calls": len(calls), "tensor_bytes": tensor, "sent_bytes": sent}
        out["total"] = {
            key: sum(out[c][key] for c in CATEGORIES)
            for key in ("calls", "tensor_bytes", "sent_bytes")
        }
        return out

    def reset(self) -> None:
        for calls in self.calls.values():
            calls.clear()


def counting_exchange(counter: Counter) -> Any:
    """A :class:`ProcessGroupExchange` that logs the size of every tensor it exchanges."""
    from dualforge.gradcache.exchange import ProcessGroupExchange

    class CountingExchange(ProcessGroupExchange):
        # Extra arguments pass through untouched: only the tensors' sizes are observed.
        def gather(self, local: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = super().gather(local, *args, **kwargs)
            counter.add("reps_all_gather", "all_gather", out)
            return out

        def scatter(self, full: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            counter.add("grads_reduce_scatter", "reduce_scatter", full)
            return super().scatter(full, *args, **kwargs)

        def total(self, values: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            counter.add("scalar_all_reduce", "all_reduce", values)
            return super().total(values, *args, **kwargs)

        def most(self, count: int, *args: Any, **kwargs: Any) -> int:
            counter.add("scalar_all_reduce", "all_reduce", torch.zeros(1, dtype=torch.long))
            return super().most(count, *args, **kwargs)

    return CountingExchange()


def ddp_wrap(model: torch.nn.Module) -> Any:
    """The DDP wrapper the training loop builds (``dualforge.train.replicas.Ddp``)."""
    from dualforge.train.replicas import Ddp

    return Ddp(model, torch.device("cpu")).ddp


def rank_worker(spec: dict[str, Any], out_dir: Path) -> None:
    """One rank of an arm (torchrun's environment): build, warm up, time, write rank<r>.json."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from dualforge import GradCache
    from dualforge.train.components import tower_encoders
    from dualforge.train.distributed import ProcessInfo, barrier, setup, teardown

    torch.set_num_threads(spec["threads"])
    proc = ProcessInfo.from_env()
    setup("cpu", proc)
    torch.manual_seed(42 + proc.rank)  # as the training loop: dropout differs between ranks
    model = build_model(spec["tiny"])
    queries, docs = load_pairs(spec["batch"], seed=0, folder=Path(spec["data"]))
    b = spec["batch"] // proc.world
    rows = slice(proc.rank * b, (proc.rank + 1) * b)
    q = model.tokenize(queries[rows], "query", spec["q_len"])
    d = model.tokenize(docs[rows], "document", spec["d_len"])
    counter = Counter()
    ddp = None
    exchange = None
    if proc.world > 1:
        ddp = ddp_wrap(model)

        def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
            counter.add("ddp_all_reduce", "all_reduce", bucket.buffer())
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_hook)
        exchange = counting_exchange(counter)
    gc = GradCache(
        tower_encoders(ddp if ddp is not None else model), loss_fn(), spec["chunk"],
        keep_graphs=1, no_sync=ddp.no_sync if ddp is not None else None, exchange=exchange,
        autocast_dtype=torch.bfloat16 if spec["precision"] == "bf16" else None,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    times, losses, comm = [], [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        barrier()
        counter.reset()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        result = gc.step(q, d)
        optimizer.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(result.loss))
        comm.append(counter.summary(proc.world))
    peak = peak_rss_mib()
    report = {
        "rank": proc.rank,
        "world": proc.world,
        "threads": torch.get_num_threads(),
        "local_rows": b,
        "padded_tokens": int(q["attention_mask"].numel() + d["attention_mask"].numel()),
        "real_tokens": int(q["attention_mask"].sum() + d["attention_mask"].sum()),
        "times_s": times[spec["warmup"] :],
        "warmup_s": times[: spec["warmup"]],
        "losses": losses,
        "comm": comm[-1],
        "comm_same_every_step": all(c == comm[-1] for c in comm[spec["warmup"] :]),
        "peak": peak,
        "peak_mib": peak["vm_hwm_mib"] or peak["ru_maxrss_mib"],
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    (out_dir / f"rank{proc.rank}.json").write_text(json.dumps(report), encoding="utf-8")
    if dist.is_initialized():
        barrier()
        teardown()


# --------------------------------------------------------------------------- the launcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(spec: dict[str, Any], world: int, out_dir: Path, timeout: float) -> list[dict]:
    """``world`` ranks of ``--rank-worker spec`` with torchrun's environment; every rank is
    killed when the arm runs past ``timeout`` seconds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rank-worker", json.dumps(spec)]
    procs = []
    for rank in range(world):
        env = os.environ | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": str(spec["threads"]),
        }  # fmt: skip
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen([*cmd, str(out_dir)], env=env, **pipes))
    deadline = time.monotonic() + timeout
    try:
        errors = [p.communicate(timeout=max(deadline - time.monotonic(), 1))[1] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise RuntimeError(f"{world} ranks of {spec} ran past {timeout} s") from None
    for rank, (p, err) in enumerate(zip(procs, errors)):
        if p.returncode != 0:
            raise RuntimeError(f"rank {rank} exited {p.returncode}:\n{err[-3000:]}")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


def arm_result(name: str, world: int, threads: int, ranks: list[dict]) -> dict[str, Any]:
    per_step = [max(steps) for steps in zip(*(r["times_s"] for r in ranks))]
    return {
        "arm": name,
        "processes": world,
        "threads_per_process": threads,
        "threads_seen": [r["threads"] for r in ranks],
        "median_step_s": statistics.median(per_step),
        "step_s": per_step,
        "rank_median_step_s": [statistics.median(r["times_s"]) for r in ranks],
        "peak_rss_mib": [r["peak_mib"] for r in ranks],
        "peak_rss_total_mib": sum(r["peak_mib"] for r in ranks),
        "comm_per_rank": ranks[0]["comm"],
        "comm_same_on_every_rank": all(r["comm"] == ranks[0]["comm"] for r in ranks),
        "comm_same_every_step": all(r["comm_same_every_step"] for r in ranks),
        "parameter_bytes": ranks[0]["parameter_bytes"],
        "losses": [r["losses"] for r in ranks],
        "local_padded_tokens": [r["padded_tokens"] for r in ranks],
        "ranks": ranks,
    }


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"\n== global batch {cfg['batch']}, chunk {cfg['chunk']}, queries <= {cfg['q_len']}, "
        f"docs <= {cfg['d_len']} tokens, {cfg['precision']}; median of {cfg['steps']} steps =="
    )
    base = report["arms"][0]["median_step_s"]
    print(
        f"{'arm':<16}{'step s':>9}{'vs 1p1t':>9}{'peak RSS MiB/rank':>20}"
        f"{'sent MB/rank':>14}{'tensor MB':>11}"
    )
    for a in report["arms"]:
        total = a["comm_per_rank"]["total"]
        rss = " / ".join(f"{x:.0f}" for x in a["peak_rss_mib"])
        print(
            f"{a['arm']:<16}{a['median_step_s']:>9.2f}{a['median_step_s'] / base:>9.3f}"
            f"{rss:>20}{total['sent_bytes'] / 1e6:>14.3f}{total['tensor_bytes'] / 1e6:>11.3f}"
        )
    multi = [a for a in report["arms"] if a["processes"] > 1]
    for a in multi:
        print(f"\nbytes per step and rank, {a['arm']}:")
        for category in CATEGORIES:
            c = a["comm_per_rank"][category]
            print(
                f"  {category:<22}{c['calls']:>4} calls{c['tensor_bytes']:>14,} tensor B"
                f"{c['sent_bytes']:>16,.0f} sent B"
            )
        print(f"  (parameters: {a['parameter_bytes']:,} B)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model and sizes")
    parser.add_argument("--batch", type=int, default=32, help="global batch (pairs)")
    parser.add_argument("--chunk", type=int, default=8, help="Gradient Cache chunk size")
    parser.add_argument("--q-len", type=int, default=64, help="query max length")
    parser.add_argument("--d-len", type=int, default=256, help="document max length")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per arm")
    parser.add_argument("--output", type=Path, help="JSON results path")
    parser.add_argument("--rank-worker", nargs=2, metavar=("SPEC", "DIR"), help=argparse.SUPPRESS)
    quick = {"batch": 8, "chunk": 2, "q_len": 16, "d_len": 32, "steps": 2, "timeout": 120}
    args = parse_args(parser, quick)
    if args.rank_worker:
        rank_worker(json.loads(args.rank_worker[0]), Path(args.rank_worker[1]))
        return

    output = args.output or OUT / ("distributed-quick.json" if args.quick else "distributed.json")
    data = quick_scifact(output.parent) if args.quick else SCIFACT
    spec = {
        "tiny": args.quick, "data": str(data), "batch": args.batch, "chunk": args.chunk,
        "q_len": args.q_len, "d_len": args.d_len, "warmup": args.warmup, "steps": args.steps,
        "precision": args.precision,
    }  # fmt: skip
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/distributed.py", *sys.argv[1:]]),
        "cpu": cpu_info(),
        "code": code_version(),
        "config": spec,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": os.getloadavg(),
        "arms": [],
    }
    work = output.parent / (output.stem + "-ranks")
    for name, world, threads in ARMS:
        ranks = launch(spec | {"threads": threads}, world, work / name, args.timeout)
        arm = arm_result(name, world, threads, ranks)
        report["arms"].append(arm)
        print(
            f"  {name}: median step {arm['median_step_s']:.2f}s, peak RSS "
            f"{arm['peak_rss_mib']} MiB, {arm['comm_per_rank']['total']['sent_bytes']:,.0f} B sent",
            flush=True,
        )
    base = report["arms"][0]["median_step_s"]
    for arm in report["arms"]:
        arm["ratio_vs_1proc_1thread"] = arm["median_step_s"] / base
    finish_report(report, output, print_report)


if __name__ == "__main__":
    main()
