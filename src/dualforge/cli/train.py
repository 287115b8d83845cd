"""``dualforge train CONFIG [key=value ...]``: fine-tune, evaluate, export."""

from __future__ import annotations

import argparse
import json

from dualforge.cli.flags import add_run_flags, overrides_with_flags
from dualforge.config import load_config
from dualforge.train.inputs import check_inputs
from dualforge.train.loop import train


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("train", help="fine-tune a model from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-5")
    add_run_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the config and its paths, train, and print where the report went."""
    cfg = load_config(args.config, overrides_with_flags(args))
    check_inputs(cfg)
    result = train(cfg)
    print(
        json.dumps(
            {"before": (result.before or {}).get("metrics"), "after": result.after.get("metrics")},
            indent=2,
        )
    )
    print(
        f"report: {result.run_dir / 'report.json'}  ({result.steps} steps, {result.seconds / 60:.1f} min)"
    )
    return 0
