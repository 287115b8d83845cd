"""DataError formatting and the skip-and-count mechanism."""

from __future__ import annotations

import logging
import pickle

import pytest

from dualforge.data import BadRecordCounter, DataError


def test_message_names_file_line_and_field() -> None:
    err = DataError("data/corpus.jsonl", 17, "_id", "missing")
    assert str(err) == "data/corpus.jsonl:17: field '_id': missing"
    assert (err.path, err.line, err.field, err.message) == (
        "data/corpus.jsonl",
        17,
        "_id",
        "missing",
    )
    assert isinstance(err, ValueError)


def test_message_without_line_or_field() -> None:
    assert str(DataError("q.tsv", None, None, "file not found")) == "q.tsv: file not found"
    assert str(DataError("q.tsv", 3, None, "bad")) == "q.tsv:3: bad"


def test_pickles() -> None:
    err = pickle.loads(pickle.dumps(DataError("a.jsonl", 2, "text", "empty")))
    assert str(err) == "a.jsonl:2: field 'text': empty" and err.field == "text"


def test_counter_raises_unless_skipping(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DataError):
        BadRecordCounter().handle(DataError("f", 1, None, "x"))
    counter = BadRecordCounter(skip=True)
    for n in range(3):
        counter.handle(DataError("f", n + 1, None, "x"))
    assert counter.count == 3 and counter.first is not None and counter.first.line == 1
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        counter.report("records in f")
        counter.report("records in f", since=3)  # nothing new: no second warning
    assert [r.getMessage() for r in caplog.records] == [
        "skipped 3 bad records in f (first: f:1: x)"
    ]
