"""Run outputs: ``report.json`` (machine-readable) and ``summary.md`` (for people)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dualforge.config import Config
from dualforge.files import write_text_atomic


def write_report(
    run_dir: Path,
    cfg: Config,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    steps: int,
    seconds: float,
    resolved: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.json`` and ``summary.md`` under ``run_dir``; return the JSON path.

    ``report.json`` holds ``metrics`` (after training, the headline), ``metrics_by_dim`` when
    dims were evaluated, ``before`` (zero-shot metrics), the config, steps and wall time, and
    ``resolved``: choices the run made from ``auto`` settings on this machine (e.g. the mining
    backend), which a result may depend on.
    """
    report = {
        "metrics": after.get("metrics", {}),
        "metrics_by_dim": after.get("metrics_by_dim", {}),
        "before": (before or {}).get("metrics"),
        "before_by_dim": (before or {}).get("metrics_by_dim"),
        "steps": steps,
        "seconds": round(seconds, 1),
        "config": cfg.to_dict(),
        "resolved": dict(resolved or {}),
    }
    path = run_dir / "report.json"
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(run_dir / "summary.md", summary_markdown(cfg, report))
    return path


def summary_markdown(cfg: Config, report: dict[str, Any]) -> str:
    """A short Markdown summary: metrics before and after training."""
    after: dict[str, float] = report["metrics"]
    before: dict[str, float] | None = report["before"]
    lines = [
        f"# Run `{cfg.run.name}`",
        "",
        f"Model `{cfg.model.name}` fine-tuned on `{cfg.data.path}` "
        f"({report['steps']} steps, batch {cfg.optim.batch_size}, "
        f"GradCache chunk {cfg.gradcache.chunk_size}, {report['seconds'] / 60:.1f} min).",
        "",
        "| metric | before | after | change |",
        "| --- | --- | --- | --- |",
    ]
    for name, value in after.items():
        old = before.get(name) if before else None
        change = f"{100 * (value - old):+.2f} pts" if old is not None else ""
        old_text = f"{old:.4f}" if old is not None else ""
        lines.append(f"| {name} | {old_text} | {value:.4f} | {change} |")
    if report.get("resolved"):
        chosen = ", ".join(f"{k} = {v}" for k, v in report["resolved"].items())
        lines += ["", f"Resolved on this machine: {chosen}."]
    return "\n".join(lines) + "\n"
