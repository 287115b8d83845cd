"""``dualforge eval``: retrieval metrics of a model on a BEIR split, optionally per Matryoshka dim."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dualforge.config import EvalConfig
from dualforge.modeling import load_model
from dualforge.train.evaluation import evaluate_split
from dualforge.train.run_data import load_eval_set


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
    p.set_defaults(func=run)


def parse_dims(text: str) -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--dims must be comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (and optionally write) the JSON report."""
    model = load_model(args.model, max_seq_length=args.max_length)
    data = load_eval_set(Path(args.data), args.split, args.skip_bad)
    cfg = EvalConfig(k=args.k, batch_size=args.batch_size, dims=parse_dims(args.dims))
    report = evaluate_split(model, data, cfg).to_dict()
    report.update(model=args.model, data=args.data, split=args.split)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
