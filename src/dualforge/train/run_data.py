"""The data of one run: training examples, a dev set (given or carved from train) and a test set."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dualforge.config import DataConfig
from dualforge.data import (
    TrainingExample,
    available_splits,
    examples_from_beir,
    load_beir,
    load_jsonl_examples,
    load_tsv_triples,
)

logger = logging.getLogger("dualforge.train")


@dataclass(frozen=True)
class EvalSet:
    """What retrieval evaluation needs: texts and judgments."""

    corpus: Mapping[str, str]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class RunData:
    """Training examples, evaluation sets, known positives (false-negative masking, mining) and
    the training corpus (doc id -> text; BEIR data only), the targets of negative mining."""

    examples: list[TrainingExample]
    dev: EvalSet | None
    test: EvalSet | None
    known_positives: dict[str, set[str]]
    corpus: Mapping[str, str] | None = None


def load_run_data(cfg: DataConfig, seed: int) -> RunData:
    """Load the configured training data and evaluation splits."""
    folder = Path(cfg.path)
    if cfg.format == "beir":
        return _from_beir(cfg, folder, seed)
    if cfg.format in ("jsonl", "tsv"):
        if cfg.train_file is None:
            raise ValueError(f"data.format={cfg.format!r} needs data.train_file")
        loader = load_jsonl_examples if cfg.format == "jsonl" else load_tsv_triples
        examples = list(loader(cfg.train_file, skip_bad=cfg.skip_bad))
        return RunData(examples, None, _test_set(cfg, folder), {})
    raise ValueError(f"data.format={cfg.format!r}; use 'beir', 'jsonl' or 'tsv'")


def _test_set(cfg: DataConfig, folder: Path) -> EvalSet | None:
    """The test split, or None when ``data.test_split`` is null or the folder has no such split."""
    if cfg.test_split is None:
        return None
    if not folder.is_dir() or cfg.test_split not in available_splits(folder):
        logger.warning("no qrels/%s.tsv under %s: no test evaluation", cfg.test_split, folder)
        return None
    return load_eval_set(folder, cfg.test_split, cfg.skip_bad)


def load_eval_set(folder: Path, split: str, skip_bad: bool) -> EvalSet:
    """Corpus texts, the split's judged queries and its qrels, for evaluation."""
    ds = load_beir(folder, split, skip_bad=skip_bad)
    corpus = {doc_id: doc.full_text for doc_id, doc in ds.corpus.items()}
    queries = {qid: ds.queries[qid] for qid in ds.qrels if qid in ds.queries}
    return EvalSet(corpus, queries, ds.qrels)


def _from_beir(cfg: DataConfig, folder: Path, seed: int) -> RunData:
    train = load_beir(folder, cfg.train_split, skip_bad=cfg.skip_bad)
    examples = examples_from_beir(train)
    known = {
        qid: {d for d, score in docs.items() if score > 0} for qid, docs in train.qrels.items()
    }
    corpus = {doc_id: doc.full_text for doc_id, doc in train.corpus.items()}
    dev: EvalSet | None = None
    if cfg.dev_split is not None:
        dev = load_eval_set(folder, cfg.dev_split, cfg.skip_bad)
    elif cfg.dev_fraction > 0:
        examples, held = _carve(examples, cfg.dev_fraction, seed)
        qids = {ex.query_id for ex in held if ex.query_id is not None}
        qrels = {q: train.qrels[q] for q in qids}
        dev_corpus = _subsample(corpus, qrels, cfg.dev_corpus_size, seed)
        dev = EvalSet(dev_corpus, {q: train.queries[q] for q in qids}, qrels)
    test = _test_set(cfg, folder)
    return RunData(examples, dev, test, known, corpus)


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
