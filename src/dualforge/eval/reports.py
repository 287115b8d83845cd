"""Reports of a model on an evaluation split: metrics per prefix dim, funnels, budget cascades.

The split's judged queries and its corpus are encoded once (:class:`EncodedSplit`); the per-dim
metrics, the funnel, the budget choice and its cross-validation all reuse those embeddings. This
is what ``dualforge eval`` prints; every argument is a plain value. Bad values raise
``ValueError`` whose message names the ``dualforge eval`` option (``--budget``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualforge.data import EvalSet, available_splits
from dualforge.eval.metrics import DEFAULT_METRICS, Qrels, evaluate
from dualforge.eval.retrieval import (
    Funnel,
    Stage,
    choose_cascade,
    cross_validate_cascade,
    exact_flops,
    exact_search,
    format_funnel_spec,
    parse_funnel_spec,
    qrels_quality,
    run_from_search,
)
from dualforge.eval.retrieval_eval import RetrievalReport, evaluate_embeddings, judged_query_ids

BUDGET_METRIC = "ndcg@10"
"""The metric the budget mode keeps within its tolerance."""


TextEncoder = Callable[[list[str], str], np.ndarray]
"""``encode(texts, side) -> (N, D)`` embeddings (``side``: ``"query"`` or ``"document"``)."""


@dataclass(frozen=True)
class EncodedSplit:
    """A split's judged queries and its corpus, encoded once.

    Attributes:
        query_ids: Id of each query row (the judged queries with a text, in qrels order).
        doc_ids: Id of each document row, in corpus order.
        queries: ``(Q, D)`` query embeddings.
        docs: ``(N, D)`` document embeddings.
        metric: ``"cos"`` for a normalising model, else ``"ip"``.
    """

    query_ids: list[str]
    doc_ids: list[str]
    queries: np.ndarray  # (Q, D)
    docs: np.ndarray  # (N, D)
    metric: str


def encode_split(
    encode: TextEncoder, metric: str, data: EvalSet, docs: np.ndarray | None = None
) -> EncodedSplit:
    """Encode ``data``'s judged queries and (unless ``docs`` is given) its corpus.

    Args:
        encode: The model's encoder.
        metric: ``"cos"`` for a model that normalises its embeddings, else ``"ip"``.
        data: The split.
        docs: ``(N, D)`` embeddings of ``data.corpus`` computed before (another split of the
            same corpus), or None to encode the corpus.

    Returns:
        The embeddings.

    Raises:
        ValueError: When no judged query has a text.
    """
    qids = judged_query_ids(data.qrels, data.queries)
    if not qids:
        raise ValueError("no query with judgments in the qrels has a text in the queries")
    doc_ids = list(data.corpus)
    q_emb = encode([data.queries[q] for q in qids], "query")  # (Q, D)
    if docs is None:
        docs = encode([data.corpus[d] for d in doc_ids], "document")  # (N, D)
    return EncodedSplit(qids, doc_ids, q_emb, docs, metric)


def evaluate_encoded(
    enc: EncodedSplit,
    qrels: Qrels,
    *,
    k: int = 100,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dims: Sequence[int] = (),
) -> RetrievalReport:
    """Exact-search metrics of an encoded split, at full size and at each prefix of ``dims``.

    Raises:
        ValueError: For a bad metric name, ``k`` or dim.
    """
    return evaluate_embeddings(
        enc.queries,
        enc.docs,
        enc.query_ids,
        enc.doc_ids,
        qrels,
        k=k,
        metrics=metrics,
        dims=list(dims) or None,
        metric=enc.metric,
    )


def funnel_report(
    enc: EncodedSplit,
    qrels: Qrels,
    stages: Sequence[Stage],
    metrics: Sequence[str] = DEFAULT_METRICS,
    factory: str = "Flat",
    params: str | None = None,
) -> dict[str, Any]:
    """Run a funnel and exact search at the same depth: metrics, FLOPs and wall times of each.

    Args:
        enc: The encoded split.
        qrels: Its judgments.
        stages: The funnel (see :func:`~dualforge.eval.retrieval.parse_funnel_spec`).
        metrics: Metric names.
        factory: faiss factory string of the first stage's index.
        params: faiss search parameters of the first stage.

    Returns:
        ``spec, depth, metrics, exact_metrics, flops_per_query, exact_flops_per_query,
        flops_ratio, seconds, exact_seconds``.

    Raises:
        ValueError: For stages that do not fit the embeddings (e.g. dims above their size).
    """
    funnel = Funnel(enc.docs, tuple(stages), factory=factory, metric=enc.metric, params=params)
    result = funnel.search(enc.queries)
    depth = result.ids.shape[1]
    start = time.perf_counter()
    exact = exact_search(enc.queries, enc.docs, depth, metric=enc.metric)  # (Q, depth)
    exact_seconds = time.perf_counter() - start
    full = exact_flops(len(enc.doc_ids), enc.docs.shape[1])

    def scored(scores: np.ndarray, ids: np.ndarray) -> dict[str, float]:
        return evaluate(qrels, run_from_search(enc.query_ids, enc.doc_ids, scores, ids), metrics)

    return {
        "spec": format_funnel_spec(funnel.stages),
        "depth": depth,
        "metrics": scored(result.scores, result.ids),
        "exact_metrics": scored(*exact),
        "flops_per_query": result.flops_per_query,
        "exact_flops_per_query": full,
        "flops_ratio": result.flops_per_query / full,
        "seconds": result.seconds,
        "exact_seconds": exact_seconds,
    }


def check_budget(
    tolerance: float,
    confidence: float | None,
    folds: int | None,
    *,
    folder: str | Path,
    split: str,
    dev_split: str,
) -> None:
    """Check the budget mode's options before anything is loaded or encoded.

    Args:
        tolerance: ``--budget``, the relative loss allowed, in ``[0, 1)``.
        confidence: ``--budget-confidence``, in ``(0, 1)``, or None.
        folds: ``--budget-cv``, at least 2, or None to choose on ``dev_split``.
        folder: The BEIR folder (it must hold ``dev_split`` unless ``folds`` is given).
        split: ``--split``, the evaluated split.
        dev_split: ``--dev-split``, the split the cascade is chosen on.

    Raises:
        ValueError: Naming the option that is wrong.
    """
    folder = Path(folder)
    if folds is not None:
        if folds < 2:
            raise ValueError(f"--budget-cv needs at least 2 folds, got {folds}")
    elif dev_split not in available_splits(folder):
        raise ValueError(
            f"--budget needs a dev split to choose the cascade on: {folder}/qrels/"
            f"{dev_split}.tsv does not exist (name another split with --dev-split)"
        )
    if folds is None and dev_split == split:
        raise ValueError(f"--budget must choose on a split other than --split {split!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"--budget must be in [0, 1), got {tolerance}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"--budget-confidence must be in (0, 1), got {confidence}")


def budget_report(
    encode: TextEncoder,
    enc: EncodedSplit,
    qrels: Qrels,
    dev: EvalSet,
    *,
    tolerance: float,
    confidence: float | None = None,
    dev_split: str = "dev",
    metrics: Sequence[str] = DEFAULT_METRICS,
    factory: str = "Flat",
    params: str | None = None,
) -> dict[str, Any]:
    """Choose the cheapest cascade on the dev split, then run it on the evaluated split.

    Args:
        encode: The model's encoder (encodes the dev queries; the corpus embeddings of ``enc``
            are reused).
        enc: The evaluated split, encoded.
        qrels: Its judgments.
        dev: The split to choose on; its corpus must be ``enc``'s.
        tolerance: Relative :data:`BUDGET_METRIC` loss allowed on ``dev``.
        confidence: Pass only cascades whose one-sided ``confidence`` lower bound of the paired
            per-query loss is within ``tolerance`` (None: the dev mean).
        dev_split: Name of ``dev`` (for the report).
        metrics: Metrics of the evaluated split's funnel report.
        factory: faiss factory string of the first stage's index.
        params: faiss search parameters of the first stage.

    Returns:
        ``tolerance, confidence, dev_split, select_metric, chosen, reference, trials, test``
        (``test``: the :func:`funnel_report` of the chosen cascade on the evaluated split).

    Raises:
        ValueError: When ``dev``'s corpus differs from the evaluated one.
    """
    if list(dev.corpus) != enc.doc_ids:
        raise ValueError(f"the {dev_split!r} corpus differs from the evaluated split's corpus")
    dev_enc = encode_split(encode, enc.metric, dev, docs=enc.docs)
    quality = qrels_quality(
        dev.qrels, dev_enc.query_ids, dev_enc.doc_ids, BUDGET_METRIC,
        per_query=confidence is not None,
    )  # fmt: skip
    choice = choose_cascade(
        enc.docs, dev_enc.queries, quality, tolerance=tolerance, k=10, metric=enc.metric,
        factory=factory, params=params, confidence=confidence,
    )  # fmt: skip
    chosen = parse_funnel_spec(choice.chosen.spec)
    return {
        "tolerance": tolerance,
        "confidence": confidence,
        "dev_split": dev_split,
        "select_metric": BUDGET_METRIC,
        "chosen": choice.chosen.to_dict(),
        "reference": choice.reference.to_dict(),
        "trials": [t.to_dict() for t in choice.trials],
        "test": funnel_report(enc, qrels, chosen, metrics, factory, params),
    }


def budget_cv_report(
    enc: EncodedSplit,
    qrels: Qrels,
    *,
    folds: int,
    tolerance: float,
    confidence: float | None = None,
) -> dict[str, Any]:
    """Cross-validate the budget mode over the evaluated split's queries.

    Args:
        enc: The evaluated split, encoded.
        qrels: Its judgments.
        folds: Number of folds (choose on ``folds - 1``, score on the held-out one).
        tolerance: As :func:`budget_report`.
        confidence: As :func:`budget_report`.

    Returns:
        ``tolerance, confidence, folds, select_metric, quality, exact_quality, flops_ratio``.

    Raises:
        ValueError: When ``folds`` exceeds the number of judged queries.
    """
    if folds > len(enc.query_ids):
        raise ValueError(f"--budget-cv {folds} exceeds the {len(enc.query_ids)} judged queries")
    cv = cross_validate_cascade(
        enc.docs, enc.queries, qrels, enc.query_ids, enc.doc_ids, folds=folds,
        tolerance=tolerance, confidence=confidence, metric=enc.metric,
        quality_metric=BUDGET_METRIC,
    )  # fmt: skip
    return {
        "tolerance": tolerance,
        "confidence": confidence,
        "folds": [asdict(f) for f in cv.folds],
        "select_metric": BUDGET_METRIC,
        "quality": cv.quality,
        "exact_quality": cv.exact_quality,
        "flops_ratio": cv.flops_ratio,
    }
