"""``dualforge check-grad``: compare GradCache gradients with a plain backward on one batch."""

from __future__ import annotations

import argparse

from dualforge.train.check_grad import check_gradients


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("check-grad", help="cached vs plain gradients on one batch")
    p.add_argument("--model", default="minilm", help="model name or folder (default: minilm)")
    p.add_argument("--batch", type=int, default=32, help="queries per batch")
    p.add_argument("--chunk", type=int, default=8, help="GradCache chunk size")
    p.add_argument("--max-len", type=int, default=32, help="longest random sequence")
    p.add_argument("--no-dropout", action="store_true", help="eval mode; reference = full batch")
    p.add_argument("--sort-by-length", action="store_true", help="length-sorted chunks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-5, help="fail above this relative diff")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the differences; exit status 1 when the relative difference exceeds the tolerance."""
    result = check_gradients(
        args.model,
        args.batch,
        args.chunk,
        dropout=not args.no_dropout,
        max_len=args.max_len,
        sort_by_length=args.sort_by_length,
        seed=args.seed,
    )
    print(f"reference: {result.reference}")
    print(f"loss cached {result.loss_cached:.8f}  plain {result.loss_plain:.8f}")
    print(f"max abs grad diff: {result.diff.max_abs:.3e}")
    print(f"max rel grad diff: {result.diff.max_rel:.3e}  (worst: {result.diff.worst})")
    print(f"time cached {result.seconds_cached:.2f}s  plain {result.seconds_plain:.2f}s")
    ok = result.diff.max_rel <= args.tolerance
    print("OK" if ok else f"FAIL: relative difference above {args.tolerance:g}")
    return 0 if ok else 1
