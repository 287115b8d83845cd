"""``dualforge eval``: retrieval metrics of a model on a BEIR split, optionally per Matryoshka dim.

Parses the options and calls :mod:`dualforge.eval.reports`: the queries and corpus are encoded
once; the per-dim metrics, the plot, the funnel and the budget search all reuse those embeddings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dualforge.cli.flags import check_prefix_dims, retrieval_kind
from dualforge.data import EvalSet, load_eval_sets
from dualforge.errors import UsageError
from dualforge.eval.late_search import late_report
from dualforge.eval.metrics import DEFAULT_METRICS
from dualforge.eval.plots import plot_eval_report
from dualforge.eval.reports import (
    BUDGET_METRIC,
    EncodedSplit,
    TextEncoder,
    budget_cv_report,
    budget_report,
    check_budget,
    encode_split,
    evaluate_encoded,
    funnel_report,
)
from dualforge.eval.retrieval import Stage, parse_funnel_spec
from dualforge.files import blocked, write_text_atomic
from dualforge.hardware import resolve_device
from dualforge.modeling import load_model, resolve_model_path
from dualforge.modeling.encoder import search_metric
from dualforge.modeling.late_io import load_late_model


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
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
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
        "--candidates",
        action="store_true",
        help="late-interaction models: also search with a token-level --index-factory index, "
        "then rerank by exact MaxSim (PLAID-style), and report the candidate stage's recall",
    )
    p.add_argument("--k-token", type=int, default=64, help="--candidates: tokens per query token")
    p.add_argument(
        "--candidate-dim",
        type=int,
        default=None,
        help="--candidates: token dims of the candidate index (a Matryoshka prefix)",
    )
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
        raise UsageError(f"--dims must be comma-separated integers, got {text!r}") from None


@contextmanager
def usage_errors(prefix: str = "") -> Iterator[None]:
    """Report the library's ``ValueError`` about an option as the command's one-line exit."""
    try:
        yield
    except ValueError as err:
        raise UsageError(f"{prefix}{err}") from None


def _evaluate(
    name: str, args: argparse.Namespace, data: EvalSet, dims: tuple[int, ...]
) -> tuple[dict[str, Any], EncodedSplit, TextEncoder]:
    """Load, encode and evaluate one model: its report dict, embeddings and its encoder."""
    model = load_model(name, max_seq_length=args.max_length).to(
        resolve_device(args.device, "--device")
    )
    check_prefix_dims("--dims", dims, model.dim)

    def encode(texts: list[str], side: str) -> np.ndarray:
        return model.encode(
            texts, "query" if side == "query" else "document", args.batch_size, True
        )

    with usage_errors():
        enc = encode_split(encode, search_metric(model), data)
    report = evaluate_encoded(enc, data.qrels, k=args.k, metrics=DEFAULT_METRICS, dims=dims)
    return report.to_dict(), enc, encode


def check_output_file(output: str | None) -> None:
    """``--output`` can be written: its nearest existing folder is a writable folder.

    Raises:
        UsageError: Naming the flag and the path in the way.
    """
    if output is None:
        return
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"--output {output}: a folder is there (give a file name)")
    problem = blocked(path.parent)
    if problem is not None:
        raise UsageError(f"--output {output}: {problem}")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (and optionally write) the JSON report."""
    check_output_file(args.output)
    if retrieval_kind(args.model).tokens:
        return _emit(args, _late(args))
    stages = _parse_funnel(args.funnel)
    if args.plot and not args.dims:
        raise UsageError("--plot needs --dims (the prefix dims to plot)")
    if args.budget is not None:
        with usage_errors():
            check_budget(
                args.budget, args.budget_confidence, args.budget_cv,
                folder=args.data, split=args.split, dev_split=args.dev_split,
            )  # fmt: skip
    on_dev = args.budget is not None and args.budget_cv is None
    splits = [args.split, args.dev_split] if on_dev else [args.split]
    sets = load_eval_sets(Path(args.data), splits, args.skip_bad)
    data = sets[args.split]
    report, enc, encode = _evaluate(args.model, args, data, parse_dims(args.dims))
    report.update(model=args.model, data=args.data, split=args.split)
    if args.compare:
        compared = _evaluate(args.compare, args, data, parse_dims(args.dims))[0]
        report["compare"] = {**compared, "model": args.compare}
    if stages is not None:
        with usage_errors("--funnel: "):
            report["funnel"] = funnel_report(
                enc, data.qrels, stages, DEFAULT_METRICS, args.index_factory, args.index_params
            )
    with usage_errors():
        report.update(_budget(args, encode, enc, data, sets))
    if args.plot:
        plot_eval_report(report, args.plot, args.model, args.compare)
    return _emit(args, report)


def _late(args: argparse.Namespace) -> dict[str, Any]:
    """The late-interaction report of ``args.model`` (exhaustive MaxSim, optional candidates)."""
    for option in ("funnel", "budget", "compare", "plot"):
        if getattr(args, option) is not None:
            raise UsageError(
                f"--{option} is for single-vector models; {args.model} is late-interaction"
            )
    data = load_eval_sets(Path(args.data), [args.split], args.skip_bad)[args.split]
    model = load_late_model(resolve_model_path(args.model)).to(
        resolve_device(args.device, "--device")
    )
    check_prefix_dims("--dims", parse_dims(args.dims), model.dim)
    with usage_errors():
        report = late_report(
            partial(model.encode, side="query", batch_size=args.batch_size),
            partial(model.encode, side="document", batch_size=args.batch_size, show_progress=True),
            data.corpus, data.queries, data.qrels, k=args.k, dims=parse_dims(args.dims),
            factory=args.index_factory if args.candidates else None, params=args.index_params,
            k_token=args.k_token, candidate_dim=args.candidate_dim,
        )  # fmt: skip
    report.update(model=args.model, data=args.data, split=args.split)
    return report


def _emit(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Print the JSON report (and write it to ``--output``)."""
    text = json.dumps(report, indent=2)
    print(text)  # first: a write that fails loses nothing
    if args.output:
        write_text_atomic(args.output, text + "\n")
    return 0


def _budget(
    args: argparse.Namespace,
    encode: TextEncoder,
    enc: EncodedSplit,
    data: EvalSet,
    sets: dict[str, EvalSet],
) -> dict[str, Any]:
    """``{"budget_cv": ...}``, ``{"budget": ...}`` or nothing, as the options ask."""
    if args.budget is None:
        return {}
    if args.budget_cv is not None:
        cv = budget_cv_report(
            enc, data.qrels, folds=args.budget_cv, tolerance=args.budget,
            confidence=args.budget_confidence,
        )  # fmt: skip
        return {"budget_cv": cv}
    budget = budget_report(
        encode, enc, data.qrels, sets[args.dev_split], tolerance=args.budget,
        confidence=args.budget_confidence, dev_split=args.dev_split,
        metrics=DEFAULT_METRICS, factory=args.index_factory, params=args.index_params,
    )  # fmt: skip
    return {"budget": budget}


def _parse_funnel(spec: str | None) -> tuple[Stage, ...] | None:
    if spec is None:
        return None
    with usage_errors("--funnel: "):
        return parse_funnel_spec(spec)
