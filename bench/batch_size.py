"""Retrieval accuracy vs batch size on SciFact: why cache gradients rather than accumulate them.

Four arms, same seed, same number of optimizer steps, same learning-rate schedule, bf16 autocast:

    plain-32      plain backward, batch 32 (31 in-batch negatives per query)
    accum-4x32    gradient accumulation: 4 micro-batches of 32, negatives only within each
    gradcache-128 GradCache, batch 128, chunk 16 (127 negatives per query, same memory as 32)
    gradcache-512 GradCache, batch 512, chunk 16

Each arm fine-tunes the packaged all-MiniLM-L6-v2 on SciFact train and is evaluated (fp32,
documents truncated at 256 tokens) on SciFact test. Run:

    python bench/batch_size.py --steps 12 --output bench/out/batch_size.json
    python bench/batch_size.py --quick --output /tmp/bs.json   # smoke test: 3 tiny arms, 1 step
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from _common import OUT, SCIFACT, parse_args, quick_scifact
from dualforge import GradCache
from dualforge.config import EvalConfig
from dualforge.data import Batch, EpochBatchSampler, examples_from_beir, load_beir, load_eval_set
from dualforge.losses import InfoNCE, info_nce
from dualforge.modeling import DualEncoder, load_model
from dualforge.train.collate import collate
from dualforge.train.evaluation import evaluate_split
from dualforge.train.loop import batches, seed_everything
from dualforge.train.schedule import build_optimizer, build_scheduler


@dataclass(frozen=True)
class Arm:
    """One training recipe."""

    name: str
    batch: int
    micro: int  # rows per backward for plain / accumulation; chunk size for GradCache
    cached: bool


ARMS = {
    "plain-32": Arm("plain-32", 32, 32, False),
    "accum-4x32": Arm("accum-4x32", 128, 32, False),
    "gradcache-128": Arm("gradcache-128", 128, 16, True),
    "gradcache-512": Arm("gradcache-512", 512, 16, True),
}
# The three kinds of recipe (plain, accumulation, GradCache) at 1/8 of the sizes, for the smoke
# test (--quick).
QUICK_ARMS = {
    "plain-4": Arm("plain-4", 4, 4, False),
    "accum-4x4": Arm("accum-4x4", 16, 4, False),
    "gradcache-16": Arm("gradcache-16", 16, 2, True),
}
QUICK = {"steps": 1, "doc_len": 32, "eval_len": 32, "arms": ",".join(QUICK_ARMS)}


def bf16() -> AbstractContextManager[None]:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def sub_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of a batch."""
    return replace(
        batch,
        queries=batch.queries[start:stop],
        positives=batch.positives[start:stop],
        negatives=batch.negatives[start:stop],
        query_ids=batch.query_ids[start:stop],
        positive_ids=batch.positive_ids[start:stop],
        negative_ids=batch.negative_ids[start:stop],
    )


def backward_fn(model: DualEncoder, arm: Arm, doc_len: int) -> Callable[[Batch], float]:
    """The gradient computation of one arm (no optimizer step)."""
    towers = [model.query_encoder, model.doc_encoder]
    gc = GradCache(towers, InfoNCE(), arm.micro, autocast_dtype=torch.bfloat16)

    def run(batch: Batch) -> float:
        if arm.cached:
            x = collate(model, batch, 64, doc_len)
            return float(gc.step(x.queries, x.documents, x.loss).loss)
        total = 0.0
        for start in range(0, len(batch), arm.micro):
            x = collate(model, sub_batch(batch, start, start + arm.micro), 64, doc_len)
            with bf16():
                q, d = model(x.queries, "query"), model(x.documents, "document")
            loss = info_nce(q.float(), d.float(), positives=x.loss.positives)
            torch.autograd.backward(loss * arm.micro / len(batch))
            total += float(loss) * arm.micro / len(batch)
        return total

    return run


def train_arm(
    arm: Arm, steps: int, lr: float, doc_len: int, seed: int, data: Path = SCIFACT
) -> tuple[DualEncoder, float]:
    """Fine-tune a fresh MiniLM with ``arm`` on ``data`` train; return it and the training
    seconds."""
    seed_everything(seed)
    model = load_model("minilm", attention_dropout=0.0)
    model.train()
    examples = examples_from_beir(load_beir(data, "train"))
    sampler = EpochBatchSampler(examples, arm.batch, seed=seed)
    optimizer = build_optimizer(model.named_parameters(), lr, 0.01)
    scheduler = build_scheduler(optimizer, max(1, steps // 10), steps)
    step_fn, stream = backward_fn(model, arm, doc_len), batches(sampler)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_fn(next(stream))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"  {arm.name} step {step}/{steps} loss {loss:.4f}", flush=True)
    return model, time.perf_counter() - start


def arguments() -> argparse.Namespace:
    """The command line (``--quick`` defaults: :data:`QUICK`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny arms, SciFact cut")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--doc-len", type=int, default=128, help="training truncation")
    parser.add_argument(
        "--eval-len", type=int, default=None, help="evaluation truncation (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--output", type=Path, default=OUT / "batch_size.json")
    return parse_args(parser, QUICK)


def main() -> None:
    """Train and evaluate each arm; print a table, write JSON."""
    args = arguments()
    data = quick_scifact(args.output.parent) if args.quick else SCIFACT
    test = load_eval_set(data, "test", skip_bad=False)
    results = []
    for name in args.arms.split(","):
        arm = (QUICK_ARMS | ARMS)[name]
        model, seconds = train_arm(arm, args.steps, args.lr, args.doc_len, args.seed, data)
        if args.eval_len is not None:
            model.max_seq_length = args.eval_len
        report = evaluate_split(model, test, EvalConfig(), show_progress=False)
        row = {"arm": name, "batch": arm.batch, "train_s": round(seconds, 1), **report.metrics}
        results.append(row)
        print(json.dumps(row), flush=True)
    print("\n| arm | batch | train s | nDCG@10 | Recall@100 |\n| --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['arm']} | {r['batch']} | {r['train_s']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.output.write_text(json.dumps({"args": record, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
