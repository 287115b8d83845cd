"""``dualforge classify``: Matryoshka adaptive classification heads over a frozen encoder.

``classify train`` embeds a labelled JSONL split once, trains MRL / MRL-E heads, fits cascade
thresholds on a stratified held-out part, and saves everything under ``--out``;
``classify eval`` scores the saved heads, every fixed dim, every cascade and the oracle on a split.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dualforge.classify import (
    DEFAULT_TOLERANCES,
    FitConfig,
    HeadTrainConfig,
    encode_texts,
    evaluate_classifier,
    fit_classifier,
    load_heads,
    load_labelled,
    markdown_table,
    plot_report,
    save_heads,
)
from dualforge.classify.heads import KINDS
from dualforge.classify.pipeline import points_from_json, points_to_json
from dualforge.errors import UsageError
from dualforge.modeling import DualEncoder, load_model


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``classify`` with its ``train`` and ``eval`` subcommands."""
    p = subparsers.add_parser("classify", help="Matryoshka adaptive classification heads")
    sub = p.add_subparsers(dest="classify_command", required=True)
    _add_train(sub)
    _add_eval(sub)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with SPLIT.jsonl, or one JSONL file")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    p.add_argument("--max-length", type=int, default=None, help="override max_seq_length")
    p.add_argument("--cache", default=None, help="folder caching embeddings per split")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train heads and fit cascade thresholds")
    p.add_argument("--model", default="minilm", help="encoder name or folder (kept frozen)")
    _add_common(p)
    p.add_argument("--split", default="train")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label", default="label", help="label field, e.g. label or coarse")
    p.add_argument("--kind", choices=KINDS, default="mrl")
    p.add_argument(
        "--dims",
        default="",
        help="nesting dims, e.g. 8,16,32,64,128,256,384 (default: powers of two from 32 below "
        "the embedding width, then the width)",
    )
    p.add_argument(
        "--normalize",
        choices=("auto", "on", "off"),
        default="auto",
        help="L2-normalise each prefix (auto: when the encoder normalises)",
    )
    p.add_argument("--heldout", type=float, default=0.2, help="held-out share for thresholds")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, init and order")
    p.add_argument("--epochs", type=int, default=HeadTrainConfig.epochs)
    p.add_argument("--lr", type=float, default=HeadTrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=HeadTrainConfig.weight_decay)
    p.add_argument(
        "--head-batch-size",
        type=int,
        default=HeadTrainConfig.batch_size,
        help="minibatch size of head training; 0 = full batch",
    )
    p.add_argument("--tolerances", default=",".join(f"{t:g}" for t in DEFAULT_TOLERANCES))
    p.add_argument("--out", required=True, help="output folder for the heads")
    p.set_defaults(func=run_train)


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="score saved heads and cascades on a split")
    p.add_argument("--heads", required=True, help="folder written by classify train")
    p.add_argument("--model", default=None, help="encoder (default: the one the heads used)")
    _add_common(p)
    p.add_argument("--split", default="test")
    p.add_argument(
        "--unseen",
        choices=("error", "count"),
        default="error",
        help="labels unseen in training: fail, or count them as errors",
    )
    p.add_argument("--output", default=None, help="write the JSON report (and a .md) here")
    p.add_argument("--plot", default=None, help="write an accuracy-vs-dims PNG here")
    p.set_defaults(func=run_eval)


def parse_numbers(text: str, kind: type[int] | type[float], flag: str) -> list[Any]:
    """``"8,16"`` -> ``[8, 16]`` (``kind`` int or float); exits naming ``flag`` on bad input."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def split_file(data: str, split: str) -> Path:
    """``data`` itself when it is a file, else ``data/SPLIT.jsonl``."""
    path = Path(data)
    return path if path.is_file() else path / f"{split}.jsonl"


def _embed(model: DualEncoder, name: str, texts: Sequence[str], split: str, args: Any) -> Any:
    cache = Path(args.cache) / f"{split}.safetensors" if args.cache else None
    return encode_texts(model, texts, args.batch_size, not args.no_progress, cache, name)


def run_train(args: argparse.Namespace) -> int:
    """Train heads, fit thresholds, save them, print the held-out table."""
    model = load_model(args.model, max_seq_length=args.max_length)
    path = split_file(args.data, args.split)
    data = load_labelled(path, args.text_field, args.label, args.skip_bad)
    normalize = {"on": True, "off": False}.get(args.normalize, model.query_encoder.normalize)
    train_cfg = HeadTrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.head_batch_size or None,
        seed=args.seed,
    )
    dims = parse_numbers(args.dims, int, "--dims")
    cfg = FitConfig(
        kind=args.kind,
        dims=tuple(dims) or None,
        normalize=normalize,
        heldout=args.heldout,
        split_seed=args.seed,
        tolerances=tuple(parse_numbers(args.tolerances, float, "--tolerances")),
        train=train_cfg,
    )
    emb = _embed(model, args.model, data.texts, args.split, args)
    fitted = fit_classifier(emb, data, cfg, show_progress=not args.no_progress)
    extra = {
        "model": args.model,
        "max_length": args.max_length,
        "text_field": args.text_field,
        "label_field": args.label,
        "data": str(path),
        "train": {**asdict(train_cfg), "heldout": args.heldout, "final_loss": fitted.history[-1]},
        "operating_points": points_to_json(fitted.points),
    }
    out = save_heads(args.out, fitted.heads, fitted.labels, extra)
    table = markdown_table(fitted.heldout_report, f"held-out split of {path}")
    _write(out / "heldout.json", json.dumps(fitted.heldout_report, indent=2) + "\n")
    _write(out / "heldout.md", table)
    print(table)
    print(f"saved {fitted.heads.kind} heads, dims {list(fitted.heads.dims)}, to {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Score saved heads on a split; print the table, optionally write JSON, Markdown and PNG."""
    heads, meta = load_heads(args.heads)
    name = args.model or meta.get("model", "minilm")
    model = load_model(name, max_seq_length=args.max_length or meta.get("max_length"))
    path = split_file(args.data, args.split)
    data = load_labelled(
        path, meta.get("text_field", "text"), meta.get("label_field", "label"), args.skip_bad
    )
    emb = _embed(model, name, data.texts, args.split, args)
    points = points_from_json(meta.get("operating_points", []))
    with torch.no_grad():
        report = evaluate_classifier(heads, emb, data, meta["labels"], points, args.unseen)
    report.update(model=name, heads=str(args.heads), kind=heads.kind, data=str(path))
    title = f"{heads.kind} heads on {path}"
    table = markdown_table(report, title)
    if args.output:
        _write(Path(args.output), json.dumps(report, indent=2) + "\n")
        _write(Path(args.output).with_suffix(".md"), table)
    if args.plot:
        plot_report(report, args.plot, title)
    print(table)
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
