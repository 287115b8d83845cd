"""Late interaction: a training step's time and peak memory, dualforge vs PyLate, cached vs plain.

Four arms train the same model on the same batch: all-MiniLM-L6-v2 with a fresh bias-free
384 -> 128 token projection, queries padded with ``[MASK]`` to 32 tokens (not attended),
documents <= 256 tokens, punctuation skipped in documents, MaxSim InfoNCE over in-batch
negatives at temperature 1.0, AdamW lr 3e-5, the first ``--batch`` SciFact train (query,
title + abstract) pairs of ``load_pairs(batch, seed=42)``:

    dualforge/cached   GradCache(chunk_size=16, sort_by_length=True), one optimizer step
    dualforge/plain    the whole batch encoded with its graph, one backward
    pylate/cached      pylate.losses.CachedContrastive(mini_batch_size=16) (bench/pylate_step.py,
                       run in PyLate's own virtual environment)
    pylate/plain       pylate.losses.Contrastive

Every arm runs in a fresh interpreter (peak memory is that process's VmHWM, read at the end)
and the arms alternate within each repeat (dualforge, PyLate, dualforge, PyLate), so a change
in machine load hits both libraries. A step is tokenize + loss + backward + optimizer step; the
figure is the median over the timed steps after the first (warm-up) step, then the median over
repeats. Dropout on (hidden 0.1, attention 0.0 as in configs/scifact-minilm-colbert.yaml;
``--no-dropout`` for none), fp32 (``--precision bf16`` autocasts both libraries' encoders).

Ratios are dualforge / PyLate for the same method and batch (goal, issue 16: step time <= 0.85x
and peak memory <= 1.0x for cached), and cached / plain within each library.

Run (the PyLate venv recipe is in bench/pylate_step.py; about 25 min on 2 cores):

    python bench/late_interaction.py --pylate-python /tmp/pylate-venv/bin/python
    python bench/late_interaction.py --quick --pylate-python none   # smoke test, dualforge only

``--quick``: batch 8 on the SciFact cut, dropout off (cached and plain then start from the same
loss).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import OUT, ROOT, SCIFACT, finish_report, load_pairs, parse_args, quick_scifact

ARMS = ("dualforge/cached", "dualforge/plain", "pylate/cached", "pylate/plain")
QUERY_LENGTH, DOC_LENGTH, TOKEN_DIM, CHUNK = 32, 256, 128, 16


def vm_hwm_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def dualforge_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``args.steps`` steps of one dualforge arm in this process; its timings and memory."""
    import torch

    from dualforge import GradCache
    from dualforge.losses import LossInputs, MaxSimNCE, all_rows
    from dualforge.modeling.late_io import build_late_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_late_model(
        args.model, dim=TOKEN_DIM, query_max_length=QUERY_LENGTH, doc_max_length=DOC_LENGTH,
        attention_dropout=0.0,
    )  # fmt: skip
    model.train(not args.no_dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    queries, docs = load_pairs(args.batch, seed=args.seed, folder=args.data)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    loss_fn = MaxSimNCE(temperature=1.0)

    gc = GradCache([model.encoder] * 2, loss_fn, CHUNK, autocast_dtype=dtype)
    loaded = vm_hwm_mib()
    seconds, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        q, d = model.tokenize(queries, "query"), model.tokenize(docs, "document")
        if args.method == "cached":
            loss = gc.step(q, d).loss
        else:
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                reps_q, reps_d = model(q), model(d)
            loss = loss_fn(reps_q.float(), reps_d.float(), LossInputs(), all_rows(reps_q)).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss))
    return {
        "step_seconds": seconds, "losses": losses, "vm_hwm_after_load_mib": loaded,
        "vm_hwm_end_mib": vm_hwm_mib(),
    }  # fmt: skip


def run_arm(arm: str, batch: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One arm in a fresh interpreter; its JSON record (``failed`` set when it did not finish)."""
    library, method = arm.split("/")
    common = ["--batch", str(batch), "--steps", str(args.steps), "--seed", "42",
              "--data", str(args.data), "--method", method, "--precision", args.precision,
              "--threads", str(args.threads), "--out", str(out),
              *(["--no-dropout"] if args.no_dropout else [])]  # fmt: skip
    if library == "dualforge":
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, *common]
    else:
        cmd = [args.pylate_python, str(ROOT / "bench" / "pylate_step.py"), "--mini-batch",
               str(CHUNK), *common]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        print(f"  {arm}@{batch}: FAILED rc={proc.returncode}\n{proc.stderr[-2000:]}")
        return {"failed": proc.returncode}
    record: dict[str, Any] = json.loads(out.read_text())
    timed = record["step_seconds"][1:] or record["step_seconds"]
    record["median_step_s"] = statistics.median(timed)
    print(
        f"  {arm}@{batch}: step {record['median_step_s']:.2f} s, peak "
        f"{record['vm_hwm_end_mib']:.0f} MiB, loss {record['losses'][0]:.4f}", flush=True,
    )  # fmt: skip
    return record


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: median step time and peak memory over the repeats that finished."""
    done = [r for r in runs if "failed" not in r]
    if not done:
        return {"failed": True}
    return {
        "step_s": statistics.median(r["median_step_s"] for r in done),
        "peak_mib": statistics.median(r["vm_hwm_end_mib"] for r in done),
        "after_load_mib": statistics.median(r["vm_hwm_after_load_mib"] for r in done),
        "first_loss": done[0]["losses"][0],
        "repeats": len(done),
    }


def ratios(arms: dict[str, dict[str, Any]]) -> dict[str, float]:
    """dualforge / PyLate per method, cached / plain per library (step time and peak memory)."""
    out: dict[str, float] = {}
    pairs = [(f"dualforge/{m}", f"pylate/{m}") for m in ("cached", "plain")]
    pairs += [(f"{lib}/cached", f"{lib}/plain") for lib in ("dualforge", "pylate")]
    for a, b in pairs:
        if "step_s" in arms.get(a, {}) and "step_s" in arms.get(b, {}):
            out[f"step {a} / {b}"] = arms[a]["step_s"] / arms[b]["step_s"]
            out[f"peak {a} / {b}"] = arms[a]["peak_mib"] / arms[b]["peak_mib"]
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every batch size: the arms interleaved ``--repeats`` times, summaries and ratios."""
    arms = [a for a in args.arms if args.pylate_python != "none" or a.startswith("dualforge")]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": settings}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
            for rep in range(args.repeats):
                for i, arm in enumerate(arms):
                    out = Path(tmp) / f"{batch}-{rep}-{i}.json"
                    runs[arm].append(run_arm(arm, batch, args, out))
            summary = {arm: summarise(r) for arm, r in runs.items()}
            report[f"batch {batch}"] = {"arms": summary, "ratios": ratios(summary), "runs": runs}
    return report


def print_report(report: dict[str, Any]) -> None:
    for key, value in report.items():
        if not key.startswith("batch "):
            continue
        print(f"\n{key}")
        for arm, s in value["arms"].items():
            if "step_s" in s:
                print(f"  {arm:18s} step {s['step_s']:7.2f} s   peak {s['peak_mib']:7.0f} MiB")
        for name, ratio in value["ratios"].items():
            print(f"  {name:45s} {ratio:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pylate-python", default="/tmp/pylate-venv/bin/python",
                        help="python of the PyLate venv; 'none' runs dualforge's arms only")  # fmt: skip
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--steps", type=int, default=3, help="steps per run, the first untimed")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per arm")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--output", type=Path, default=OUT / "late_interaction.json")
    parser.add_argument("--no-dropout", action="store_true", help="eval mode: dropout off")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny batches")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["cached", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    quick = {"batches": [8], "steps": 2, "data": None, "no_dropout": True}
    args = parse_args(parser, quick, argv)
    if args.worker:
        args.out.write_text(json.dumps(dualforge_worker(args)))
        return
    if args.data is None:
        args.data = quick_scifact(args.output.parent)
    finish_report(bench(args), args.output, print_report)


if __name__ == "__main__":
    main()
