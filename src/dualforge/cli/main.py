"""The ``dualforge`` command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dualforge.cli import (
    check_grad,
    classify,
    encode,
    eval,
    export,
    rotate,
    search,
    train,
    validate,
)

SUBCOMMANDS = (train, eval, search, classify, encode, export, rotate, check_grad, validate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dualforge",
        description="Train and evaluate dual encoders with Gradient Cache.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen subcommand."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
