"""Evaluation sets, and several splits of one BEIR folder from one read of its corpus and queries."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from dualforge.data import (
    BeirDataset,
    DataError,
    EvalSet,
    load_beir,
    load_beir_splits,
    load_eval_set,
    load_eval_sets,
)


@pytest.fixture()
def beir_with_bad_records(tiny_beir: Path, tmp_path: Path) -> Path:
    """``tiny_beir`` plus a dev split, a bad corpus line and a dev row naming an unknown query."""
    folder = tmp_path / "beir"
    shutil.copytree(tiny_beir, folder)
    with (folder / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "bad", "title": "", "text": ""}) + "\n")
    dev = (folder / "qrels" / "train.tsv").read_text().splitlines()[:5]
    (folder / "qrels" / "dev.tsv").write_text("\n".join([*dev, "nobody\td1\t1"]) + "\n")
    return folder


def test_splits_equal_one_load_per_split_and_share_the_texts(beir_with_bad_records: Path) -> None:
    folder = beir_with_bad_records
    loaded = load_beir_splits(folder, ["train", "dev", "test", "dev"], skip_bad=True)
    assert list(loaded) == ["train", "dev", "test"]
    for split, ds in loaded.items():
        assert ds == load_beir(folder, split, skip_bad=True)  # the oracle: one full load each
    assert [ds.skipped for ds in loaded.values()] == [1, 2, 1]  # the corpus line counts in each
    train, dev, test = loaded.values()
    assert train.corpus is dev.corpus is test.corpus  # parsed once, not once per split
    assert train.queries is dev.queries is test.queries
    with pytest.raises(DataError, match=r"corpus\.jsonl:41: field 'text'"):
        load_beir_splits(folder, ["train", "dev"], skip_bad=False)


def test_a_missing_split_fails_before_reading(beir_with_bad_records: Path) -> None:
    # the bad corpus line would fail first if the corpus were read before the check
    with pytest.raises(DataError, match=r"qrels/nope\.tsv: file not found \(splits here"):
        load_beir_splits(beir_with_bad_records, ["train", "nope"])


def test_eval_sets_call_the_loader_once(tiny_beir: Path) -> None:
    calls: list[list[str]] = []

    def counting(folder: Path, splits: Sequence[str], skip_bad: bool) -> Mapping[str, BeirDataset]:
        calls.append(list(splits))
        return load_beir_splits(folder, splits, skip_bad)

    sets = load_eval_sets(tiny_beir, ["test", "train"], load=counting)
    assert calls == [["test", "train"]]
    assert sets["test"].corpus is sets["train"].corpus
    for split, got in sets.items():
        ds = load_beir(tiny_beir, split)
        want = EvalSet(
            {d.id: f"{d.title} {d.text}".strip() for d in ds.corpus.values()},
            {q: ds.queries[q] for q in ds.qrels},
            ds.qrels,
        )
        assert got == want == load_eval_set(tiny_beir, split)
    assert list(sets["test"].queries) == [f"q{i}" for i in range(24, 32)]
