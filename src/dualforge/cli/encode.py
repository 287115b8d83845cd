"""``dualforge encode``: embed a file of texts to a ``.npy`` matrix (plus an ids file)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dualforge.cli.flags import check_prefix_dims, retrieval_kind
from dualforge.data import DataError, read_texts
from dualforge.errors import UsageError
from dualforge.files import write_text_atomic
from dualforge.hardware import resolve_device
from dualforge.modeling import resolve_model_path
from dualforge.modeling.names import check_model_name


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
    """Check the arguments, encode and save (the ``.npy`` appears whole, last)."""
    check_model_name(args.model)
    kind = retrieval_kind(args.model)
    if kind.tokens:
        raise UsageError(
            f"--model {args.model}: a late-interaction model encodes texts as token matrices, "
            f"not one vector each; search with it: dualforge search --model {args.model} ..."
        )
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    try:
        ids, texts = read_texts(args.input)
    except DataError as err:
        raise UsageError(str(err)) from None
    model = kind.load(resolve_model_path(args.model)).to(resolve_device(args.device, "--device"))
    if args.dim is not None:
        check_prefix_dims("--dim", [args.dim], model.dim)
    emb = kind.encode(model, texts, args.side, args.batch_size, show_progress=True).one_per_text()
    if args.dim:
        emb = emb[:, : args.dim]
    out = Path(args.output)
    write_text_atomic(out.with_suffix(".ids.txt"), "\n".join(ids) + "\n")
    tmp = out.with_name(f".tmp-{out.name}")
    with open(tmp, "wb") as fh:
        np.save(fh, emb)
    tmp.replace(out)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {out}")
    return 0
