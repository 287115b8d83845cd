"""Training examples: BEIR qrels groups, JSONL lines (texts or corpus ids), MS MARCO TSV triples."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualforge.data.beir import BeirDataset, Document
from dualforge.data.errors import BadRecordCounter, DataError, make_counter
from dualforge.data.lines import iter_jsonl, iter_lines, split_columns, string_field
from dualforge.data.scores import SCORE_KEYS, read_scores

logger = logging.getLogger("dualforge.data")

POSITIVE_KEYS = ("positive", "positives", "pos")
NEGATIVE_KEYS = ("negatives", "negative", "neg")
TRIPLE_COLUMNS = ("query", "positive", "negative")
JSONL_SCORE_KEYS = {key: key for key in SCORE_KEYS}
# first-line column names taken as a header (compared lower-case, digits and separators dropped)
HEADER_WORDS = frozenset(
    [
        "query",
        "queries",
        "question",
        "anchor",
        "positive",
        "positives",
        "pos",
        "negative",
        "negatives",
        "neg",
        "hardnegative",
        "document",
        "doc",
        "passage",
        "text",
        "qid",
        "pid",
        "nid",
        "id",
    ]
)


@dataclass(frozen=True)
class TrainingExample:
    """A query with one or more positives and optional hard negatives.

    Attributes:
        query: The query text.
        positives: Relevant document texts (at least one).
        negatives: Hard-negative document texts (may be empty).
        query_id: The query's id, if known.
        positive_ids: Ids aligned with ``positives``, or empty when the texts came inline.
        negative_ids: Ids aligned with ``negatives``, or empty when the texts came inline.
        positive_scores: Teacher scores aligned with ``positives``, or empty (no scores).
        negative_scores: Teacher scores aligned with ``negatives`` (empty with no scores).
    """

    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    query_id: str | None = None
    positive_ids: tuple[str, ...] = ()
    negative_ids: tuple[str, ...] = ()
    positive_scores: tuple[float, ...] = ()
    negative_scores: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        """Check that there is a positive and that ids, when given, align with the texts.

        Raises:
            ValueError: No positive, ids not aligned with their texts, or scores that are not
                given for every candidate.
        """
        if not self.positives:
            raise ValueError(f"training example for query {self.query[:60]!r} has no positive")
        for texts, ids, what in (
            (self.positives, self.positive_ids, "positive"),
            (self.negatives, self.negative_ids, "negative"),
        ):
            if ids and len(ids) != len(texts):
                raise ValueError(f"{len(ids)} {what} ids for {len(texts)} {what} texts")
        counts = (len(self.positive_scores), len(self.negative_scores))
        if any(counts) and counts != (len(self.positives), len(self.negatives)):
            raise ValueError(
                f"{counts[0]} + {counts[1]} teacher scores for {len(self.positives)} "
                f"positive(s) + {len(self.negatives)} negative(s)"
            )

    @property
    def scored(self) -> bool:
        """Whether the example carries teacher scores (for every candidate)."""
        return bool(self.positive_scores)


def examples_from_beir(dataset: BeirDataset, min_score: int = 1) -> list[TrainingExample]:
    """One example per judged query, holding all its documents with score >= ``min_score``.

    Documents judged below ``min_score`` (e.g. BEIR's score-0 "judged non-relevant" rows) are
    not positives; queries left without a positive are dropped. Texts are
    :attr:`Document.full_text`; ids are kept. Order follows the qrels file.

    Args:
        dataset: A loaded BEIR split.
        min_score: Lowest qrels score counted as relevant (at least 1).

    Returns:
        The examples, without negatives.

    Raises:
        ValueError: ``min_score`` is below 1.
    """
    if min_score < 1:
        raise ValueError(
            f"min_score must be >= 1 (score 0 means judged non-relevant), got {min_score}"
        )
    out: list[TrainingExample] = []
    for qid, judged in dataset.qrels.items():
        pos_ids = tuple(d for d, s in judged.items() if s >= min_score)
        if not pos_ids or qid not in dataset.queries:
            continue
        texts = tuple(dataset.corpus[d].full_text for d in pos_ids)
        out.append(TrainingExample(dataset.queries[qid], texts, (), qid, pos_ids))
    return out


def _present_key(obj: dict[str, Any], keys: tuple[str, ...], path: Path, n: int) -> str | None:
    """The one alias of ``keys`` present in ``obj`` (None if none); two aliases are an error."""
    present = [k for k in keys if k in obj]
    if len(present) > 1:
        raise DataError(path, n, present[1], f"give only one of {present}")
    return present[0] if present else None


def _strings(value: Any, path: Path, n: int, key: str) -> tuple[str, ...]:
    """A string or a list of strings, as a tuple of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
        raise DataError(path, n, key, "expected a non-empty string or a list of them")
    return tuple(items)


def _side(
    obj: dict[str, Any],
    text_keys: tuple[str, ...],
    id_key: str,
    corpus: Mapping[str, Document] | None,
    where: tuple[Path, int],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(texts, ids)`` of the positives or negatives of one JSONL record."""
    path, n = where
    text_key = _present_key(obj, text_keys, path, n)
    texts = _strings(obj[text_key], path, n, text_key) if text_key else None
    if id_key not in obj:
        return texts or (), ()
    ids = _strings(obj[id_key], path, n, id_key)
    if corpus is not None:
        for doc_id in ids:
            if doc_id not in corpus:
                raise DataError(path, n, id_key, f"id {doc_id!r} not in the corpus")
    if texts is None:
        if corpus is None:
            raise DataError(path, n, id_key, "ids need a corpus to look them up (pass corpus=...)")
        texts = tuple(corpus[d].full_text for d in ids)
    elif len(texts) != len(ids):
        raise DataError(path, n, id_key, f"{len(ids)} ids for {len(texts)} texts in {text_key!r}")
    return texts, ids


def parse_example(
    obj: dict[str, Any], corpus: Mapping[str, Document] | None, path: Path, n: int
) -> TrainingExample:
    """Build a :class:`TrainingExample` from one parsed JSONL record.

    Args:
        obj: The record.
        corpus: Documents for ``positive_ids``/``negative_ids``, or None.
        path: The file (for errors).
        n: The line number (for errors).

    Returns:
        The example.

    Raises:
        DataError: The record is invalid (the field is named).
    """
    query = string_field(obj, "query", path, n)
    if not query.strip():
        raise DataError(path, n, "query", "empty")
    positives, pos_ids = _side(obj, POSITIVE_KEYS, "positive_ids", corpus, (path, n))
    negatives, neg_ids = _side(obj, NEGATIVE_KEYS, "negative_ids", corpus, (path, n))
    if not positives:
        raise DataError(path, n, "positive", "missing (give 'positive', 'pos' or 'positive_ids')")
    qid = obj.get("query_id")
    if qid is not None and not isinstance(qid, str):
        raise DataError(path, n, "query_id", "expected a string")
    pos_scores, neg_scores = read_scores(
        obj, JSONL_SCORE_KEYS, (len(positives), len(negatives)),
        lambda key, message: DataError(path, n, key, message),
    )  # fmt: skip
    return TrainingExample(
        query, positives, negatives, qid, pos_ids, neg_ids, pos_scores, neg_scores
    )


def iter_jsonl_examples(
    path: str | Path,
    corpus: Mapping[str, Document] | None = None,
    skip_bad: bool = False,
    counter: BadRecordCounter | None = None,
) -> Iterator[TrainingExample]:
    """Stream training examples from a JSONL file.

    Each line is an object with ``"query"`` (string), positives under ``"positive"`` (a string
    or a list of strings; ``"positives"`` and FlagEmbedding's ``"pos"`` are aliases) and
    optional negatives under ``"negatives"`` (aliases ``"negative"``, ``"neg"``). With
    ``corpus``, ``"positive_ids"``/``"negative_ids"`` may name corpus documents instead of
    giving texts (or alongside them, aligned, to attach ids). ``"query_id"`` is stored as is.
    Teacher scores (for distillation): ``"scores"`` aligned with ``[positive] + negatives``, or
    FlagEmbedding's ``"pos_scores"`` / ``"neg_scores"`` (:mod:`dualforge.data.scores`). Other
    keys (``prompt``, ``type``...) are ignored.

    Args:
        path: The file.
        corpus: Documents that ``*_ids`` refer to, or None.
        skip_bad: Skip and count bad lines instead of raising.
        counter: Optional counter to read the number skipped from.

    Yields:
        One example per valid line.

    Raises:
        DataError: On the first bad line (naming line and field), unless ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    for n, obj in iter_jsonl(path, counter):
        try:
            example = parse_example(obj, corpus, path, n)
        except DataError as err:
            counter.handle(err)
            continue
        yield example
    counter.report(f"examples in {path}", start)


def load_jsonl_examples(
    path: str | Path,
    corpus: Mapping[str, Document] | None = None,
    skip_bad: bool = False,
    counter: BadRecordCounter | None = None,
) -> list[TrainingExample]:
    """Load all examples of a JSONL file (format: :func:`iter_jsonl_examples`).

    Args:
        path: The file.
        corpus: Documents that ``positive_ids``/``negative_ids`` refer to, or None.
        skip_bad: Skip and count bad lines instead of raising.
        counter: Optional counter to read the number skipped from.

    Returns:
        The examples, in file order.

    Raises:
        DataError: On the first bad line, unless ``skip_bad``.
    """
    return list(iter_jsonl_examples(path, corpus, skip_bad, counter))


def iter_tsv_triples(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> Iterator[TrainingExample]:
    """Stream MS MARCO-style ``query<TAB>positive<TAB>negative`` lines.

    A first line whose every column is a column name (``query``, ``positive``, ``negative``,
    ``anchor``, ``pos``, ...) is a header: it is skipped, with a logged note.

    Args:
        path: The file.
        skip_bad: Skip and count bad lines (not 3 columns, or an empty column) instead of
            raising.
        counter: Optional counter to read the number skipped from.

    Yields:
        One example with one positive and one negative per valid line.

    Raises:
        DataError: On the first bad line, unless ``skip_bad``.
    """
    path, counter = Path(path), make_counter(skip_bad, counter)
    start = counter.count
    first = True
    for n, line in iter_lines(path, counter):
        if first and is_header(line):
            logger.warning("%s:%d: skipped the header line %r", path, n, line.strip())
            first = False
            continue
        first = False
        cols = split_columns(path, n, line, TRIPLE_COLUMNS, counter)
        if cols is not None:
            yield TrainingExample(cols[0], (cols[1],), (cols[2],))
    counter.report(f"triples in {path}", start)


def is_header(line: str) -> bool:
    """Whether a TSV line is a header row: every column is a column name."""
    names = ["".join(c for c in col.lower() if c.isalpha()) for col in line.split("\t")]
    return all(name in HEADER_WORDS for name in names)


def load_tsv_triples(
    path: str | Path, skip_bad: bool = False, counter: BadRecordCounter | None = None
) -> list[TrainingExample]:
    """Load all triples of a TSV file (format: :func:`iter_tsv_triples`).

    Args:
        path: The file.
        skip_bad: Skip and count bad lines instead of raising.
        counter: Optional counter to read the number skipped from.

    Returns:
        The examples, in file order.

    Raises:
        DataError: On the first bad line, unless ``skip_bad``.
    """
    return list(iter_tsv_triples(path, skip_bad, counter))
