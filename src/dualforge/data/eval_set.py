"""Evaluation sets: the texts and judgments that retrieval evaluation needs, from BEIR folders."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dualforge.data.beir import BeirDataset, load_beir_splits

SplitsLoader = Callable[[Path, Sequence[str], bool], Mapping[str, BeirDataset]]
"""``(folder, splits, skip_bad) -> {split: dataset}``, e.g. :func:`load_beir_splits`."""


@dataclass(frozen=True)
class EvalSet:
    """What retrieval evaluation needs: texts and judgments.

    Attributes:
        corpus: ``{doc_id: text}`` (title and text joined, see ``Document.full_text``).
        queries: ``{query_id: text}`` of the judged queries.
        qrels: ``{query_id: {doc_id: relevance}}``.
    """

    corpus: Mapping[str, str]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]


def corpus_texts(ds: BeirDataset) -> dict[str, str]:
    """``{doc_id: full text}`` of a dataset's corpus, in corpus order."""
    return {doc_id: doc.full_text for doc_id, doc in ds.corpus.items()}


def eval_set(ds: BeirDataset, corpus: Mapping[str, str] | None = None) -> EvalSet:
    """The evaluation set of one loaded split: corpus texts, judged queries, qrels.

    Args:
        ds: The split, as :func:`~dualforge.data.load_beir` returns it.
        corpus: ``corpus_texts(ds)`` when the caller has it already (splits of one folder share
            one corpus, so it is built once).

    Returns:
        The set; queries are those with judgments in the split, in qrels order.
    """
    texts = corpus_texts(ds) if corpus is None else corpus
    return EvalSet(texts, ds.split_queries(), ds.qrels)


def load_eval_sets(
    folder: str | Path,
    splits: Sequence[str],
    skip_bad: bool = False,
    *,
    load: SplitsLoader = load_beir_splits,
) -> dict[str, EvalSet]:
    """Evaluation sets of several splits of one BEIR folder, its corpus and queries read once.

    Args:
        folder: The BEIR folder.
        splits: Split names, e.g. ``["test", "dev"]``.
        skip_bad: Skip and count bad records instead of raising.
        load: The folder loader (its one call reads the folder).

    Returns:
        ``{split: set}``; the sets share one corpus mapping.

    Raises:
        DataError: As :func:`~dualforge.data.load_beir`.
    """
    loaded = load(Path(folder), splits, skip_bad)
    corpus: dict[str, str] | None = None
    out: dict[str, EvalSet] = {}
    for split, ds in loaded.items():
        corpus = corpus_texts(ds) if corpus is None else corpus
        out[split] = eval_set(ds, corpus)
    return out


def load_eval_set(folder: str | Path, split: str, skip_bad: bool = False) -> EvalSet:
    """Corpus texts, the split's judged queries and its qrels, for evaluation.

    Raises:
        DataError: As :func:`~dualforge.data.load_beir`.
    """
    return load_eval_sets(folder, [split], skip_bad)[split]
