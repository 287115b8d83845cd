"""Which columns of a Hugging Face dataset hold each part of an example, and rows parsed.

:func:`hf_columns` detects (or maps) the query, positive, negative and id columns by the names
:mod:`dualforge.data.hf` lists; :func:`parse_row` turns one row into a :class:`TrainingExample`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualforge.data.errors import DataError
from dualforge.data.examples import NEGATIVE_KEYS, POSITIVE_KEYS, TrainingExample
from dualforge.data.scores import NEGATIVE_SCORES, POSITIVE_SCORES, SCORES, read_scores

QUERY_COLUMNS = ("anchor", "query", "question")
DETECTED: dict[str, tuple[str, ...]] = {
    "query": QUERY_COLUMNS,
    "positive": POSITIVE_KEYS,
    "negative": NEGATIVE_KEYS,
    "query_id": ("query_id",),
    "positive_id": ("positive_id", "positive_ids"),
    "negative_id": ("negative_id", "negative_ids"),
    SCORES: (SCORES,),
    POSITIVE_SCORES: (POSITIVE_SCORES,),
    NEGATIVE_SCORES: (NEGATIVE_SCORES,),
}
"""Column names detected per role (``negative_1..n`` are detected as well)."""
ROLES = tuple(DETECTED)
_NUMBERED = re.compile(r"negative_(\d+)")
ColumnMap = Mapping[str, str | Sequence[str]]


class RowError(DataError):
    """A bad value in one row, e.g. ``train.parquet:row 3: column 'positive': empty``.

    Attributes:
        row: 0-based index of the row in the dataset (``dataset[row]``); ``line`` is None.
    """

    def __init__(self, path: str | Path, row: int, column: str | None, message: str) -> None:
        """Build the error for ``column`` (or None) of 0-based ``row`` of ``path``."""
        super().__init__(path, None, column, message)
        self.row = row
        what = f"column '{column}': {message}" if column else message
        self.args = (f"{self.path}:row {row}: {what}",)

    def __reduce__(self) -> tuple[type[RowError], tuple[str, int, str | None, str]]:
        """Pickle support (the constructor does not take the formatted message)."""
        return (type(self), (self.path, self.row, self.field, self.message))


@dataclass(frozen=True)
class HfColumns:
    """Which dataset columns hold each part of a :class:`TrainingExample`.

    Attributes:
        query: The query text column.
        positive: The positive column (string or list of strings).
        negatives: Negative columns, in order (strings or lists); empty for none.
        query_id: The query id column, or None.
        positive_id: Ids aligned with the positives, or None.
        negative_id: Ids aligned with all the negatives of a row, or None.
        scores: Teacher scores aligned with ``[positive] + negatives`` (one positive), or None.
        pos_scores: Teacher scores aligned with the positives, or None.
        neg_scores: Teacher scores aligned with all the negatives of a row, or None.
    """

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    query_id: str | None = None
    positive_id: str | None = None
    negative_id: str | None = None
    scores: str | None = None
    pos_scores: str | None = None
    neg_scores: str | None = None

    def names(self) -> list[str]:
        """Every column read, without repeats."""
        ids = (self.query_id, self.positive_id, self.negative_id, *self.score_columns().values())
        named = [self.query, self.positive, *self.negatives, *(c for c in ids if c)]
        return list(dict.fromkeys(named))

    def score_columns(self) -> dict[str, str | None]:
        """Where each teacher-score layout is read (:func:`~dualforge.data.scores.read_scores`)."""
        return {SCORES: self.scores, POSITIVE_SCORES: self.pos_scores,
                NEGATIVE_SCORES: self.neg_scores}  # fmt: skip


def _detect(names: Sequence[str], role: str, path: str, required: bool) -> str | None:
    """The one column of ``names`` that plays ``role`` (None if none and not required)."""
    present = [c for c in DETECTED[role] if c in names]
    if len(present) > 1:
        message = f"columns {present} all name the {role}; pick one with columns={{'{role}': ...}}"
        raise DataError(path, None, None, message)
    if not present and required:
        raise DataError(
            path, None, None,
            f"no {role} column: expected one of {list(DETECTED[role])} (or map one with "
            f"columns={{'{role}': ...}}); the dataset has columns {list(names)}",
        )  # fmt: skip
    return present[0] if present else None


def _detect_negatives(names: Sequence[str], path: str) -> tuple[str, ...]:
    """``negative`` (or an alias), or ``negative_1..n`` in numeric order, or none."""
    single = _detect(names, "negative", path, required=False)
    numbered = sorted(
        (c for c in names if _NUMBERED.fullmatch(c)), key=lambda c: int(c.split("_")[1])
    )
    if single and numbered:
        message = f"columns {single!r} and {numbered} both hold negatives; map them with columns"
        raise DataError(path, None, None, message)
    return (single,) if single else tuple(numbered)


def _mapped(names: Sequence[str], columns: ColumnMap, path: str) -> HfColumns:
    """The columns a ``columns=`` mapping names, each checked against the dataset."""
    chosen = {r: (c,) if isinstance(c, str) else tuple(c) for r, c in columns.items()}
    problems = [f"unknown role {r!r} (use {list(ROLES)})" for r in chosen if r not in ROLES]
    problems += [f"no {r!r} column given" for r in ("query", "positive") if r not in chosen]
    problems += [
        f"{r!r} needs one column name"
        for r, cs in chosen.items()
        if len(cs) != 1 and r != "negative"
    ]
    problems += [
        f"{r!r} names column {c!r}; the dataset has columns {list(names)}"
        for r, cs in chosen.items() for c in cs if c not in names
    ]  # fmt: skip
    if problems:
        raise DataError(path, None, None, f"columns: {problems[0]}")
    one = {role: cs[0] for role, cs in chosen.items() if role != "negative"}
    return HfColumns(
        one["query"], one["positive"], chosen.get("negative", ()),
        one.get("query_id"), one.get("positive_id"), one.get("negative_id"),
        one.get(SCORES), one.get(POSITIVE_SCORES), one.get(NEGATIVE_SCORES),
    )  # fmt: skip


def hf_columns(
    names: Sequence[str], columns: ColumnMap | None = None, path: str | Path = "dataset"
) -> HfColumns:
    """Find the query, positive, negative and id columns among a dataset's column names.

    Args:
        names: The dataset's column names.
        columns: Role -> column name (``query``, ``positive``, ``negative`` (a name or a list
            of names), ``query_id``, ``positive_id``, ``negative_id``); when given it replaces
            detection: ``query`` and ``positive`` are required, roles left out are not read.
        path: The dataset (for errors).

    Returns:
        The columns to read.

    Raises:
        DataError: A required column is missing (the expected names and the dataset's columns
            are listed), two columns claim one role, or the mapping is invalid.
    """
    where = str(path)
    if columns is not None:
        return _mapped(names, columns, where)
    query = _detect(names, "query", where, required=True)
    positive = _detect(names, "positive", where, required=True)
    assert query is not None and positive is not None  # required=True raised otherwise
    return HfColumns(
        query, positive, _detect_negatives(names, where),
        _detect(names, "query_id", where, False), _detect(names, "positive_id", where, False),
        _detect(names, "negative_id", where, False), _detect(names, SCORES, where, False),
        _detect(names, POSITIVE_SCORES, where, False), _detect(names, NEGATIVE_SCORES, where, False),
    )  # fmt: skip


def _text(value: Any, where: tuple[str, int, str], item: int | None = None) -> str:
    """``value`` if it is a non-empty string; else a :class:`RowError` saying what it is."""
    if isinstance(value, str) and value.strip():
        return value
    if value is None:
        problem = "missing (null)"
    elif isinstance(value, str):
        problem = "empty"
    else:
        problem = f"expected a string, got {type(value).__name__}"
    raise RowError(*where, problem if item is None else f"item {item}: {problem}")


def _texts(value: Any, where: tuple[str, int, str], negatives: bool) -> tuple[str, ...]:
    """A string or a list of strings, as a tuple; for negatives null and ``[]`` mean none."""
    if value is None and negatives:
        return ()
    if not isinstance(value, list):
        return (_text(value, where),)
    if not value and not negatives:
        raise RowError(*where, "empty list")
    return tuple(_text(x, where, j) for j, x in enumerate(value))


def _ids(row: Mapping[str, Any], column: str | None, texts: int, at: tuple[str, int]) -> list[str]:
    """The ids in ``column`` (strings or integers, aligned with ``texts`` texts; null: none)."""
    value = None if column is None else row[column]
    if value is None:
        return []
    assert column is not None  # a value came from it
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in items):
        raise RowError(*at, column, "expected a string or integer id, or a list of them")
    if len(items) != texts:
        raise RowError(*at, column, f"{len(items)} ids for {texts} texts")
    return [str(x) for x in items]


def parse_row(row: Mapping[str, Any], cols: HfColumns, path: str, n: int) -> TrainingExample:
    """Build a :class:`TrainingExample` from one dataset row.

    A null negative (or id) means none, as a key missing from a JSONL record does; a null,
    empty or non-string query or positive is an error.

    Args:
        row: Column name -> value (at least ``cols.names()``).
        cols: Which columns to read.
        path: The dataset (for errors).
        n: The 0-based row index (for errors).

    Returns:
        The example.

    Raises:
        RowError: A bad value (the row and column are named).
    """
    query = _text(row[cols.query], (path, n, cols.query))
    positives = _texts(row[cols.positive], (path, n, cols.positive), negatives=False)
    negatives = tuple(
        text for c in cols.negatives for text in _texts(row[c], (path, n, c), negatives=True)
    )
    qid = _ids(row, cols.query_id, 1, (path, n))
    pos_ids = _ids(row, cols.positive_id, len(positives), (path, n))
    neg_ids = _ids(row, cols.negative_id, len(negatives), (path, n))
    pos_scores, neg_scores = read_scores(
        row, cols.score_columns(), (len(positives), len(negatives)),
        lambda column, message: RowError(path, n, column, message),
    )  # fmt: skip
    return TrainingExample(
        query, positives, negatives, qid[0] if qid else None, tuple(pos_ids), tuple(neg_ids),
        pos_scores, neg_scores,
    )  # fmt: skip
