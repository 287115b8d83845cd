"""Plots of evaluation reports (matplotlib, optional: ``pip install 'dualforge[plot]'``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

PLOT_HINT = "pip install 'dualforge[plot]'"
MetricsByDim = Mapping[str, Mapping[str, float]]


def _series(label: str, by_dim: MetricsByDim, metric: str) -> tuple[list[int], list[float]]:
    """``(dims ascending, values)`` of one model's ``metrics_by_dim``."""
    points: list[tuple[int, float]] = []
    for key, metrics in by_dim.items():
        try:
            dim = int(key)
        except ValueError:
            raise ValueError(f"{label!r}: dim {key!r} is not an integer") from None
        if metric not in metrics:
            raise ValueError(f"{label!r} at dim {dim} has no {metric!r} (has {sorted(metrics)})")
        points.append((dim, float(metrics[metric])))
    if not points:
        raise ValueError(f"{label!r} has no dims to plot")
    points.sort()
    return [d for d, _ in points], [v for _, v in points]


def plot_metric_by_dim(
    reports: Mapping[str, MetricsByDim],
    path: str | Path,
    *,
    metric: str = "ndcg@10",
    title: str | None = None,
) -> Path:
    """Write a PNG of ``metric`` against the embedding prefix size, one line per model.

    Used to overlay e.g. a Matryoshka model and the base model truncated to the same dims. The
    x axis is log2, each point is labelled with its value.

    Args:
        reports: ``{label: metrics_by_dim}`` with ``metrics_by_dim = {str(dim): {metric: value}}``
            (the ``metrics_by_dim`` of a :class:`~dualforge.eval.RetrievalReport`).
        path: Output ``.png`` file (parent folders are created).
        metric: The metric to plot, e.g. ``"ndcg@10"``.
        title: Figure title (default: ``"<metric> by embedding dim"``).

    Returns:
        The written path.

    Raises:
        ValueError: With no report, a report without dims, a non-integer dim or a missing
            metric.
        ImportError: If matplotlib is not installed.
    """
    if not reports:
        raise ValueError("no report to plot")
    series = {label: _series(label, by_dim, metric) for label, by_dim in reports.items()}
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"plotting needs matplotlib: {PLOT_HINT}") from err
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)  # the Agg canvas: no display and no global backend change
    ax = fig.add_subplot()
    all_dims: set[int] = set()
    for label, (dims, values) in series.items():
        (line,) = ax.plot(dims, values, marker="o", label=label)
        for d, v in zip(dims, values):
            ax.annotate(
                f"{v:.3f}",
                (d, v),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
                color=line.get_color(),
            )
        all_dims.update(dims)
    ax.set_xscale("log", base=2)
    ticks = sorted(all_dims)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(d) for d in ticks])
    ax.minorticks_off()
    ax.margins(y=0.12)
    ax.set_xlabel("embedding dims (prefix)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by embedding dim")
    ax.grid(True, alpha=0.3)
    ax.legend()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def plot_eval_report(
    report: Mapping[str, Any],
    path: str | Path,
    label: str,
    compare_label: str | None = None,
    *,
    metric: str = "ndcg@10",
) -> Path:
    """Plot a ``dualforge eval`` report's ``metric`` by dim, and its ``compare`` report if any.

    Each line is the report's ``metrics_by_dim`` with its full-size ``metrics`` at
    ``embedding_dim``.

    Args:
        report: The report (:meth:`~dualforge.eval.RetrievalReport.to_dict`, optionally with a
            ``"compare"`` report of a second model).
        path: Output ``.png`` file.
        label: Legend label of the report's model.
        compare_label: Legend label of the compared model (suffixed ``" (compare)"`` when it
            equals ``label``).
        metric: The metric to plot.

    Returns:
        The written path.

    Raises:
        ValueError: As :func:`plot_metric_by_dim`.
        ImportError: If matplotlib is not installed.
    """

    def series(r: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
        return {**r["metrics_by_dim"], str(r["embedding_dim"]): r["metrics"]}

    lines = {label: series(report)}
    if "compare" in report:
        other = compare_label or "compare"
        lines[other if other != label else f"{other} (compare)"] = series(report["compare"])
    return plot_metric_by_dim(lines, path, metric=metric)
