"""Line-by-line readers shared by the loaders: numbered UTF-8 lines, JSON objects, TSV rows.

Files are read in binary and decoded one line at a time, so a large file streams, a line that is
not valid UTF-8 becomes a bad record with its line number, and only ``\\n`` ends a line (a JSON
string may legally hold U+2028 and friends).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dualforge.data.errors import BadRecordCounter, DataError

_BOM = "\ufeff"


def open_checked(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading.

    Args:
        path: The file.

    Returns:
        The open binary file.

    Raises:
        DataError: The file does not exist or is not a regular file.
    """
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    return open(path, "rb")


def iter_lines(path: Path, counter: BadRecordCounter) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for every non-blank line, without its line ending.

    Args:
        path: The file.
        counter: Where undecodable lines go.

    Yields:
        The 1-based line number and the decoded line.
    """
    with open_checked(path) as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                counter.handle(DataError(path, n, None, f"not valid UTF-8 ({err.reason})"))
                continue
            if n == 1:
                line = line.removeprefix(_BOM)
            if line.strip():
                yield n, line


def iter_jsonl(path: Path, counter: BadRecordCounter) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line of a JSON Lines file.

    Args:
        path: The file.
        counter: Where malformed lines (bad JSON, or JSON that is not an object) go.

    Yields:
        The 1-based line number and the parsed object.
    """
    for n, line in iter_lines(path, counter):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            counter.handle(
                DataError(path, n, None, f"malformed JSON ({err.msg}, column {err.colno})")
            )
            continue
        if not isinstance(obj, dict):
            counter.handle(DataError(path, n, None, f"expected a JSON object, got {_kind(obj)}"))
            continue
        yield n, obj


def split_columns(
    path: Path, n: int, line: str, names: tuple[str, ...], counter: BadRecordCounter
) -> list[str] | None:
    """Split a TSV line into exactly ``len(names)`` non-empty columns.

    Args:
        path: The file (for errors).
        n: The line number (for errors).
        line: The line, without its ending.
        names: Column names, used as the field of an error.
        counter: Where a bad line goes.

    Returns:
        The columns, or None when the line was bad and skipped.
    """
    cols = line.split("\t")
    if len(cols) != len(names):
        message = f"expected {len(names)} tab-separated columns, got {len(cols)}"
        counter.handle(DataError(path, n, None, message))
        return None
    for name, col in zip(names, cols):
        if not col.strip():
            counter.handle(DataError(path, n, name, "empty"))
            return None
    return cols


def string_field(obj: dict[str, Any], key: str, path: Path, n: int, required: bool = True) -> str:
    """A string-valued field of a JSON object.

    Args:
        obj: The object.
        key: The field.
        path: The file (for errors).
        n: The line number (for errors).
        required: Whether a missing (or null) field is an error; if not, it reads as ``""``.

    Returns:
        The value.

    Raises:
        DataError: The field is missing (when required) or not a string.
    """
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(path, n, key, "missing")
        return ""
    if not isinstance(value, str):
        raise DataError(path, n, key, f"expected a string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    """The JSON name of a parsed value's type."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
