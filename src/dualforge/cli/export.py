"""``dualforge export``: turn a training checkpoint into a sentence-transformers folder."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from dualforge.cli.flags import check_new_folder
from dualforge.config import load_config
from dualforge.errors import UsageError
from dualforge.files import atomic_folder
from dualforge.modeling.model_card import model_card, run_facts, write_model_card
from dualforge.train.checkpoint import WEIGHTS, checkpoints, latest_checkpoint, load_weights
from dualforge.train.components import build_model
from dualforge.train.kinds import kind_of


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("export", help="checkpoint -> sentence-transformers folder")
    p.add_argument("run_dir", help="a run folder (holding config.yaml and checkpoints/)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the newest)")
    p.add_argument("--output", required=True, help="folder to write (must not exist, or be empty)")
    p.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA runs: write the adapters alone (a peft folder), not the merged model",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Rebuild the run's model, load the checkpoint weights, save."""
    run_dir = Path(args.run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UsageError(f"{config} not found: is {run_dir} a dualforge run folder?")
    full = load_config(config)
    cfg = full.model
    if args.adapter:
        if not cfg.lora.enabled:
            raise UsageError(f"--adapter: the run in {run_dir} trained no LoRA adapters")
        cfg = replace(cfg, lora=replace(cfg.lora, export="adapter"))  # the config's own checks
    out = Path(args.output)
    check_new_folder(out, "--output")
    ckpt = Path(args.checkpoint) if args.checkpoint else newest_weights(run_dir)
    model = build_model(cfg)
    load_weights(ckpt, model)
    with atomic_folder(out) as tmp:
        kind_of(cfg).save(model, tmp, cfg.lora.adapter_export)
        card = model_card(full.to_dict(), run=run_facts(model), model_path=args.output)
        write_model_card(tmp, card)
    print(f"exported {ckpt} to {args.output}")
    return 0


def newest_weights(run_dir: Path) -> Path:
    """The checkpoint ``latest`` names, else the newest one with weights.

    Raises:
        UsageError: The run has no checkpoint with weights (saying when ``final/`` is there).
    """
    folder = run_dir / "checkpoints"
    named = latest_checkpoint(folder)
    found = [named] if named is not None else []
    found += [c for c in checkpoints(folder) if c != named]
    for ckpt in found:
        if (ckpt / WEIGHTS).is_file():
            return ckpt
    final = run_dir / "final"
    usable = (
        f"; {final} is the trained model already, a sentence-transformers folder to load or copy"
        if final.is_dir()
        else ""
    )
    raise UsageError(f"no checkpoint with {WEIGHTS} under {folder}{usable}")
