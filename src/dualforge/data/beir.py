"""BEIR folders: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``, streamed by line.

Checks made on every record (each failure is a :class:`DataError` naming file, line and field,
or a skipped and counted record under ``skip_bad=True``): malformed JSON, a line that is not a
JSON object, missing or empty ``_id``, non-string ``_id``/``title``/``text``, empty text (an
empty title is fine; empty text *and* title is not), duplicate ids; in qrels a missing header
(always raised), a wrong column count, an empty column, a non-integer score and a repeated
(query, document) pair. :func:`load_beir` also checks that every qrels id exists in
``queries.jsonl`` and ``corpus.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from dualforge.data.errors import BadRecordCounter, DataError, make_counter
from dualforge.data.lines import iter_jsonl, iter_lines, split_columns, string_field

QRELS_HEADER = ("query-id", "corpus-id", "score")
_HEADER_TEXT = "\t".join(QRELS_HEADER)


@dataclass(frozen=True)
class Document:
    """A corpus entry.

    Attributes:
        id: The ``_id``.
        title: The title (may be empty).
        text: The body text.
    """

    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and text joined by a space and stripped (just the text when there is no title)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


class QrelsRow(NamedTuple):
    """One judgment of a qrels file, with its 1-based line number."""

    line: int
    query_id: str
    corpus_id: str
    score: int


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR folder's corpus and queries with one split's judgments.

    Attributes:
        corpus: ``{doc_id: Document}``.
        queries: ``{query_id: text}``, all queries of the folder (see :meth:`split_queries`).
        qrels: ``{query_id: {doc_id: score}}`` of the split, score-0 rows included.
        skipped: Records dropped under ``skip_bad=True`` (0 otherwise).
    """

    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped: int = 0

    def split_queries(self) -> dict[str, str]:
        """The queries that have judgments in this split, in qrels order."""
        return {q: self.queries[q] for q in self.qrels if q in self.queries}


def _records(
    path: Path, counter: BadRecordCounter, with_title: bool
) -> Iterator[tuple[int, str, str, str]]:
    """``(line, id, title, text)`` of each valid record of a corpus or queries file."""
    for n, obj in iter_jsonl(path, counter):
        try:
            rid = string_field(obj, "_id", path, n)
            text = string_field(obj, "text", path, n)
            title = string_field(obj, "title", path, n, required=False) if with_title else ""
            if not rid.strip():
                raise DataError(path, n, "_id", "empty")
            if not text.strip() and not title.strip():
                raise DataError(path, n, "text", "empty" + (" (and so is the title)" * with_title))
        except DataError as err:
            counter.handle(err)
            continue
        yield n, rid, title, text


def iter_corpus(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> Iterator[Document]:
    """Stream the documents of a ``corpus.jsonl`` (duplicate ids are checked by the loaders).

    Args:
        path: The file.
        skip_bad: Skip and count bad records instead of raising.
        counter: Optional counter to read the number skipped from.

    Yields:
        Each valid document, in file order.

    Raises:
        DataError: On the first bad record, unless ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    for _, rid, title, text in _records(path, counter, with_title=True):
        yield Document(rid, title, text)
    counter.report(f"records in {path}", start)


def _unique(
    path: Path, counter: BadRecordCounter, records: Iterator[tuple[int, str, str, str]]
) -> dict[str, tuple[str, str]]:
    """``{id: (title, text)}``; a repeated id is a bad record (the first one is kept)."""
    out: dict[str, tuple[str, str]] = {}
    for n, rid, title, text in records:
        if rid in out:
            counter.handle(DataError(path, n, "_id", f"duplicate id {rid!r}"))
            continue
        out[rid] = (title, text)
    return out


def _read_corpus(path: Path, counter: BadRecordCounter) -> dict[str, Document]:
    records = _non_empty(path, _unique(path, counter, _records(path, counter, with_title=True)))
    return {rid: Document(rid, title, text) for rid, (title, text) in records.items()}


def _read_queries(path: Path, counter: BadRecordCounter) -> dict[str, str]:
    records = _non_empty(path, _unique(path, counter, _records(path, counter, with_title=False)))
    return {rid: text for rid, (_, text) in records.items()}


def _non_empty(path: Path, records: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """``records``, unless there are none: an empty file is its own error, not a missing id."""
    if not records:
        raise DataError(path, None, None, "no records (the file is empty, or every line was bad)")
    return records


def load_corpus(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> dict[str, Document]:
    """Load a ``corpus.jsonl`` as ``{id: Document}``; duplicate ids are bad records.

    Args:
        path: The file.
        skip_bad: Skip and count bad records instead of raising.
        counter: Optional counter to read the number skipped from.

    Returns:
        The documents, in file order.

    Raises:
        DataError: On the first bad record, unless ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    corpus = _read_corpus(path, counter)
    counter.report(f"records in {path}", start)
    return corpus


def corpus_file(path: str | Path) -> Path:
    """A ``corpus.jsonl`` given as the file itself or as a BEIR folder holding one."""
    where = Path(path)
    return where / "corpus.jsonl" if where.is_dir() else where


def load_queries(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> dict[str, str]:
    """Load a ``queries.jsonl`` as ``{id: text}``; duplicate ids are bad records.

    Args:
        path: The file.
        skip_bad: Skip and count bad records instead of raising.
        counter: Optional counter to read the number skipped from.

    Returns:
        The queries, in file order.

    Raises:
        DataError: On the first bad record, unless ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    queries = _read_queries(path, counter)
    counter.report(f"records in {path}", start)
    return queries


def _qrels_rows(path: Path, counter: BadRecordCounter) -> Iterator[QrelsRow]:
    """Valid rows of a qrels TSV; the first non-blank line must be the header."""
    lines = iter_lines(path, counter)
    first = next(lines, None)
    if first is None or tuple(h.strip().lower() for h in first[1].split("\t")) != QRELS_HEADER:
        got = "an empty file" if first is None else repr(first[1])
        line = 1 if first is None else first[0]
        raise DataError(path, line, None, f"missing header {_HEADER_TEXT!r}, got {got}")
    seen: set[tuple[str, str]] = set()
    for n, line_text in lines:
        cols = split_columns(path, n, line_text, QRELS_HEADER, counter)
        if cols is None:
            continue
        try:
            score = int(cols[2])
        except ValueError:
            counter.handle(DataError(path, n, "score", f"not an integer: {cols[2]!r}"))
            continue
        if (cols[0], cols[1]) in seen:
            counter.handle(
                DataError(path, n, "corpus-id", f"duplicate pair {cols[0]!r}, {cols[1]!r}")
            )
            continue
        seen.add((cols[0], cols[1]))
        yield QrelsRow(n, cols[0], cols[1], score)


def iter_qrels(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> Iterator[QrelsRow]:
    """Stream the rows of a ``qrels/<split>.tsv`` (header ``query-id  corpus-id  score``).

    Args:
        path: The file.
        skip_bad: Skip and count bad rows instead of raising.
        counter: Optional counter to read the number skipped from.

    Yields:
        Each valid row, in file order.

    Raises:
        DataError: When the header is missing (always), or on the first bad row unless
            ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    yield from _qrels_rows(path, counter)
    counter.report(f"rows in {path}", start)


def _read_qrels(
    path: Path, counter: BadRecordCounter, check: Callable[[QrelsRow], DataError | None]
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for row in _qrels_rows(path, counter):
        error = check(row)
        if error is not None:
            counter.handle(error)
            continue
        qrels.setdefault(row.query_id, {})[row.corpus_id] = row.score
    return qrels


def load_qrels(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> dict[str, dict[str, int]]:
    """Load a ``qrels/<split>.tsv`` as ``{query_id: {doc_id: score}}`` (score-0 rows kept).

    Args:
        path: The file.
        skip_bad: Skip and count bad rows instead of raising.
        counter: Optional counter to read the number skipped from.

    Returns:
        The judgments, in file order.

    Raises:
        DataError: When the header is missing (always), or on the first bad row unless
            ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    qrels = _read_qrels(path, counter, lambda row: None)
    counter.report(f"rows in {path}", start)
    return qrels


def available_splits(folder: str | Path) -> list[str]:
    """Names of the qrels files in a BEIR folder (``train``, ``test``, ...), sorted.

    Args:
        folder: The BEIR folder.

    Returns:
        The split names; empty when there is no ``qrels`` folder.
    """
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv") if p.is_file())


def load_beir(folder: str | Path, split: str, skip_bad: bool = False) -> BeirDataset:
    """Load a BEIR folder's corpus and queries and one split's qrels, cross-checked.

    A qrels row whose query id is not in ``queries.jsonl`` or whose document id is not in
    ``corpus.jsonl`` is a bad record (field ``query-id`` / ``corpus-id`` of the qrels file);
    under ``skip_bad`` it is dropped and counted, like rows pointing at skipped records.

    Args:
        folder: The folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        split: The qrels file to use, e.g. ``"train"`` for ``qrels/train.tsv``.
        skip_bad: Skip and count bad records instead of raising (one warning with the total).

    Returns:
        The dataset; ``skipped`` holds the number of records dropped.

    Raises:
        DataError: A file is missing (naming the splits present), a qrels header is missing,
            or, unless ``skip_bad``, on the first bad record.
    """
    return load_beir_splits(folder, [split], skip_bad)[split]


def load_beir_splits(
    folder: str | Path, splits: Sequence[str], skip_bad: bool = False
) -> dict[str, BeirDataset]:
    """Load a BEIR folder's corpus and queries once, and the qrels of each of ``splits``.

    The datasets share one ``corpus`` and one ``queries`` dict; each equals
    ``load_beir(folder, split, skip_bad)`` (its ``skipped`` and its warning count the corpus and
    queries records skipped plus that split's qrels rows). Every file is checked to exist before
    any is read.

    Args:
        folder: The folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        splits: The qrels files to use, e.g. ``["train", "test"]`` (repeats are read once).
        skip_bad: Skip and count bad records instead of raising.

    Returns:
        ``{split: dataset}`` in the order of ``splits``.

    Raises:
        DataError: As :func:`load_beir`.
    """
    folder = Path(folder)
    qrels_paths = {split: folder / "qrels" / f"{split}.tsv" for split in dict.fromkeys(splits)}
    for needed in (folder / "corpus.jsonl", folder / "queries.jsonl", *qrels_paths.values()):
        if not needed.is_file():
            present = available_splits(folder) if folder.is_dir() else []
            raise DataError(needed, None, None, f"file not found (splits here: {present})")
    texts = BadRecordCounter(skip=skip_bad)
    corpus = _read_corpus(folder / "corpus.jsonl", texts)
    queries = _read_queries(folder / "queries.jsonl", texts)
    out: dict[str, BeirDataset] = {}
    for split, path in qrels_paths.items():
        counter = replace(texts)  # the corpus and queries skips count for every split
        qrels = _read_qrels(path, counter, _known_ids(path, corpus, queries))
        counter.report(f"records in {folder} (split {split!r})")
        out[split] = BeirDataset(corpus, queries, qrels, counter.count)
    return out


def _known_ids(
    qrels_path: Path, corpus: dict[str, Document], queries: dict[str, str]
) -> Callable[[QrelsRow], DataError | None]:
    """The qrels row check of :func:`load_beir_splits`: both ids must exist."""

    def check(row: QrelsRow) -> DataError | None:
        if row.query_id not in queries:
            return DataError(
                qrels_path, row.line, "query-id", f"{row.query_id!r} not in queries.jsonl"
            )
        if row.corpus_id not in corpus:
            return DataError(
                qrels_path, row.line, "corpus-id", f"{row.corpus_id!r} not in corpus.jsonl"
            )
        return None

    return check
