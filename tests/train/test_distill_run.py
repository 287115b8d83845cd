"""Distillation runs end to end on the FlagEmbedding samples (stored teacher scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualforge.config import ConfigError, load_config
from dualforge.errors import UserError
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides


def _distill(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *tiny_overrides(model, data.parent, out),
        f"data.train_file={data}",
        "data.format=jsonl",
        "data.num_negatives=3",
        "optim.batch_size=4",
        "optim.max_steps=4",
        "eval.every=0",
        "eval.before=false",
        "loss.name=kl",
        *extra,
    ]


@pytest.mark.parametrize("loss", ["kl", "margin_mse"])
def test_a_kl_run_on_stored_scores_trains_and_logs_the_teacher(
    tiny_model_dir: Path, shared_data: Path, tmp_path: Path, loss: str
) -> None:
    data = shared_data / "hn-samples" / "msmarco.jsonl"
    extra = ["loss.distill.normalize=zscore", "loss.distill.weight=0.5", f"loss.name={loss}"]
    cfg = load_config(None, _distill(tiny_model_dir, data, tmp_path, *extra))
    result = train(cfg)
    rows = read_metrics_log(result.run_dir / "metrics.jsonl")
    start = next(r for r in rows if r["event"] == "start")
    teacher = start["teacher"]
    assert teacher["normalize"] == "zscore" and teacher["examples"] == 10
    assert 0 <= teacher["low"] < teacher["high"] - 5 < 101  # a reranker on a 0-100 scale
    assert (teacher["top_probability"] is None) == (loss == "margin_mse")
    steps = [r for r in rows if r["event"] == "train"]
    assert len(steps) == 4
    assert all({"distill", "info_nce"} <= set(r) for r in steps), steps[0]
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["resolved"]["teacher"]["normalize"] == "zscore"
    card = (result.run_dir / "final" / "README.md").read_text()
    assert "### Distillation" in card and "| normalisation (per query) | zscore |" in card


def test_saturated_or_normalised_scores_are_warned_about(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "minmaxed.jsonl"
    rows = [
        {"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}a", f"n{i}b"], "scores": [1, 0.3, 0]}
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, _distill(tiny_model_dir, path, tmp_path, "optim.max_steps=1",
                                     "data.num_negatives=2", "loss.distill.teacher_temperature=0.01"))  # fmt: skip
    train(cfg)
    err = capsys.readouterr().err
    assert "look minmax-normalised already" in err
    assert "the teacher softmax saturates" in err


def test_data_without_scores_is_refused_before_training(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [{"query": "a", "pos": ["p"], "neg": ["n"], "scores": [2, 1]},
            {"query": "b", "pos": ["p2"], "neg": ["n2"]}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, _distill(tiny_model_dir, path, tmp_path, "data.num_negatives=1"))
    with pytest.raises(UserError, match=r"1 of 2 have none \(the first: query 'b'\)"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.format=beir"], "data.format='beir' has none"),
        (["data.num_negatives=0"], r"set data.num_negatives >= 1"),
        (["loss.distill.teacher_temperature=0"], r"loss.distill.teacher_temperature=0.0: must be > 0"),
        (["loss.distill.weight=-1"], r"loss.distill.weight=-1.0: must be >= 0"),
    ],
)  # fmt: skip
def test_distillation_settings_are_checked(overrides: list[str], message: str) -> None:
    base = ["loss.name=kl", "data.format=jsonl", "data.num_negatives=2"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *overrides])
