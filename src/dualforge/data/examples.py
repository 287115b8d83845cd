"""Training examples: BEIR qrels groups, JSONL (texts or corpus ids), MS MARCO-style TSV triples."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualforge.data.beir import BeirDataset, Document, iter_jsonl
from dualforge.data.errors import BadRecords, DataError


@dataclass(frozen=True)
class TrainingExample:
    """A query with one or more positives and optional hard negatives (texts, and ids if known)."""

    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    query_id: str | None = None
    positive_ids: tuple[str, ...] = ()
    negative_ids: tuple[str, ...] = ()


def examples_from_beir(dataset: BeirDataset, min_score: int = 1) -> list[TrainingExample]:
    """One example per judged query, holding all its documents with score >= ``min_score``."""
    out: list[TrainingExample] = []
    for qid, judged in dataset.qrels.items():
        pos_ids = tuple(d for d, s in judged.items() if s >= min_score)
        if not pos_ids or qid not in dataset.queries:
            continue
        texts = tuple(dataset.corpus[d].full_text for d in pos_ids)
        out.append(TrainingExample(dataset.queries[qid], texts, (), qid, pos_ids))
    return out


def _text_list(obj: dict[str, Any], keys: tuple[str, ...], path: Path, n: int) -> tuple[str, ...]:
    for key in keys:
        if key not in obj:
            continue
        value = obj[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
            raise DataError(path, n, key, "expected a non-empty string or a list of them")
        return tuple(items)
    return ()


def _ids(obj: dict[str, Any], key: str, corpus: Mapping[str, Document], path: Path, n: int) -> tuple[str, ...]:
    value = obj.get(key, [])
    items = [value] if isinstance(value, (str, int)) else value
    if not isinstance(items, list):
        raise DataError(path, n, key, "expected an id or a list of ids")
    for item in items:
        if str(item) not in corpus:
            raise DataError(path, n, key, f"id {item!r} not in the corpus")
    return tuple(str(x) for x in items)


def _parse_example(obj: dict[str, Any], corpus: Mapping[str, Document] | None, path: Path, n: int) -> TrainingExample:
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DataError(path, n, "query", "missing or empty")
    positives = _text_list(obj, ("positive", "positives", "pos"), path, n)
    negatives = _text_list(obj, ("negatives", "negative", "neg"), path, n)
    pos_ids: tuple[str, ...] = ()
    neg_ids: tuple[str, ...] = ()
    if corpus is not None and ("positive_ids" in obj or "negative_ids" in obj):
        pos_ids = _ids(obj, "positive_ids", corpus, path, n)
        neg_ids = _ids(obj, "negative_ids", corpus, path, n)
        positives = positives or tuple(corpus[d].full_text for d in pos_ids)
        negatives = negatives or tuple(corpus[d].full_text for d in neg_ids)
    if not positives:
        raise DataError(path, n, "positive", "missing (give 'positive', 'pos' or 'positive_ids')")
    qid = obj.get("query_id")
    return TrainingExample(query, positives, negatives, str(qid) if qid is not None else None, pos_ids, neg_ids)


def iter_jsonl_examples(
    path: str | Path, corpus: Mapping[str, Document] | None = None, bad: BadRecords | None = None
) -> Iterator[TrainingExample]:
    """Stream examples from JSONL lines like ``{"query", "positive", "negatives"}``.

    Also accepted: FlagEmbedding keys ``pos``/``neg``; with ``corpus``, ``positive_ids`` and
    ``negative_ids`` naming corpus documents.
    """
    path, bad = Path(path), bad or BadRecords()
    for n, obj in iter_jsonl(path, bad):
        try:
            yield _parse_example(obj, corpus, path, n)
        except DataError as err:
            bad.handle(err)


def load_jsonl_examples(
    path: str | Path, corpus: Mapping[str, Document] | None = None, skip_bad: bool = False
) -> list[TrainingExample]:
    """All examples of a JSONL file (see :func:`iter_jsonl_examples`)."""
    bad = BadRecords(skip_bad)
    out = list(iter_jsonl_examples(path, corpus, bad))
    bad.report(f"examples in {path}")
    return out


def iter_tsv_triples(path: str | Path, bad: BadRecords | None = None) -> Iterator[TrainingExample]:
    """Stream ``query<TAB>positive<TAB>negative`` lines (no header) as examples with one negative."""
    path, bad = Path(path), bad or BadRecords()
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3:
                bad.handle(DataError(path, n, None, f"expected 3 tab-separated columns, got {len(cols)}"))
                continue
            empty = [name for name, col in zip(("query", "positive", "negative"), cols) if not col.strip()]
            if empty:
                bad.handle(DataError(path, n, empty[0], "empty"))
                continue
            yield TrainingExample(cols[0], (cols[1],), (cols[2],))


def load_tsv_triples(path: str | Path, skip_bad: bool = False) -> list[TrainingExample]:
    """All triples of a TSV file (see :func:`iter_tsv_triples`)."""
    bad = BadRecords(skip_bad)
    out = list(iter_tsv_triples(path, bad))
    bad.report(f"triples in {path}")
    return out
