"""Texts to embed, with ids: a ``.txt`` file (one text per line) or a JSONL corpus."""

from __future__ import annotations

import json
from pathlib import Path

from dualforge.data.errors import DataError


def read_texts(path: str | Path) -> tuple[list[str], list[str]]:
    """Ids and texts of a file; blank lines are skipped.

    A ``.jsonl`` file holds one ``{"_id": ..., "title": ..., "text": ...}`` object per line (id
    defaults to the line number; title and text are joined like ``Document.full_text``); any
    other file holds one text per line, whose id is its line number.

    Args:
        path: The file.

    Returns:
        ``(ids, texts)``, in file order.

    Raises:
        DataError: For a JSONL line that is not JSON or has no string ``text`` (file and line).
    """
    path = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                ids.append(str(n))
                texts.append(line.rstrip("\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, n, None, f"invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(path, n, None, "field 'text' missing or not a string")
            ids.append(str(record.get("_id", n)))
            texts.append(
                " ".join(x for x in (record.get("title") or "", record["text"]) if x).strip()
            )
    return ids, texts
