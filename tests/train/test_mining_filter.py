"""Positive-aware filtering in training runs: telemetry, planted duplicates, the flat store, and
mining a JSONL source through ``data.corpus``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import dualforge.train.loop as loop
from dualforge.config import ConfigError, load_config
from dualforge.data import load_corpus
from dualforge.train.metrics_log import read_metrics_log
from dualforge.train.run_data import load_run_data
from tests.train.helpers import tiny_overrides
from tests.train.test_tensorboard import read_scalars


def _train(model: Path, data: Path, out: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    args = [*tiny_overrides(model, data, out, name), "eval.before=false", "optim.max_steps=4",
            "mining.branching=4", "mining.leaf_size=4", "data.test_split=null", *extra]  # fmt: skip
    result = loop.train(load_config(None, args))
    return [r for r in read_metrics_log(result.run_dir / "metrics.jsonl") if r["event"] == "train"]


@pytest.fixture(scope="module")
def planted(tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BEIR folder plus an unlabelled copy of every train positive (``c<i>``), and a
    check file listing the copies as each query's unlabelled positives."""
    folder = tmp_path_factory.mktemp("planted")
    for name in ("queries.jsonl",):
        (folder / name).write_text((tiny_beir / name).read_text())
    (folder / "qrels").mkdir()
    for split in ("train", "test"):
        (folder / "qrels" / f"{split}.tsv").write_text(
            (tiny_beir / "qrels" / f"{split}.tsv").read_text()
        )
    docs = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    copies = [{**d, "_id": f"c{d['_id'][1:]}"} for d in docs[:24]]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs + copies) + "\n")
    (folder / "planted.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tc{i}\t1\n" for i in range(24))
    )
    return folder


def test_the_filter_logs_its_work_and_keeps_planted_copies_out(
    tiny_model_dir: Path, planted: Path, tmp_path: Path
) -> None:
    base = ["mining.strategy=static", "mining.num_negatives=3", "mining.temperature=0.02",
            f"mining.check_qrels={planted / 'planted.tsv'}", "mining.probe=8"]  # fmt: skip
    off = _train(tiny_model_dir, planted, tmp_path, "unfiltered", *base)
    on = _train(tiny_model_dir, planted, tmp_path, "filtered", *base, "mining.filter=absolute",
                "mining.margin=0.01", "run.loggers=[jsonl,tensorboard]")  # fmt: skip
    assert all("filter_fallbacks" not in r and "planted_rate" in r for r in off)
    assert all(r["filter_fallbacks"] == 0 for r in on)
    assert all(r["probe_filter_fraction"] > 0 and r["probe_qrels_fraction"] > 0 for r in on)
    rate = {name: sum(r["planted_rate"] for r in rows) for name, rows in (("off", off), ("on", on))}
    assert rate["off"] > 0.1 and rate["on"] == 0.0
    tags = read_scalars(tmp_path / "filtered" / "tensorboard")
    for tag in ("filter_fallbacks", "planted_rate", "probe_filter_fraction", "negatives_crc32"):
        assert [step for step, _ in tags[f"train/{tag}"]] == [1, 2, 3, 4]


def test_the_flat_store_trains_like_the_tree(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    topk = ["mining.strategy=refresh", "mining.refresh_every=2", "mining.mode=topk",
            "mining.filter=relative", "mining.margin=0.02"]  # fmt: skip
    tree = _train(tiny_model_dir, tiny_beir, tmp_path, "tree", *topk)
    flat = _train(tiny_model_dir, tiny_beir, tmp_path, "flat", *topk, "mining.index=flat")
    assert [r["loss"] for r in flat] == pytest.approx([r["loss"] for r in tree], rel=1e-6)
    start = read_metrics_log(tmp_path / "flat" / "metrics.jsonl")[0]
    assert start["mining_backend"] == "flat:cpu"


def _jsonl(tiny_beir: Path, path: Path, by: str) -> Path:
    """The tiny BEIR train pairs as JSONL: positives by exact text or by corpus id."""
    docs = load_corpus(tiny_beir / "corpus.jsonl")
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (tiny_beir / "queries.jsonl").read_text().splitlines()}  # fmt: skip
    rows = []
    for i in range(24):
        row: dict[str, Any] = {"query": queries[f"q{i}"], "query_id": f"q{i}"}
        row.update(
            {"positive": docs[f"d{i}"].full_text} if by == "text" else {"positive_ids": [f"d{i}"]}
        )
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("by", ["text", "id"])
def test_a_jsonl_source_mines_from_data_corpus(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, by: str
) -> None:
    train = _jsonl(tiny_beir, tmp_path / "train.jsonl", by)
    data = ["data.format=jsonl", f"data.train_file={train}", f"data.corpus={tiny_beir}"]
    cfg = load_config(None, [f"data.path={tiny_beir}", *data, "mining.strategy=static"])
    run = load_run_data(cfg.data, 0)
    assert run.corpus is not None and len(run.corpus) == 40
    assert [e.positive_ids for e in run.examples[:2]] == [("d0",), ("d1",)]
    assert run.known_positives["q3"] == {"d3"}
    rows = _train(tiny_model_dir, tiny_beir, tmp_path, f"jsonl-{by}", *data,
                  "mining.strategy=static", "mining.filter=absolute", "mining.margin=0.05")  # fmt: skip
    assert len(rows) == 4 and all(r["mined_positive_fraction"] == 0 for r in rows)
    assert all(r["filter_fallbacks"] == 0 for r in rows)


def test_mining_a_source_without_a_corpus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs a corpus to mine from.*data\.corpus"):
        load_config(None, ["mining.strategy=static", "data.format=jsonl"])
    bad = {
        "mining.filter=relative mining.margin=1.5": "mining.margin=1.5: must be < 1",
        "mining.margin=-0.1": "mining.margin=-0.1: must be >= 0",
        "mining.filter=percent": "mining.filter='percent'",
        "mining.index=hnsw": "mining.index='hnsw'",
    }
    for overrides, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides.split())
