"""A run's data: each BEIR folder is read once for its train, dev and test splits."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from dualforge.config import DataConfig
from dualforge.data import BeirDataset, load_beir, load_beir_splits, load_eval_set
from dualforge.data.examples import examples_from_beir
from dualforge.train.run_data import load_run_data


class CountingLoader:
    """``load_beir_splits`` that records the splits of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(
        self, folder: Path, splits: Sequence[str], skip_bad: bool
    ) -> Mapping[str, BeirDataset]:
        self.calls.append(list(splits))
        return load_beir_splits(folder, splits, skip_bad)


@pytest.fixture()
def beir(tiny_beir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    shutil.copytree(tiny_beir, folder)
    dev = (folder / "qrels" / "train.tsv").read_text().splitlines()[:4]
    (folder / "qrels" / "dev.tsv").write_text("\n".join(dev) + "\n")
    return folder


def test_train_dev_and_test_come_from_one_read(beir: Path) -> None:
    load = CountingLoader()
    data = load_run_data(DataConfig(path=str(beir), dev_split="dev"), 0, load_splits=load)
    assert load.calls == [["train", "dev", "test"]]
    assert data.dev is not None and data.test is not None and data.corpus is not None
    assert data.dev == load_eval_set(beir, "dev") and data.test == load_eval_set(beir, "test")
    assert data.dev.corpus is data.test.corpus is data.corpus  # one corpus, not three copies
    train = load_beir(beir, "train")
    assert data.examples == examples_from_beir(train)
    assert data.known_positives == {q: set(docs) for q, docs in train.qrels.items()}


def test_carved_dev_and_missing_test_split(beir: Path) -> None:
    load = CountingLoader()
    data = load_run_data(DataConfig(path=str(beir), dev_fraction=0.25), 0, load_splits=load)
    assert load.calls == [["train", "test"]]
    assert data.dev is not None and len(data.dev.queries) == 6 and len(data.examples) == 18
    (beir / "qrels" / "test.tsv").unlink()
    data = load_run_data(DataConfig(path=str(beir), dev_fraction=0.25), 0, load_splits=load)
    assert load.calls[1:] == [["train"]] and data.test is None


def test_jsonl_training_reads_only_the_test_split(beir: Path, tmp_path: Path) -> None:
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    cfg = DataConfig(path=str(beir), format="jsonl", train_file=str(train_file))
    load = CountingLoader()
    data = load_run_data(cfg, 0, load_splits=load)
    assert load.calls == [["test"]] and data.test == load_eval_set(beir, "test")
    assert [ex.query for ex in data.examples] == ["q"] and data.dev is None
