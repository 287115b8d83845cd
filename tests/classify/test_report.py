"""Report dict, Markdown table and the PNG plot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dualforge.classify import (
    NEVER,
    OperatingPoint,
    build_report,
    cascade_evaluate,
    markdown_table,
    oracle,
    plot_report,
)

DIMS = (8, 16, 32)


def _report() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (50,), generator=g)
    logits = torch.randn(3, 50, 4, generator=g)
    logits[2, torch.arange(50), targets] += 3.0
    targets[0] = -1  # a label unseen in training
    points = [
        OperatingPoint(0.0, 0.9, (NEVER, 0.8, 0.0)),
        OperatingPoint(0.1, 0.8, (0.5, 0.4, 0.0)),
    ]
    report = build_report(logits, targets, DIMS, points)
    report["_check"] = (logits, targets, points)
    return report


def test_report_matches_the_cascade_and_oracle_functions() -> None:
    report = _report()
    logits, targets, points = report.pop("_check")  # type: ignore[misc]
    assert (
        report["num_examples"] == 50 and report["num_unseen"] == 1 and report["dims"] == [8, 16, 32]
    )
    assert [r["dim"] for r in report["fixed"]] == [8, 16, 32]  # type: ignore[index,union-attr]
    for row, point in zip(report["cascade"], points):  # type: ignore[arg-type]
        res = cascade_evaluate(logits, targets, DIMS, point.thresholds)
        assert row["accuracy"] == res.accuracy and row["expected_dims"] == res.expected_dims
        assert row["thresholds"] == list(point.thresholds)
    assert report["oracle"]["accuracy"] == oracle(logits, targets, DIMS).accuracy  # type: ignore[index]


def test_markdown_table_rows() -> None:
    report = _report()
    report.pop("_check")
    text = markdown_table(report, "demo")
    assert text.startswith("### demo\n")
    assert "50 examples (1 with labels unseen in training)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 3 + 2 + 1  # header and rule, fixed dims, cascades, oracle
    assert rows[2].startswith("| fixed dim 8 |")
    assert "| cascade, tolerance 0 |" in text and "never / 0.800" in text
    assert rows[-1].startswith("| oracle (smallest correct dim) |")


def test_plot_writes_png(tmp_path: Path) -> None:
    report = _report()
    report.pop("_check")
    out = plot_report(report, tmp_path / "sub" / "plot.png", "demo")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report()
    report.pop("_check")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'dualforge\[plot\]'"):
        plot_report(report, tmp_path / "plot.png")
