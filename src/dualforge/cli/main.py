"""The ``dualforge`` command: one subcommand per module in this package.

User errors (:class:`~dualforge.errors.UserError`: a bad config value, a bad data record, a model
that cannot be loaded, a run stopped by a full disk or a NaN loss; or a missing file) print one
line ``error: <message>`` on stderr and exit with status 2; Ctrl-C prints one line too and exits
with 130. Any other exception keeps its traceback. ``dualforge --debug ...`` shows the traceback
of every error.
"""

from __future__ import annotations

import argparse
import errno
import os
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
from dualforge.errors import UserError

SUBCOMMANDS = (train, eval, search, classify, encode, export, rotate, check_grad, validate)
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dualforge",
        description="Train and evaluate dual encoders with Gradient Cache.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of every error, user errors too"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen subcommand.

    Returns:
        The subcommand's status, or 2 after a user error (printed as one line on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except (UserError, FileNotFoundError) as err:
        if args.debug:
            raise
        print(f"error{rank_tag()}: {error_line(err)}", file=sys.stderr)
        return err.status if isinstance(err, UserError) else USER_ERROR_STATUS
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"error{rank_tag()}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    except OSError as err:
        if args.debug or err.errno not in NO_SPACE:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error{rank_tag()}: {where}no space left on the device", file=sys.stderr)
        return USER_ERROR_STATUS
    return status


def rank_tag() -> str:
    """`` (rank R of W)`` under torchrun with several processes, else empty."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f" (rank {rank} of {world})" if world not in ("", "1") else ""


def error_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a missing file: ``<file>: <what>``)."""
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or 'not found'}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
