"""``dualforge eval``: retrieval metrics of a model on a BEIR split, optionally per Matryoshka dim.

The queries and corpus are encoded once; the per-dim metrics, the plot, the funnel and the
budget search all reuse those embeddings.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualforge.config import EvalConfig
from dualforge.data import EvalSet, available_splits, load_eval_set
from dualforge.eval.metrics import evaluate
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
from dualforge.eval.retrieval_eval import evaluate_embeddings, judged_query_ids
from dualforge.modeling import DualEncoder, load_model

BUDGET_METRIC = "ndcg@10"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("eval", help="evaluate a model on a BEIR split")
    p.add_argument("--model", default="minilm", help="model name or folder")
    p.add_argument(
        "--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--dims", default="", help="comma-separated prefix dims, e.g. 32,64,128")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="override max_seq_length")
    p.add_argument("--k", type=int, default=100, help="retrieve this many documents per query")
    p.add_argument("--output", default=None, help="write the JSON report here")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    p.add_argument("--plot", default=None, help="write a PNG of ndcg@10 by dim (needs --dims)")
    p.add_argument("--compare", default=None, help="a second model, evaluated at the same dims")
    p.add_argument(
        "--funnel", default=None, help="Matryoshka funnel dims:keep,..., e.g. 32:200,64:100,384:10"
    )
    p.add_argument("--index-factory", default="Flat", help="faiss factory of the first stage")
    p.add_argument("--index-params", default=None, help="faiss search params, e.g. efSearch=128")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="TOL",
        help=f"choose the cheapest cascade within TOL relative {BUDGET_METRIC} loss on the dev split",
    )
    p.add_argument("--dev-split", default="dev", help="split that --budget chooses on")
    p.add_argument(
        "--budget-confidence",
        type=float,
        default=None,
        metavar="P",
        help="--budget passes a cascade only if the one-sided P lower confidence bound of its "
        "paired per-query loss is within TOL (e.g. 0.9; default: the dev mean)",
    )
    p.add_argument(
        "--budget-cv",
        type=int,
        default=None,
        metavar="K",
        help="no dev split: cross-validate --budget over K folds of the evaluated queries "
        "(choose on K-1 folds, score on the held-out one) and report the pooled result",
    )
    p.set_defaults(func=run)


def parse_dims(text: str) -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--dims must be comma-separated integers, got {text!r}") from None


@dataclass
class EncodedSplit:
    """A split's judged queries and its corpus, encoded once."""

    query_ids: list[str]
    doc_ids: list[str]
    queries: np.ndarray  # (Q, D)
    docs: np.ndarray  # (N, D)
    metric: str  # "cos" for a normalising model, else "ip"


def encode_split(
    model: DualEncoder, data: EvalSet, batch_size: int, docs: np.ndarray | None = None
) -> EncodedSplit:
    """Encode ``data``'s judged queries and (unless ``docs`` is given) its corpus."""
    qids = judged_query_ids(data.qrels, data.queries)
    if not qids:
        raise SystemExit("no query with judgments in the qrels has a text in the queries")
    doc_ids = list(data.corpus)
    q_emb = model.encode([data.queries[q] for q in qids], "query", batch_size, True)  # (Q, D)
    if docs is None:
        docs = model.encode([data.corpus[d] for d in doc_ids], "document", batch_size, True)
    metric = "cos" if model.query_encoder.normalize else "ip"
    return EncodedSplit(qids, doc_ids, q_emb, docs, metric)


def evaluate_model(
    name: str, args: argparse.Namespace, data: EvalSet, cfg: EvalConfig
) -> tuple[dict[str, Any], EncodedSplit, DualEncoder]:
    """Load, encode and evaluate one model: its report dict, embeddings and the model."""
    model = load_model(name, max_seq_length=args.max_length)
    enc = encode_split(model, data, cfg.batch_size)
    report = evaluate_embeddings(
        enc.queries,
        enc.docs,
        enc.query_ids,
        enc.doc_ids,
        data.qrels,
        k=cfg.k,
        metrics=cfg.metrics,
        dims=list(cfg.dims) or None,
        metric=enc.metric,
    )
    return report.to_dict(), enc, model


def funnel_report(
    enc: EncodedSplit,
    data: EvalSet,
    stages: tuple[Stage, ...],
    metrics: tuple[str, ...],
    factory: str,
    params: str | None = None,
) -> dict[str, Any]:
    """Run a funnel and exact search at the same depth; metrics, FLOPs and wall times."""
    try:
        funnel = Funnel(enc.docs, stages, factory=factory, metric=enc.metric, params=params)
    except ValueError as err:
        raise SystemExit(f"--funnel: {err}") from None
    result = funnel.search(enc.queries)
    depth = result.ids.shape[1]
    start = time.perf_counter()
    exact = exact_search(enc.queries, enc.docs, depth, metric=enc.metric)  # (Q, depth)
    exact_seconds = time.perf_counter() - start
    full = exact_flops(len(enc.doc_ids), enc.docs.shape[1])

    def scored(scores: np.ndarray, ids: np.ndarray) -> dict[str, float]:
        return evaluate(
            data.qrels, run_from_search(enc.query_ids, enc.doc_ids, scores, ids), metrics
        )

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


def _check_budget(args: argparse.Namespace) -> None:
    folder = Path(args.data)
    if args.budget_cv is not None:
        if args.budget_cv < 2:
            raise SystemExit(f"--budget-cv needs at least 2 folds, got {args.budget_cv}")
    elif args.dev_split not in available_splits(folder):
        raise SystemExit(
            f"--budget needs a dev split to choose the cascade on: {folder}/qrels/"
            f"{args.dev_split}.tsv does not exist (name another split with --dev-split)"
        )
    if args.budget_cv is None and args.dev_split == args.split:
        raise SystemExit(f"--budget must choose on a split other than --split {args.split!r}")
    if not 0 <= args.budget < 1:
        raise SystemExit(f"--budget must be in [0, 1), got {args.budget}")
    if args.budget_confidence is not None and not 0 < args.budget_confidence < 1:
        raise SystemExit(f"--budget-confidence must be in (0, 1), got {args.budget_confidence}")


def budget_report(
    model: DualEncoder, enc: EncodedSplit, data: EvalSet, args: argparse.Namespace, cfg: EvalConfig
) -> dict[str, Any]:
    """Choose the cheapest cascade on the dev split, then run it on the evaluated split."""
    dev = load_eval_set(Path(args.data), args.dev_split, args.skip_bad)
    if list(dev.corpus) != enc.doc_ids:
        raise SystemExit(f"the {args.dev_split!r} corpus differs from the {args.split!r} one")
    dev_enc = encode_split(model, dev, cfg.batch_size, docs=enc.docs)
    quality = qrels_quality(
        dev.qrels, dev_enc.query_ids, dev_enc.doc_ids, BUDGET_METRIC,
        per_query=args.budget_confidence is not None,
    )  # fmt: skip
    choice = choose_cascade(
        enc.docs,
        dev_enc.queries,
        quality,
        tolerance=args.budget,
        k=10,
        metric=enc.metric,
        factory=args.index_factory,
        params=args.index_params,
        confidence=args.budget_confidence,
    )
    chosen = parse_funnel_spec(choice.chosen.spec)
    return {
        "tolerance": args.budget,
        "confidence": args.budget_confidence,
        "dev_split": args.dev_split,
        "select_metric": BUDGET_METRIC,
        "chosen": choice.chosen.to_dict(),
        "reference": choice.reference.to_dict(),
        "trials": [t.to_dict() for t in choice.trials],
        "test": funnel_report(
            enc, data, chosen, cfg.metrics, args.index_factory, args.index_params
        ),
    }


def budget_cv_report(enc: EncodedSplit, data: EvalSet, args: argparse.Namespace) -> dict[str, Any]:
    """Cross-validate the budget mode over the evaluated split's queries."""
    if args.budget_cv > len(enc.query_ids):
        raise SystemExit(
            f"--budget-cv {args.budget_cv} exceeds the {len(enc.query_ids)} judged queries"
        )
    cv = cross_validate_cascade(
        enc.docs, enc.queries, data.qrels, enc.query_ids, enc.doc_ids, folds=args.budget_cv,
        tolerance=args.budget, confidence=args.budget_confidence, metric=enc.metric,
        quality_metric=BUDGET_METRIC,
    )  # fmt: skip
    return {
        "tolerance": args.budget,
        "confidence": args.budget_confidence,
        "folds": [asdict(f) for f in cv.folds],
        "select_metric": BUDGET_METRIC,
        "quality": cv.quality,
        "exact_quality": cv.exact_quality,
        "flops_ratio": cv.flops_ratio,
    }


def _plot(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from dualforge.eval.plots import plot_metric_by_dim

    def series(r: dict[str, Any]) -> dict[str, dict[str, float]]:
        return {**r["metrics_by_dim"], str(r["embedding_dim"]): r["metrics"]}

    lines = {args.model: series(report)}
    if "compare" in report:
        label = args.compare if args.compare != args.model else f"{args.compare} (compare)"
        lines[label] = series(report["compare"])
    plot_metric_by_dim(lines, args.plot, metric="ndcg@10")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (and optionally write) the JSON report."""
    stages = _parse_funnel(args.funnel)
    if args.plot and not args.dims:
        raise SystemExit("--plot needs --dims (the prefix dims to plot)")
    if args.budget is not None:
        _check_budget(args)
    data = load_eval_set(Path(args.data), args.split, args.skip_bad)
    cfg = EvalConfig(k=args.k, batch_size=args.batch_size, dims=parse_dims(args.dims))
    report, enc, model = evaluate_model(args.model, args, data, cfg)
    report.update(model=args.model, data=args.data, split=args.split)
    if args.compare:
        report["compare"] = {
            **evaluate_model(args.compare, args, data, cfg)[0],
            "model": args.compare,
        }
    if stages is not None:
        report["funnel"] = funnel_report(
            enc, data, stages, cfg.metrics, args.index_factory, args.index_params
        )
    if args.budget is not None and args.budget_cv is not None:
        report["budget_cv"] = budget_cv_report(enc, data, args)
    elif args.budget is not None:
        report["budget"] = budget_report(model, enc, data, args, cfg)
    if args.plot:
        _plot(args, report)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _parse_funnel(spec: str | None) -> tuple[Stage, ...] | None:
    if spec is None:
        return None
    try:
        return parse_funnel_spec(spec)
    except ValueError as err:
        raise SystemExit(f"--funnel: {err}") from None
