"""``dualforge encode``: embed a file of texts to a ``.npy`` matrix (plus an ids file)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dualforge.data import DataError, read_texts
from dualforge.errors import UsageError
from dualforge.hardware import resolve_device
from dualforge.modeling import load_model


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("encode", help="embed texts to a .npy file")
    p.add_argument("--model", default="minilm")
    p.add_argument(
        "--input", required=True, help=".txt (one text per line) or .jsonl (_id/title/text)"
    )
    p.add_argument("--side", choices=("query", "document"), default="document")
    p.add_argument("--output", required=True, help="output .npy; ids go to <output>.ids.txt")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--dim", type=int, default=None, help="keep only the first DIM dims (Matryoshka)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Encode and save."""
    model = load_model(args.model).to(resolve_device(args.device, "--device"))
    try:
        ids, texts = read_texts(args.input)
    except DataError as err:
        raise UsageError(str(err)) from None
    emb = model.encode(texts, side=args.side, batch_size=args.batch_size, show_progress=True)
    if args.dim:
        emb = emb[:, : args.dim]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb)
    out.with_suffix(".ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {out}")
    return 0
