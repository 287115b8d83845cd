"""Teacher scores stored with training examples, read the same way from JSONL and Hugging Face.

Two layouts: ``scores``, one number per candidate ``[positive] + negatives`` (one positive), or
FlagEmbedding's ``pos_scores`` / ``neg_scores``, aligned with the positives and the negatives.
A record whose score count does not match its candidates is an error naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

SCORES = "scores"
POSITIVE_SCORES = "pos_scores"
NEGATIVE_SCORES = "neg_scores"
SCORE_KEYS = (SCORES, POSITIVE_SCORES, NEGATIVE_SCORES)

Fail = Callable[[str, str], Exception]
"""``fail(field, message)``: the error to raise for a bad field (file:line or path:row)."""
Scores = tuple[tuple[float, ...], tuple[float, ...]]


def numbers(value: Any, key: str, fail: Fail) -> tuple[float, ...]:
    """A list of finite numbers (a bare number counts as a list of one)."""
    items = value if isinstance(value, list) else [value]
    for j, x in enumerate(items):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise fail(key, f"item {j}: expected a finite number, got {x!r}")
    return tuple(float(x) for x in items)


def read_scores(
    record: Mapping[str, Any],
    keys: Mapping[str, str | None],
    counts: tuple[int, int],
    fail: Fail,
) -> Scores:
    """``(positive_scores, negative_scores)`` of one record (both empty when it has none).

    Args:
        record: The record (a JSONL object or a dataset row).
        keys: Where each of :data:`SCORES`, :data:`POSITIVE_SCORES` and :data:`NEGATIVE_SCORES`
            is read (None: not read; a missing or null value means none).
        counts: Number of positives and negatives of the record.
        fail: Builds the error naming the field.

    Raises:
        Exception: From ``fail``: both layouts given, a count that does not match the
            candidates, or a value that is not a number.
    """
    given = {
        role: key for role, key in keys.items() if key is not None and record.get(key) is not None
    }
    if SCORES in given and len(given) > 1:
        raise fail(given[SCORES], f"give {SCORES!r} or {POSITIVE_SCORES!r}/{NEGATIVE_SCORES!r}")
    if SCORES in given:
        return _one_list(numbers(record[given[SCORES]], given[SCORES], fail), given[SCORES],
                         counts, fail)  # fmt: skip
    if not given:
        return (), ()
    out: list[tuple[float, ...]] = []
    for role, count, what in ((POSITIVE_SCORES, counts[0], "positive"),
                              (NEGATIVE_SCORES, counts[1], "negative")):  # fmt: skip
        key = keys.get(role)
        value = record.get(key) if key is not None else None
        got = numbers(value, key or role, fail) if value is not None else ()
        if len(got) != count:
            raise fail(key or role, f"{len(got)} scores for {count} {what}(s)")
        out.append(got)
    return out[0], out[1]


def _one_list(values: tuple[float, ...], key: str, counts: tuple[int, int], fail: Fail) -> Scores:
    """``scores`` aligned with ``[positive] + negatives``, split into the two sides."""
    if counts[0] != 1:
        raise fail(key, f"needs one positive (there are {counts[0]}); give pos_scores/neg_scores")
    if len(values) != 1 + counts[1]:
        raise fail(key, f"{len(values)} scores for 1 positive + {counts[1]} negative(s)")
    return values[:1], values[1:]
