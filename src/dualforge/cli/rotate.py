"""``dualforge rotate``: rotate a model's output onto its principal axes (for truncation).

The saved model gives the same full-dimension scores as the input model, while its leading
coordinates carry the most of each vector, so truncated prefixes lose much less (see
:mod:`dualforge.modeling.rotation`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dualforge.cli.flags import check_new_folder
from dualforge.data import DataError, read_texts
from dualforge.errors import UsageError
from dualforge.files import atomic_folder
from dualforge.modeling import load_model, save_model
from dualforge.modeling.rotation import rotate_model, sample_texts


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser(
        "rotate", help="rotate a model onto the principal axes of its document vectors"
    )
    p.add_argument("--model", default="minilm", help="model to rotate")
    p.add_argument(
        "--input", required=True, help="documents: .txt (one per line) or .jsonl (_id/title/text)"
    )
    p.add_argument("--output", required=True, help="folder for the rotated model")
    p.add_argument("--docs", type=int, default=2048, help="documents sampled to fit the axes")
    p.add_argument("--seed", type=int, default=0, help="seed of the document sample")
    p.add_argument("--center", action="store_true", help="subtract the mean (covariance axes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sample documents, fit the rotation, save the rotated model."""
    if args.docs < 2:
        raise UsageError(f"--docs must be at least 2, got {args.docs}")
    try:
        _, texts = read_texts(args.input)
    except DataError as err:
        raise UsageError(str(err)) from None
    if len(texts) < 2:
        raise UsageError(f"{args.input}: need at least 2 documents, found {len(texts)}")
    check_new_folder(Path(args.output), "--output")
    sample = sample_texts(texts, args.docs, args.seed)
    model = load_model(args.model)
    rotate_model(
        model,
        sample,
        center=args.center,
        batch_size=args.batch_size,
        show_progress=True,
    )
    with atomic_folder(args.output) as tmp:
        save_model(model, tmp)
    print(
        f"rotated {args.model} on {len(sample)} documents of {args.input}; saved to {args.output}"
    )
    return 0
