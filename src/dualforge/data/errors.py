"""Input errors that name the file, line and field, and the counter behind ``skip_bad``.

Every loader in :mod:`dualforge.data` takes ``skip_bad: bool = False``. By default the first bad
record raises a :class:`DataError`; with ``skip_bad=True`` bad records are dropped, counted by a
:class:`BadRecordCounter`, and one ``logging`` warning with the total is emitted when the load
ends. Pass your own counter (``counter=...``) to read the count afterwards; :func:`load_beir`
reports its total in ``BeirDataset.skipped``. Whole-file problems (file not found, missing qrels
header) always raise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dualforge.errors import UserError

logger = logging.getLogger("dualforge.data")


class DataError(UserError, ValueError):
    """A bad input record or file; ``str()`` reads like ``corpus.jsonl:17: field '_id': missing``.

    Attributes:
        path: The file, as given.
        line: 1-based line number, or None when the problem concerns the whole file.
        field: The offending field (JSON key or TSV column name), or None.
        message: What is wrong, without the location.
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        """Build the error.

        Args:
            path: The file.
            line: 1-based line number, or None.
            field: The offending field, or None.
            message: What is wrong.
        """
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")

    def __reduce__(self) -> tuple[type[DataError], tuple[str, int | None, str | None, str]]:
        """Pickle support (the constructor does not take the formatted message)."""
        return (type(self), (self.path, self.line, self.field, self.message))


@dataclass
class BadRecordCounter:
    """Raise on the first bad record, or (``skip=True``) count and skip them.

    Attributes:
        skip: Skip bad records instead of raising.
        count: Records skipped so far.
        first: The first skipped error (quoted in the warning), or None.
    """

    skip: bool = False
    count: int = 0
    first: DataError | None = None

    def handle(self, error: DataError) -> None:
        """Raise ``error``, or count it when skipping.

        Args:
            error: The problem found.

        Raises:
            DataError: ``error`` itself, unless ``skip`` is set.
        """
        if not self.skip:
            raise error
        self.count += 1
        if self.first is None:
            self.first = error

    def report(self, what: str, since: int = 0) -> None:
        """Log one warning with the number skipped since ``since``, if any.

        Args:
            what: What was being loaded, e.g. ``"records in data/scifact"``.
            since: The count before the load began (for a counter shared between loads).
        """
        skipped = self.count - since
        if skipped > 0:
            logger.warning("skipped %d bad %s (first: %s)", skipped, what, self.first)


BadRecords = BadRecordCounter
"""Former name of :class:`BadRecordCounter`, kept as an alias."""


def make_counter(skip_bad: bool, counter: BadRecordCounter | None) -> BadRecordCounter:
    """The counter a loader should use.

    Args:
        skip_bad: The loader's ``skip_bad`` argument.
        counter: A caller's counter (to read the count afterwards), or None.

    Returns:
        ``counter`` (its ``skip`` switched on when ``skip_bad`` is true), or a new counter.
    """
    if counter is None:
        return BadRecordCounter(skip=skip_bad)
    if skip_bad:
        counter.skip = True
    return counter
