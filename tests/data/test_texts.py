"""Texts to embed: .txt lines and JSONL corpora, with the errors the encode/rotate commands print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualforge.data import DataError, read_texts


def test_txt_ids_are_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("first text\n\n  \nsecond  text\n", encoding="utf-8")
    assert read_texts(path) == (["1", "4"], ["first text", "second  text"])


def test_jsonl_joins_title_and_text(tmp_path: Path) -> None:
    rows = [
        {"_id": "a", "title": "T", "text": "body"},
        {"text": " only "},
        {"title": None, "text": "x"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert read_texts(path) == (["a", "2", "3"], ["T body", "only", "x"])


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", "invalid JSON"), ('{"text": 3}', "field 'text' missing or not a string"),
     ("[1]", "field 'text' missing or not a string")],
)  # fmt: skip
def test_bad_jsonl_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_texts(path)
    assert str(err.value).startswith(f"{path}:2: {message}")
