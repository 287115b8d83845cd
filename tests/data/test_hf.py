"""Training examples from Hugging Face datasets: saved folders, data files, columns, errors."""

from __future__ import annotations

import ast
import json
import logging
import pickle
import random
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from dualforge.data import (
    BadRecordCounter,
    DataError,
    TrainingExample,
    hf,
    hf_num_rows,
    iter_hf_examples,
    load_hf_examples,
    load_jsonl_examples,
    streaming,
)
from dualforge.data.hf import HF_HINT, HfColumns, RowError, hf_columns, parse_row

datasets = pytest.importorskip("datasets")

RECORDS: list[dict[str, Any]] = [
    {
        "query": "what is alpha",
        "positive": ["alpha is a letter"],
        "negatives": ["beta", "gamma"],
        "query_id": "q1",
        "positive_ids": ["d1"],
    },
    {
        "query": "two answers",
        "positive": ["first answer", "second answer"],
        "negatives": [],
        "query_id": "q2",
        "positive_ids": ["d2", "d3"],
    },
    {
        "query": "ünïcode and\ttabs",
        "positive": ["a positive"],
        "negatives": ["one negative"],
        "query_id": "q3",
        "positive_ids": ["d4"],
    },
]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``load_dataset``'s default cache, under the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


def write(ds: Any, folder: Path, kind: str, name: str = "data") -> Path:
    """Write ``ds`` under ``folder`` as ``kind``; returns what to read."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "disk":
        ds.save_to_disk(str(folder / name))
        return folder / name
    if kind == "arrow":  # a save_to_disk shard is an arrow stream file
        ds.save_to_disk(str(folder / "saved"))
        return next((folder / "saved").glob("*.arrow"))
    path = folder / f"{name}.{kind}"
    {"parquet": ds.to_parquet, "jsonl": ds.to_json, "csv": ds.to_csv}[kind](str(path))
    return path


@pytest.mark.parametrize("kind", ["disk", "parquet", "jsonl", "arrow"])
def test_same_examples_as_jsonl(tmp_path: Path, kind: str) -> None:
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    expected = load_jsonl_examples(jsonl)
    assert expected[1].positives == ("first answer", "second answer")
    path = write(datasets.Dataset.from_list(RECORDS), tmp_path / "hf", kind)
    assert load_hf_examples(path) == expected
    assert load_hf_examples(jsonl) == expected  # dualforge's own JSONL file reads the same


def test_sentence_transformers_columns_and_numbered_negatives(tmp_path: Path) -> None:
    names = [f"negative_{j}" for j in range(1, 13)]
    random.Random(0).shuffle(names)  # column order must not matter; 10 sorts after 9
    data: dict[str, list[Any]] = {"label": [1, 0], "anchor": ["q0", "q1"], "positive": ["a", "b"]}
    data.update({name: [f"{name}-r0", f"{name}-r1"] for name in names})
    ds = datasets.Dataset.from_dict(data)
    for kind in ("parquet", "csv"):
        first, second = load_hf_examples(write(ds, tmp_path / kind, kind))
        assert first.query == "q0" and first.positives == ("a",)
        assert first.negatives == tuple(f"negative_{j}-r0" for j in range(1, 13))
        assert second.negatives[-1] == "negative_12-r1" and second.query_id is None


def test_list_positives_other_aliases_and_cache_dir(tmp_path: Path, hf_cache: Path) -> None:
    ds = datasets.Dataset.from_dict(
        {"question": ["q"], "positive": [["p1", "p2", "p3"]], "negative": ["n"]}
    )
    (example,) = load_hf_examples(write(ds, tmp_path, "parquet"), cache_dir=tmp_path / "mine")
    assert example == TrainingExample("q", ("p1", "p2", "p3"), ("n",))
    assert (tmp_path / "mine" / "parquet").is_dir() and not hf_cache.exists()


def test_column_mapping_replaces_detection(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict(
        {
            "anchor": ["ignored"],
            "q": ["the query"],
            "doc": ["the doc"],
            "hard_a": ["A"],
            "hard_b": ["B"],
            "negative": ["ignored too"],
            "qid": [7],
        }
    )
    path = write(ds, tmp_path, "parquet")
    columns = {"query": "q", "positive": "doc", "negative": ["hard_b", "hard_a"], "query_id": "qid"}
    (example,) = load_hf_examples(path, columns=columns)
    assert example == TrainingExample("the query", ("the doc",), ("B", "A"), "7")
    (plain,) = load_hf_examples(path, columns={"query": "q", "positive": "doc"})
    assert plain.negatives == () and plain.query_id is None


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"query": "q", "positive": "doc", "negatives": "n"}, "unknown role 'negatives'"),
        ({"query": "q"}, "no 'positive' column given"),
        ({"query": "q", "positive": "body"}, "'positive' names column 'body'; the dataset has"),
        ({"query": ["q", "doc"], "positive": "doc"}, "'query' needs one column name"),
    ],
)
def test_bad_column_mapping(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match="columns: ") as info:
        hf_columns(["q", "doc"], columns, "d.parquet")
    assert message in str(info.value) and str(info.value).startswith("d.parquet: ")


def test_missing_and_ambiguous_columns(tmp_path: Path) -> None:
    path = write(datasets.Dataset.from_dict({"text": ["x"], "doc": ["y"]}), tmp_path, "parquet")
    with pytest.raises(DataError) as info:
        load_hf_examples(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no query column: expected one of ")
    assert "['anchor', 'query', 'question']" in message
    assert "the dataset has columns ['text', 'doc']" in message and "\n" not in message
    with pytest.raises(DataError, match=r"no positive column: expected one of \['positive'"):
        hf_columns(["anchor", "doc"], path="x")
    with pytest.raises(DataError, match=r"columns \['anchor', 'query'\] all name the query"):
        hf_columns(["anchor", "query", "positive"], path="x")
    with pytest.raises(DataError, match="both hold negatives"):
        hf_columns(["anchor", "positive", "negative", "negative_1"], path="x")


COLS = HfColumns("query", "positive", ("negative",))


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        ({"query": None, "positive": "p", "negative": None}, "query", "missing (null)"),
        ({"query": " ", "positive": "p", "negative": None}, "query", "empty"),
        ({"query": 3, "positive": "p", "negative": None}, "query", "expected a string, got int"),
        ({"query": ["q"], "positive": "p", "negative": None}, "query", "got list"),
        ({"query": "q", "positive": None, "negative": None}, "positive", "missing (null)"),
        ({"query": "q", "positive": [], "negative": None}, "positive", "empty list"),
        ({"query": "q", "positive": ["p", None], "negative": None}, "positive", "item 1: missing"),
        ({"query": "q", "positive": "p", "negative": ""}, "negative", "empty"),
        ({"query": "q", "positive": "p", "negative": ["n", 2.5]}, "negative", "item 1: expected"),
    ],
)
def test_bad_values_name_row_and_column(row: dict[str, Any], column: str, message: str) -> None:
    with pytest.raises(RowError) as info:
        parse_row(row, COLS, "train.parquet", 4)
    err = info.value
    assert (err.path, err.row, err.field, err.line) == ("train.parquet", 4, column, None)
    assert str(err).startswith(f"train.parquet:row 4: column '{column}': ") and message in str(err)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_null_or_empty_negatives_mean_none() -> None:
    nothing: list[Any] = [None, []]
    for negative in nothing:
        example = parse_row({"query": "q", "positive": "p", "negative": negative}, COLS, "f", 0)
        assert example.negatives == ()


def test_bad_rows_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = datasets.Dataset.from_dict(
        {"anchor": ["q0", "q1", None, "q3"], "positive": ["p0", "", "p2", "p3"]}
    )
    path = write(ds, tmp_path, "parquet")
    with pytest.raises(DataError, match=r"data\.parquet:row 1: column 'positive': empty$"):
        load_hf_examples(path)
    counter = BadRecordCounter()
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        kept = load_hf_examples(path, skip_bad=True, counter=counter)
    assert [e.query for e in kept] == ["q0", "q3"] and counter.count == 2
    assert "skipped 2 bad rows in" in caplog.text and "row 1: column 'positive'" in caplog.text


def test_id_columns(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict(
        {
            "query": ["a", "b"],
            "query_id": [10, 11],
            "positive": [["p", "r"], ["s"]],
            "positive_ids": [["d1", "d2"], ["d3"]],
            "negative": [["n"], ["m"]],
            "negative_id": [["x"], ["y", "z"]],
        }
    )
    with pytest.raises(RowError, match=r"row 1: column 'negative_id': 2 ids for 1 texts"):
        load_hf_examples(write(ds, tmp_path, "parquet"))
    first = load_hf_examples(write(ds, tmp_path, "parquet", "again"), skip_bad=True)[0]
    assert (first.query_id, first.positive_ids, first.negative_ids) == ("10", ("d1", "d2"), ("x",))


def test_dataset_dict_split(tmp_path: Path) -> None:
    train = datasets.Dataset.from_dict({"anchor": ["t"], "positive": ["tp"]})
    test = datasets.Dataset.from_dict({"anchor": ["s"], "positive": ["sp"]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    assert [e.query for e in load_hf_examples(tmp_path / "dd")] == ["t"]
    assert [e.query for e in load_hf_examples(tmp_path / "dd", split="test")] == ["s"]
    with pytest.raises(DataError, match=r"dd: no split 'dev'; splits: \['test', 'train'\]"):
        load_hf_examples(tmp_path / "dd", split="dev")
    assert hf_num_rows(tmp_path / "dd", split="test") == 1
    for one_split in (write(train, tmp_path, "disk", "plain"), write(train, tmp_path, "parquet")):
        with pytest.raises(DataError, match="split='test', but only a DatasetDict folder has"):
            load_hf_examples(one_split, split="test")


def test_glob_and_folder_of_files(tmp_path: Path) -> None:
    n = 7
    ds = datasets.Dataset.from_dict({"anchor": [f"q{i}" for i in range(n)], "positive": ["p"] * n})
    folder = tmp_path / "shards"
    for i in range(3):
        write(ds.shard(3, i, contiguous=True), folder, "parquet", f"part-{i}")
    expected = [f"q{i}" for i in range(n)]
    assert [e.query for e in load_hf_examples(folder)] == expected
    assert [e.query for e in load_hf_examples(f"{folder}/part-*.parquet")] == expected
    assert hf_num_rows(folder) == n and hf_num_rows(f"{folder}/part-*.parquet") == n
    assert hf_num_rows(write(ds, tmp_path, "jsonl")) is None
    write(ds, folder, "csv")
    with pytest.raises(DataError, match=r"files of several kinds \['csv', 'parquet'\]"):
        load_hf_examples(folder)


def test_path_problems(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "bad.jsonl").write_text('{"anchor": "q", "positive": "p"}\n{"anchor": "q", "po\n')
    (tmp_path / "empty").mkdir()
    cases: list[tuple[Path | str, str]] = [
        (tmp_path / "missing.parquet", "missing.parquet: not found"),
        (f"{tmp_path}/none-*.parquet", "none-*.parquet: no files match"),
        (tmp_path / "notes.txt", "notes.txt: cannot read 'notes.txt': use one of"),
        (tmp_path / "empty", "empty: not a save_to_disk folder and no ['.arrow', '.csv'"),
        (tmp_path / "bad.jsonl", "bad.jsonl: cannot read as json: "),
    ]
    for path, message in cases:
        with pytest.raises(DataError) as info:
            load_hf_examples(path)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError) as info:
        load_hf_examples(tmp_path / "train.parquet")
    assert str(info.value) == (
        f"{tmp_path / 'train.parquet'}: reading Hugging Face datasets needs the datasets "
        f"package: {HF_HINT}"
    )
    assert HF_HINT == "pip install 'dualforge[hf]'"


def test_datasets_is_imported_lazily() -> None:
    for module in (hf, streaming):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.split(".")[0] in ("datasets", "pyarrow")]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "disk"])
def test_streaming_equals_in_memory(tmp_path: Path, kind: str) -> None:
    path = write(datasets.Dataset.from_list(RECORDS * 200), tmp_path, kind)
    stream = iter_hf_examples(path, streaming=True)
    assert isinstance(stream, types.GeneratorType)
    assert list(stream) == load_hf_examples(path) and len(load_hf_examples(path)) == 600
    lazy = iter_hf_examples(tmp_path / "nothing-here", streaming=True)  # nothing read yet
    with pytest.raises(DataError, match="not found"):
        next(lazy)
