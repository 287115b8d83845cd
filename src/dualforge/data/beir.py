"""BEIR folders: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``; streamed line by line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualforge.data.errors import BadRecords, DataError

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class Document:
    """A corpus entry."""

    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and text joined by a space (just the text when there is no title)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR folder; ``skipped`` counts records dropped under ``skip_bad``."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped: int = 0

    def split_queries(self) -> dict[str, str]:
        """Queries that have judgments in this split."""
        return {q: self.queries[q] for q in self.qrels if q in self.queries}


def iter_jsonl(path: Path, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line; malformed lines go to ``bad``."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                bad.handle(DataError(path, n, None, f"malformed JSON ({err.msg})"))
                continue
            if not isinstance(obj, dict):
                bad.handle(DataError(path, n, None, "expected a JSON object"))
                continue
            yield n, obj


def _string(obj: dict[str, Any], key: str, path: Path, n: int, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise DataError(path, n, key, "missing")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(path, n, key, f"expected a string, got {type(value).__name__}")
    return str(value)


def iter_records(path: Path, bad: BadRecords, with_title: bool) -> Iterator[tuple[int, str, str, str]]:
    """``(line, id, title, text)`` of a corpus or queries file, validating each record."""
    for n, obj in iter_jsonl(path, bad):
        try:
            rid = _string(obj, "_id", path, n)
            text = _string(obj, "text", path, n)
            title = _string(obj, "title", path, n, required=False) if with_title else ""
            if not rid.strip():
                raise DataError(path, n, "_id", "empty")
            if not text.strip() and not title.strip():
                raise DataError(path, n, "text", "empty")
        except DataError as err:
            bad.handle(err)
            continue
        yield n, rid, title, text


def load_corpus(path: str | Path, skip_bad: bool = False, bad: BadRecords | None = None) -> dict[str, Document]:
    """``corpus.jsonl`` as ``{id: Document}``; duplicate ids are errors."""
    path, bad = Path(path), bad or BadRecords(skip_bad)
    corpus: dict[str, Document] = {}
    for n, rid, title, text in iter_records(path, bad, with_title=True):
        if rid in corpus:
            bad.handle(DataError(path, n, "_id", f"duplicate id {rid!r}"))
            continue
        corpus[rid] = Document(rid, title, text)
    return corpus


def load_queries(path: str | Path, skip_bad: bool = False, bad: BadRecords | None = None) -> dict[str, str]:
    """``queries.jsonl`` as ``{id: text}``; duplicate ids are errors."""
    path, bad = Path(path), bad or BadRecords(skip_bad)
    queries: dict[str, str] = {}
    for n, rid, _, text in iter_records(path, bad, with_title=False):
        if rid in queries:
            bad.handle(DataError(path, n, "_id", f"duplicate id {rid!r}"))
            continue
        queries[rid] = text
    return queries


def iter_qrels(path: Path, bad: BadRecords) -> Iterator[tuple[int, str, str, int]]:
    """``(line, query_id, corpus_id, score)`` rows of a qrels TSV with its header."""
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if tuple(h.strip() for h in header) != QRELS_HEADER:
            expected = "\t".join(QRELS_HEADER)
            raise DataError(path, 1, None, f"missing header {expected!r}, got {header!r}")
        for n, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3:
                bad.handle(DataError(path, n, None, f"expected 3 tab-separated columns, got {len(cols)}"))
                continue
            try:
                score = int(cols[2])
            except ValueError:
                bad.handle(DataError(path, n, "score", f"not an integer: {cols[2]!r}"))
                continue
            yield n, cols[0], cols[1], score


def load_qrels(path: str | Path, skip_bad: bool = False, bad: BadRecords | None = None) -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv`` as ``{query_id: {doc_id: score}}``."""
    path, bad = Path(path), bad or BadRecords(skip_bad)
    qrels: dict[str, dict[str, int]] = {}
    for _, qid, did, score in iter_qrels(path, bad):
        qrels.setdefault(qid, {})[did] = score
    return qrels


def available_splits(folder: str | Path) -> list[str]:
    """Names of the qrels files in a BEIR folder (``train``, ``test``, ...)."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def load_beir(folder: str | Path, split: str, skip_bad: bool = False) -> BeirDataset:
    """Corpus, queries and one split's qrels, with every qrels id checked against them."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for needed in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not needed.is_file():
            splits = available_splits(folder) if folder.is_dir() else []
            raise DataError(needed, None, None, f"file not found (splits here: {splits})")
    bad = BadRecords(skip_bad)
    corpus = load_corpus(folder / "corpus.jsonl", bad=bad)
    queries = load_queries(folder / "queries.jsonl", bad=bad)
    qrels: dict[str, dict[str, int]] = {}
    for n, qid, did, score in iter_qrels(qrels_path, bad):
        if qid not in queries:
            bad.handle(DataError(qrels_path, n, "query-id", f"{qid!r} not in queries.jsonl"))
        elif did not in corpus:
            bad.handle(DataError(qrels_path, n, "corpus-id", f"{did!r} not in corpus.jsonl"))
        else:
            qrels.setdefault(qid, {})[did] = score
    bad.report(f"records in {folder}")
    return BeirDataset(corpus, queries, qrels, bad.count)
