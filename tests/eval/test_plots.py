"""plot_metric_by_dim writes a PNG; bad reports and a missing matplotlib fail clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dualforge.eval.plots import plot_metric_by_dim

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MRL = {"32": {"ndcg@10": 0.51}, "64": {"ndcg@10": 0.58}, "384": {"ndcg@10": 0.64}}
BASE = {"384": {"ndcg@10": 0.65}, "32": {"ndcg@10": 0.31}, "64": {"ndcg@10": 0.47}}


def test_writes_png_with_overlaid_models(tmp_path: Path) -> None:
    out = plot_metric_by_dim({"mrl": MRL, "base": BASE}, tmp_path / "sub" / "dims.png")
    assert out == tmp_path / "sub" / "dims.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000


def test_other_metric_and_title(tmp_path: Path) -> None:
    report = {"16": {"recall@10": 0.2}, "64": {"recall@10": 0.4}}
    out = plot_metric_by_dim({"m": report}, tmp_path / "r.png", metric="recall@10", title="t")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_bad_reports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no report"):
        plot_metric_by_dim({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'mrl' at dim 32 has no 'mrr@10'"):
        plot_metric_by_dim({"mrl": MRL}, tmp_path / "x.png", metric="mrr@10")
    with pytest.raises(ValueError, match="'m' has no dims"):
        plot_metric_by_dim({"m": {}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="dim 'full' is not an integer"):
        plot_metric_by_dim({"m": {"full": {"ndcg@10": 0.5}}}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_matplotlib_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'dualforge\[plot\]'"):
        plot_metric_by_dim({"mrl": MRL}, tmp_path / "x.png")
