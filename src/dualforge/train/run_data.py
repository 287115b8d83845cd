"""The data of one run: training examples, a dev set (given or carved from train) and a test set."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from dualforge.config import DataConfig
from dualforge.data import (
    Document,
    EvalSet,
    SplitsLoader,
    TrainingExample,
    available_splits,
    corpus_file,
    corpus_texts,
    eval_set,
    examples_from_beir,
    hf_num_rows,
    iter_hf_examples,
    load_beir_splits,
    load_corpus,
    load_hf_examples,
    load_jsonl_examples,
    load_tsv_triples,
)

logger = logging.getLogger("dualforge.train")


@dataclass(frozen=True)
class RunData:
    """Training examples, evaluation sets, known positives (false-negative masking, mining) and
    the training corpus (doc id -> text; BEIR data, or ``data.corpus``), the targets of negative
    mining; the
    training qrels with their grades (BEIR data only; ``loss.distill.teacher=qrels``)."""

    examples: list[TrainingExample]
    dev: EvalSet | None
    test: EvalSet | None
    known_positives: dict[str, set[str]]
    corpus: Mapping[str, str] | None = None
    stream: Callable[[int], Iterator[TrainingExample]] | None = None
    num_examples: int | None = None
    grades: Mapping[str, Mapping[str, int]] | None = None

    @property
    def size(self) -> int | None:
        """Training examples: held, or in the stream (None when the stream cannot tell)."""
        return self.num_examples if self.stream is not None else len(self.examples)


def load_run_data(
    cfg: DataConfig, seed: int, *, load_splits: SplitsLoader = load_beir_splits
) -> RunData:
    """Load the configured training data and evaluation splits.

    Args:
        cfg: The data settings.
        seed: Seed of the carved dev split (``data.dev_fraction``).
        load_splits: Reads a BEIR folder (corpus and queries once) with the qrels of the splits
            it is given; it is called at most once per run, for every split the run needs.

    Returns:
        The run's data; dev and test share the training corpus texts.

    Raises:
        ValueError: For a bad ``data.format`` or a missing ``data.train_file``.
        DataError: For a missing file or, unless ``data.skip_bad``, a bad record.
    """
    folder = Path(cfg.path)
    if cfg.format == "beir":
        return _from_beir(cfg, folder, seed, load_splits)
    if cfg.train_file is None:
        raise ValueError(f"data.format={cfg.format!r} needs data.train_file")
    split = _test_split(cfg, folder)
    test = None if split is None else eval_set(load_splits(folder, [split], cfg.skip_bad)[split])
    docs = None if cfg.corpus is None else load_corpus(corpus_file(cfg.corpus), cfg.skip_bad)
    if cfg.format == "hf":
        return with_corpus(_from_hf(cfg, cfg.train_file, test), docs)
    if cfg.format == "jsonl":
        examples = load_jsonl_examples(cfg.train_file, docs, skip_bad=cfg.skip_bad)
        return with_corpus(RunData(examples, None, test, {}), docs)
    if cfg.format == "tsv":
        examples = load_tsv_triples(cfg.train_file, skip_bad=cfg.skip_bad)
        return with_corpus(RunData(examples, None, test, {}), docs)
    raise ValueError(f"data.format={cfg.format!r}; use 'beir', 'jsonl', 'tsv' or 'hf'")


def with_corpus(data: RunData, docs: Mapping[str, Document] | None) -> RunData:
    """``data`` with ``data.corpus`` as its training corpus (the mining targets): examples whose
    positives came as text get the id of the corpus document with that exact text, and each
    query id's positives become known positives (never mined). Positives found nowhere in the
    corpus are counted and warned about: their queries are mined without the positive filter."""
    if docs is None:
        return data
    corpus = {doc_id: doc.full_text for doc_id, doc in docs.items()}
    by_text = {text: doc_id for doc_id, text in reversed(list(corpus.items()))}  # first id wins
    examples = [_linked(ex, by_text) for ex in data.examples]
    missing = sum(1 for ex in examples if not ex.positive_ids)
    if missing:
        logger.warning(
            "data.corpus: the positives of %d of %d training examples are not in the corpus "
            "(matched by id or exact text); their queries are mined without mining.filter",
            missing, len(examples),
        )  # fmt: skip
    known: dict[str, set[str]] = {}
    for ex in examples:
        if ex.query_id is not None:
            known.setdefault(ex.query_id, set()).update(ex.positive_ids)
    stream = data.stream
    if stream is not None:
        inner = stream

        def stream(epoch: int) -> Iterator[TrainingExample]:
            return (_linked(ex, by_text) for ex in inner(epoch))

    return replace(data, examples=examples, known_positives=known, corpus=corpus, stream=stream)


def _linked(example: TrainingExample, by_text: Mapping[str, str]) -> TrainingExample:
    """``example`` with positive ids looked up by exact text when it has none."""
    if example.positive_ids:
        return example
    ids = tuple(by_text.get(t) for t in example.positives)
    if any(i is None for i in ids):
        return example
    return replace(example, positive_ids=tuple(i for i in ids if i is not None))


def _from_hf(cfg: DataConfig, path: str, test: EvalSet | None) -> RunData:
    """A Hugging Face dataset, held in memory or (``data.streaming``) opened once per epoch."""
    columns = cfg.columns.mapping()
    split = cfg.train_split
    if not cfg.streaming:
        examples = load_hf_examples(path, split=split, columns=columns, skip_bad=cfg.skip_bad)
        return RunData(examples, None, test, {})

    def stream(epoch: int) -> Iterator[TrainingExample]:
        del epoch  # the sampler shuffles each epoch; the stream is read in file order
        return iter_hf_examples(
            path, split=split, columns=columns, skip_bad=cfg.skip_bad, streaming=True
        )

    rows = hf_num_rows(path, split=split)
    return RunData([], None, test, {}, stream=stream, num_examples=rows)


def _test_split(cfg: DataConfig, folder: Path) -> str | None:
    """``data.test_split``, or None when it is null or the folder has no such split (warned)."""
    if cfg.test_split is None:
        return None
    if not folder.is_dir() or cfg.test_split not in available_splits(folder):
        logger.warning("no qrels/%s.tsv under %s: no test evaluation", cfg.test_split, folder)
        return None
    return cfg.test_split


def _from_beir(cfg: DataConfig, folder: Path, seed: int, load_splits: SplitsLoader) -> RunData:
    test_split = _test_split(cfg, folder)
    wanted = [cfg.train_split, *(s for s in (cfg.dev_split, test_split) if s is not None)]
    loaded = load_splits(folder, wanted, cfg.skip_bad)
    train = loaded[cfg.train_split]
    examples = examples_from_beir(train)
    known = {
        qid: {d for d, score in docs.items() if score > 0} for qid, docs in train.qrels.items()
    }
    corpus = corpus_texts(train)
    dev: EvalSet | None = None
    if cfg.dev_split is not None:
        dev = eval_set(loaded[cfg.dev_split], corpus)
    elif cfg.dev_fraction > 0:
        examples, held = _carve(examples, cfg.dev_fraction, seed)
        qids = {ex.query_id for ex in held if ex.query_id is not None}
        qrels = {q: train.qrels[q] for q in qids}
        dev_corpus = _subsample(corpus, qrels, cfg.dev_corpus_size, seed)
        dev = EvalSet(dev_corpus, {q: train.queries[q] for q in qids}, qrels)
    test = None if test_split is None else eval_set(loaded[test_split], corpus)
    return RunData(examples, dev, test, known, corpus, grades=train.qrels)


def _carve(
    examples: list[TrainingExample], fraction: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Hold out ``fraction`` of the training queries (seeded) as a dev split."""
    if not 0 < fraction < 1:
        raise ValueError(f"data.dev_fraction must be in (0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(fraction * len(examples)))
    dev_rows = set(order[:n_dev])
    keep = [ex for i, ex in enumerate(examples) if i not in dev_rows]
    held = [ex for i, ex in enumerate(examples) if i in dev_rows]
    return keep, held


def _subsample(
    corpus: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], size: int, seed: int
) -> Mapping[str, str]:
    """All judged documents plus seeded random distractors up to ``size`` (0: whole corpus).

    A smaller dev corpus makes frequent dev evaluation cheap; its scores are higher than on the
    full corpus, so use it to compare checkpoints, not to report results.
    """
    if size <= 0 or size >= len(corpus):
        return corpus
    judged = {d for docs in qrels.values() for d in docs if d in corpus}
    others = sorted(set(corpus) - judged)
    random.Random(seed).shuffle(others)
    keep = judged | set(others[: max(0, size - len(judged))])
    return {d: corpus[d] for d in corpus if d in keep}
