"""``dualforge encode``: embed a file of texts to a ``.npy`` matrix (plus an ids file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

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
        "--dim", type=int, default=None, help="keep only the first DIM dims (Matryoshka)"
    )
    p.set_defaults(func=run)


def read_texts(path: Path) -> tuple[list[str], list[str]]:
    """Ids and texts from a .txt file (ids = line numbers) or a JSONL file (_id, title, text)."""
    ids: list[str] = []
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                ids.append(str(n))
                texts.append(line.rstrip("\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}:{n}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise SystemExit(f"{path}:{n}: field 'text' missing or not a string")
            ids.append(str(record.get("_id", n)))
            texts.append(
                " ".join(x for x in (record.get("title") or "", record["text"]) if x).strip()
            )
    return ids, texts


def run(args: argparse.Namespace) -> int:
    """Encode and save."""
    model = load_model(args.model)
    ids, texts = read_texts(Path(args.input))
    emb = model.encode(texts, side=args.side, batch_size=args.batch_size, show_progress=True)
    if args.dim:
        emb = emb[:, : args.dim]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb)
    out.with_suffix(".ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {out}")
    return 0
