"""Adaptive classification reports: a JSON-ready dict, a Markdown table and an accuracy-vs-dims plot.

The plot needs matplotlib (``pip install 'dualforge[plot]'``), imported only when plotting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dualforge.classify.cascade import (
    NEVER,
    OperatingPoint,
    cascade_evaluate,
    fixed_dim_accuracy,
    oracle,
)
from dualforge.classify.data import UNSEEN_ID

PLOT_HINT = "pip install 'dualforge[plot]'"


def build_report(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dims: Sequence[int],
    points: Sequence[OperatingPoint],
) -> dict[str, Any]:
    """Fixed-dim accuracies, every cascade operating point, and the oracle, as plain data.

    Args:
        logits: ``(M, B, C)`` logits of the evaluated set.
        targets: ``(B,)`` class ids (``-1``: a label unseen in training, always wrong).
        dims: The ``M`` nesting dims.
        points: Fitted operating points.

    Returns:
        ``{"num_examples", "num_unseen", "dims", "fixed", "cascade", "oracle"}``; accuracies are
        fractions in ``[0, 1]``.
    """
    fixed = fixed_dim_accuracy(logits, targets).tolist()
    cascades = []
    for point in points:
        res = cascade_evaluate(logits, targets, dims, point.thresholds)
        cascades.append(
            {
                "tolerance": point.tolerance,
                "target": point.target,
                "thresholds": list(point.thresholds),
                "accuracy": res.accuracy,
                "expected_dims": res.expected_dims,
                "stop_fraction": list(res.stop_fraction),
            }
        )
    orc = oracle(logits, targets, dims)
    return {
        "num_examples": len(targets),
        "num_unseen": int((targets == UNSEEN_ID).sum()),
        "dims": list(dims),
        "fixed": [{"dim": m, "accuracy": a} for m, a in zip(dims, fixed)],
        "cascade": cascades,
        "oracle": {
            "accuracy": orc.accuracy,
            "expected_dims": orc.expected_dims,
            "expected_dims_correct": orc.expected_dims_correct,
            "first_correct_fraction": list(orc.first_correct_fraction),
        },
    }


def _thresholds_text(thresholds: Sequence[float]) -> str:
    shown = ["never" if t >= NEVER else f"{t:.3f}" for t in thresholds[:-1]]
    return " / ".join(shown) if shown else "-"


def markdown_table(report: dict[str, Any], title: str | None = None) -> str:
    """A Markdown table of a :func:`build_report` dict.

    Rows: each fixed dim, each cascade operating point (with its thresholds, the last dim having
    none, and the share stopping at each dim), and the oracle. Accuracies are in percent.

    Args:
        report: The report.
        title: An optional heading line.

    Returns:
        The Markdown text.
    """
    dims = report["dims"]
    lines = [f"### {title}", ""] if title else []
    lines += [
        f"{report['num_examples']} examples"
        + (
            f" ({report['num_unseen']} with labels unseen in training)"
            if report["num_unseen"]
            else ""
        )
        + f"; nesting dims {', '.join(str(m) for m in dims)}.",
        "",
        "| method | accuracy (%) | expected dims | thresholds (dims before the last) | stop share per dim (%) |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for row in report["fixed"]:
        lines.append(f"| fixed dim {row['dim']} | {100 * row['accuracy']:.2f} | {row['dim']} | | |")
    for row in report["cascade"]:
        stops = " / ".join(f"{100 * s:.0f}" for s in row["stop_fraction"])
        lines.append(
            f"| cascade, tolerance {row['tolerance']:g} | {100 * row['accuracy']:.2f} "
            f"| {row['expected_dims']:.1f} | {_thresholds_text(row['thresholds'])} | {stops} |"
        )
    orc = report["oracle"]
    first = " / ".join(f"{100 * s:.0f}" for s in orc["first_correct_fraction"])
    lines.append(
        f"| oracle (smallest correct dim) | {100 * orc['accuracy']:.2f} "
        f"| {orc['expected_dims']:.1f} | | {first} |"
    )
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Save a PNG of accuracy against expected dims: fixed dims, the cascade curve, the oracle.

    Args:
        report: A :func:`build_report` dict.
        path: The PNG to write (parent folders are created).
        title: Plot title.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"plotting needs matplotlib: {PLOT_HINT}") from err
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fixed = report["fixed"]
    ax.plot(
        [r["dim"] for r in fixed], [100 * r["accuracy"] for r in fixed], "o-", label="fixed dim"
    )
    cascade = sorted(report["cascade"], key=lambda r: r["expected_dims"])
    if cascade:
        ax.plot(
            [r["expected_dims"] for r in cascade],
            [100 * r["accuracy"] for r in cascade],
            "s--",
            label="adaptive cascade",
        )
    orc = report["oracle"]
    ax.plot([orc["expected_dims"]], [100 * orc["accuracy"]], "*", markersize=14, label="oracle")
    ax.set_xscale("log", base=2)
    ax.set_xticks(report["dims"], [str(m) for m in report["dims"]])
    ax.set_xlabel("expected dims per example")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
