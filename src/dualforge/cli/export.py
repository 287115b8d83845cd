"""``dualforge export``: turn a training checkpoint into a sentence-transformers folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualforge.config import load_config
from dualforge.errors import UsageError
from dualforge.train.checkpoint import WEIGHTS, latest_checkpoint, load_weights
from dualforge.train.components import build_model
from dualforge.train.kinds import kind_of


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("export", help="checkpoint -> sentence-transformers folder")
    p.add_argument("run_dir", help="a run folder (holding config.yaml and checkpoints/)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the newest)")
    p.add_argument("--output", required=True, help="folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Rebuild the run's model, load the checkpoint weights, save."""
    run_dir = Path(args.run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UsageError(f"{config} not found: is {run_dir} a dualforge run folder?")
    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None or not (ckpt / WEIGHTS).is_file():
        raise UsageError(f"no checkpoint with {WEIGHTS} under {run_dir / 'checkpoints'}")
    cfg = load_config(config).model
    model = build_model(cfg)
    load_weights(ckpt, model)
    kind_of(cfg).save(model, Path(args.output))
    print(f"exported {ckpt} to {args.output}")
    return 0
