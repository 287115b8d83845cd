"""``dualforge validate CONFIG [key=value ...]``: build everything a run needs, train nothing.

In order: the config (every value), then the paths it names, then data and model are loaded.
"""

from __future__ import annotations

import argparse

from dualforge.cli.flags import add_run_flags, overrides_with_flags
from dualforge.config import load_config
from dualforge.train.inputs import check_inputs
from dualforge.train.loop import build_parts


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand."""
    p = subparsers.add_parser("validate", help="check a config: load data and model, train nothing")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    add_run_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the config and its paths, build the run's parts and print what they hold."""
    cfg = load_config(args.config, overrides_with_flags(args))
    check_inputs(cfg)
    parts = build_parts(cfg)
    test = parts.data.test
    print(f"config ok: {args.config}")
    print(f"model: {cfg.model.name} (dim {parts.model.dim}, tied {parts.model.tied})")
    print(f"loss: {parts.gc.loss_fn!r}")
    print(f"training examples: {parts.data.size or 'unknown (a stream)'}; steps: {parts.steps}")
    print(
        f"dev queries: {len(parts.data.dev.queries) if parts.data.dev else 0}; test queries: {len(test.queries) if test else 0}"
    )
    return 0
