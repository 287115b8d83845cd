"""Test helpers: read BEIR qrels, build seeded synthetic runs, rank as trec_eval documents."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def read_qrels(path: Path) -> Qrels:
    """``query-id<TAB>corpus-id<TAB>score`` with a header line -> ``{qid: {doc_id: rel}}``."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if header != ["query-id", "corpus-id", "score"]:
            raise ValueError(f"unexpected qrels header {header} in {path}")
        for qid, doc_id, score in reader:
            qrels.setdefault(qid, {})[doc_id] = int(score)
    return qrels


def regrade(qrels: Qrels, seed: int) -> Qrels:
    """The same judged documents with random graded relevance 0/1/2."""
    rng = np.random.default_rng(seed)
    return {q: {d: int(rng.integers(0, 3)) for d in docs} for q, docs in qrels.items()}


def synthetic_run(qrels: Qrels, seed: int, depth: int = 100) -> Run:
    """A seeded run over ``qrels``' queries with ties, unjudged docs and missing queries.

    About 10% of the judged queries are left out, a few unjudged queries and one empty query
    are added; scores are coarse (many exact ties) and some differ only below float32
    precision (ties for trec_eval).
    """
    rng = np.random.default_rng(seed)
    pool = sorted({d for docs in qrels.values() for d in docs})
    run: Run = {}
    for qid, judged in qrels.items():
        if rng.random() < 0.1:
            continue  # query of the qrels missing from the run
        own = [d for d in judged if rng.random() < 0.7]
        others = [pool[i] for i in rng.integers(0, len(pool), size=depth // 2)]
        fresh = [f"unjudged-{qid}-{i}" for i in range(depth)]
        docs = list(dict.fromkeys(own + others + fresh))[:depth]
        coarse = rng.integers(0, 15, size=len(docs)) / 4.0
        tiny = np.where(rng.random(len(docs)) < 0.2, rng.random(len(docs)) * 1e-9, 0.0)
        run[qid] = {d: float(s + t) for d, s, t in zip(docs, coarse, tiny)}
    run["query-not-judged"] = {pool[0]: 1.0, "x": 0.5}
    run[next(iter(qrels))] = {}  # a judged query with an empty ranking
    return run


def trec_order(scores: dict[str, float]) -> list[str]:
    """Reference ranking: float32 score descending, then doc id descending."""
    return sorted(scores, key=lambda d: (np.float32(scores[d]), d), reverse=True)


def top_k(run: Run, k: int) -> Run:
    """Each query's top ``k`` documents in the reference order."""
    return {q: {d: scores[d] for d in trec_order(scores)[:k]} for q, scores in run.items()}
