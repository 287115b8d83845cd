"""Input errors that name the file, line and field, and a counter for ``--skip-bad``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("dualforge.data")


class DataError(ValueError):
    """A bad record: ``str()`` reads like ``corpus.jsonl:17: field '_id': missing``.

    Attributes:
        path: The file.
        line: 1-based line number, or None.
        field: The offending field, or None.
        reason: What is wrong.
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, reason: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {reason}" if field else reason
        super().__init__(f"{where}: {what}")


@dataclass
class BadRecords:
    """Raise on the first bad record, or (``skip=True``) count and skip them.

    Attributes:
        skip: Skip instead of raising.
        count: Records skipped so far.
        first: The first skipped error, kept for the warning.
    """

    skip: bool = False
    count: int = 0
    first: list[DataError] = field(default_factory=list)

    def handle(self, error: DataError) -> None:
        """Raise ``error``, or count it when skipping."""
        if not self.skip:
            raise error
        self.count += 1
        if not self.first:
            self.first.append(error)

    def report(self, what: str) -> None:
        """Log one warning with the total, if anything was skipped."""
        if self.count:
            logger.warning("skipped %d bad %s (first: %s)", self.count, what, self.first[0])
