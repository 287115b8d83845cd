"""Runs from a Hugging Face dataset (held and streamed) and with TensorBoard logging: the same
rows as JSONL train the same model; the event files hold what metrics.jsonl holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualforge.config import ConfigError, load_config
from dualforge.errors import UserError
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides

datasets = pytest.importorskip("datasets")


def _rows(beir: Path) -> list[dict[str, str]]:
    """(anchor, positive) rows of the tiny BEIR train split, in qrels order."""
    corpus = {d["_id"]: d for d in map(json.loads, (beir / "corpus.jsonl").open())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (beir / "queries.jsonl").open())}
    rows = []
    for line in (beir / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, doc, _ = line.split("\t")
        text = f"{corpus[doc]['title']} {corpus[doc]['text']}".strip()
        rows.append({"anchor": queries[qid], "positive": text})
    return rows


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics_log(run_dir / "metrics.jsonl") if r["event"] == "train"]


def test_hf_dataset_trains_like_the_same_rows_as_jsonl(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    rows = _rows(tiny_beir)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"query": r["anchor"], "positive": r["positive"]}) + "\n" for r in rows)
    )
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    base = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "optim.epochs=2",
        "eval.before=false",
    ]
    a = train(
        load_config(
            None, [*base, "run.name=jsonl", "data.format=jsonl", f"data.train_file={jsonl}"]
        )
    )
    b = train(
        load_config(
            None, [*base, "run.name=hf", "data.format=hf", f"data.train_file={tmp_path / 'saved'}"]
        )
    )
    assert _losses(a.run_dir) == _losses(b.run_dir) and len(_losses(a.run_dir)) == 6
    assert a.after == b.after


def test_streamed_parquet_trains_and_logs_to_tensorboard(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    datasets.Dataset.from_list(_rows(tiny_beir)).to_parquet(str(tmp_path / "train.parquet"))
    overrides = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), "data.format=hf",
        f"data.train_file={tmp_path / 'train.parquet'}", "data.streaming=true",
        "data.buffer_size=8", "optim.epochs=2", "loss.matryoshka.dims=[32,64]", "eval.dims=[32,64]",
        "run.loggers=[jsonl,tensorboard]",
    ]  # fmt: skip
    result = train(load_config(None, overrides))
    losses = _losses(result.run_dir)
    assert len(losses) == 6  # 24 rows (parquet tells), batches of 8, 2 epochs
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged] == list(range(1, 7))
    assert [v for _, v in logged] == pytest.approx(losses, rel=1e-6)
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_by_dim/32", "eval/test/ndcg@10", "eval/test/ndcg@10/32"} <= tags


def test_streaming_needs_a_length_or_max_steps(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(tiny_beir)))
    base = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "data.format=hf",
        f"data.train_file={path}",
        "data.streaming=true",
    ]
    with pytest.raises(UserError, match=r"optim\.max_steps"):
        train(load_config(None, base))
    result = train(load_config(None, [*base, "optim.max_steps=2", "eval.before=false"]))
    assert len(_losses(result.run_dir)) == 2


def test_hf_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"data\.streaming"):
        load_config(None, ["data.streaming=true"])
    with pytest.raises(ConfigError, match=r"data\.columns\.query"):
        load_config(None, ["data.format=hf", "data.columns.positive=pos"])
    with pytest.raises(ConfigError, match=r"run\.loggers"):
        load_config(None, ["run.loggers=[jsonl,jsonl]"])
