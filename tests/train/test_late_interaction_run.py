"""A late-interaction run end to end: train, evaluate by token dim, export, reload, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualforge.config import ConfigError, load_config
from dualforge.modeling.late_io import load_late_model
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides

LATE = [
    "model.kind=late_interaction", "model.token_dim=16", "model.query_max_length=12",
    "model.doc_max_length=24", "eval.dims=[8,16]", "gradcache.precision=fp32",
    "loss.matryoshka.dims=[8,16]",
]  # fmt: skip


def test_a_late_interaction_run_learns_and_reports_every_token_dim(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    cfg = load_config(None, [*tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), *LATE])
    result = train(cfg)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert set(report["metrics_by_dim"]) == {"8", "16"}
    assert report["metrics"]["ndcg@10"] > report["before"]["ndcg@10"]  # it learned
    losses = [
        r for r in read_metrics_log(result.run_dir / "metrics.jsonl") if r["event"] == "train"
    ]
    assert set(losses[0]["loss_by_dim"]) == {"8", "16"}
    model = load_late_model(result.run_dir / "final")
    assert model.dim == 16 and model.query_max_length == 12


def test_late_interaction_refuses_what_it_does_not_have() -> None:
    with pytest.raises(ConfigError, match="one tied tower"):
        load_config(None, ["model.kind=late_interaction", "model.tied=false"])


def test_a_late_interaction_run_mines_its_negatives(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """The miner indexes the pooled token vectors (one per document); the loss scores the mined
    negatives by MaxSim. Known positives are never drawn."""
    mining = ["mining.strategy=refresh", "mining.refresh_every=2", "mining.num_negatives=2",
              "mining.branching=4", "mining.leaf_size=4", "mining.doc_max_length=24",
              "optim.epochs=2", "eval.before=false"]  # fmt: skip
    cfg = load_config(None, [*tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), *LATE, *mining])
    result = train(cfg)
    records = read_metrics_log(result.run_dir / "metrics.jsonl")
    refreshes = [r["step"] for r in records if r["event"] == "mining"]
    assert refreshes[:2] == [1, 3]
    steps = [r for r in records if r["event"] == "train"]
    assert all(r["mined_positive_fraction"] == 0.0 for r in steps)
    assert json.loads((result.run_dir / "report.json").read_text())["metrics"]["ndcg@10"] > 0
