"""BEIR loading on the real data, and errors naming file, line and field on bad input."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest

from dualforge.data import (
    BadRecordCounter,
    BeirDataset,
    DataError,
    Document,
    available_splits,
    iter_corpus,
    iter_qrels,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)


@pytest.fixture(scope="module")
def scifact_train(shared_data: Path) -> BeirDataset:
    return load_beir(shared_data / "scifact", "train")


def test_scifact_counts(shared_data: Path, scifact_train: BeirDataset) -> None:
    ds = scifact_train
    assert len(ds.corpus) == 5183 and len(ds.queries) == 1109 and ds.skipped == 0
    assert len(ds.qrels) == 809 and sum(len(v) for v in ds.qrels.values()) == 919
    assert len(ds.split_queries()) == 809
    assert available_splits(shared_data / "scifact") == ["test", "train"]
    test = load_qrels(shared_data / "scifact" / "qrels" / "test.tsv")
    assert len(test) == 300 and sum(len(v) for v in test.values()) == 339
    assert not set(test) & set(ds.qrels)


def test_scifact_test_split_queries(shared_data: Path) -> None:
    test = load_beir(shared_data / "scifact", "test")
    assert len(test.split_queries()) == 300 and len(test.queries) == 1109


def test_document_full_text(scifact_train: BeirDataset) -> None:
    doc = scifact_train.corpus["4983"]
    assert doc.title and doc.full_text == f"{doc.title} {doc.text}".strip()
    assert Document("x", "", "body").full_text == "body"
    assert Document("x", "Title", "").full_text == "Title"


def test_dbpedia_ids_and_graded_scores(shared_data: Path) -> None:
    ds = load_beir(shared_data / "dbpedia-entity-subset", "test")
    assert len(ds.corpus) == 5000 and len(ds.queries) == 50
    assert len(ds.qrels) == 40 and len(ds.split_queries()) == 40
    assert "<dbpedia:Oceanic_Airlines>" in ds.corpus
    assert all(d.startswith("<dbpedia:") and d.endswith(">") for d in ds.corpus)
    scores = [s for docs in ds.qrels.values() for s in docs.values()]
    assert {s: scores.count(s) for s in set(scores)} == {0: 2829, 1: 614, 2: 266}


def test_readers_stream(shared_data: Path) -> None:
    docs = iter_corpus(shared_data / "scifact" / "corpus.jsonl")
    assert isinstance(docs, types.GeneratorType)
    first = next(docs)
    assert isinstance(first, Document) and first.id and first.text
    rows = iter_qrels(shared_data / "scifact" / "qrels" / "train.tsv")
    row = next(rows)
    assert row.line == 2 and row.score == 1 and row.query_id and row.corpus_id


def write_beir(folder: Path, corpus: list[str], queries: list[str], qrels: list[str]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


# d1 and d2 are not judged, so replacing one of their lines drops exactly one record.
GOOD_CORPUS = [json.dumps({"_id": f"d{i}", "title": "t", "text": f"doc {i}"}) for i in range(4)]
GOOD_QUERIES = [json.dumps({"_id": f"q{i}", "text": f"query {i}"}) for i in range(3)]
GOOD_QRELS = ["query-id\tcorpus-id\tscore", "q0\td0\t1", "q1\td3\t1", "q0\td3\t0"]

BAD_CASES = [
    ("corpus.jsonl", 2, None, "{not json", "malformed JSON"),
    ("corpus.jsonl", 2, None, "[1, 2]", "expected a JSON object, got array"),
    ("corpus.jsonl", 3, "_id", json.dumps({"title": "x", "text": "y"}), "missing"),
    ("corpus.jsonl", 3, "_id", json.dumps({"_id": "", "text": "y"}), "empty"),
    ("corpus.jsonl", 2, "_id", json.dumps({"_id": 7, "text": "y"}), "expected a string"),
    ("corpus.jsonl", 2, "_id", json.dumps({"_id": "d0", "text": "dup"}), "duplicate id 'd0'"),
    ("corpus.jsonl", 2, "text", json.dumps({"_id": "d1", "title": " ", "text": ""}), "empty"),
    ("corpus.jsonl", 3, "text", json.dumps({"_id": "d2", "title": "t"}), "missing"),
    ("corpus.jsonl", 3, "text", json.dumps({"_id": "d2", "text": ["a"]}), "got array"),
    ("corpus.jsonl", 2, "title", json.dumps({"_id": "d1", "title": 1, "text": "a"}), "got number"),
    ("queries.jsonl", 3, "text", json.dumps({"_id": "q2", "text": 5.5}), "expected a string"),
    ("queries.jsonl", 3, "text", json.dumps({"_id": "q2", "text": "  "}), "empty"),
    ("queries.jsonl", 3, "_id", json.dumps({"_id": "q0", "text": "again"}), "duplicate id"),
    ("test.tsv", 3, "corpus-id", "q1\tmissing\t1", "'missing' not in corpus.jsonl"),
    ("test.tsv", 2, "query-id", "qX\td0\t1", "'qX' not in queries.jsonl"),
    ("test.tsv", 2, None, "q0\td0", "expected 3 tab-separated columns, got 2"),
    ("test.tsv", 2, None, "q0\td0\t1\textra", "expected 3 tab-separated columns, got 4"),
    ("test.tsv", 2, "score", "q0\td0\thigh", "not an integer: 'high'"),
    ("test.tsv", 2, "corpus-id", "q0\t\t1", "empty"),
    ("test.tsv", 4, "corpus-id", "q1\td3\t2", "duplicate pair 'q1', 'd3'"),
]


@pytest.mark.parametrize(("name", "line", "field", "content", "message"), BAD_CASES)
def test_bad_record_raises_then_skips(
    tmp_path: Path, name: str, line: int, field: str | None, content: str, message: str
) -> None:
    parts = {"corpus.jsonl": list(GOOD_CORPUS), "queries.jsonl": list(GOOD_QUERIES)}
    parts["test.tsv"] = list(GOOD_QRELS)
    parts[name][line - 1] = content
    folder = write_beir(tmp_path / "ds", *parts.values())
    with pytest.raises(DataError) as info:
        load_beir(folder, "test")
    err = info.value
    assert Path(err.path).name == name and err.line == line and err.field == field
    assert message in err.message and f"{name}:{line}: " in str(err)
    assert (f"field '{field}'" in str(err)) == (field is not None)
    ds = load_beir(folder, "test", skip_bad=True)
    assert ds.skipped == 1
    assert len(ds.corpus) + len(ds.queries) + sum(map(len, ds.qrels.values())) == 4 + 3 + 3 - 1


def test_skipped_record_drops_rows_that_point_at_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = [*GOOD_CORPUS[:3], "{broken d3"]
    folder = write_beir(tmp_path / "ds", corpus, GOOD_QUERIES, GOOD_QRELS)
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        ds = load_beir(folder, "test", skip_bad=True)
    assert ds.skipped == 3 and ds.qrels == {"q0": {"d0": 1}}  # the doc and its two qrels rows
    assert len(caplog.records) == 1 and "skipped 3 bad records" in caplog.records[0].getMessage()


def test_empty_title_is_fine_and_title_alone_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    lines = [{"_id": "a", "title": "", "text": "x"}, {"_id": "b", "title": "T", "text": ""}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    corpus = load_corpus(path)
    assert corpus["a"].full_text == "x" and corpus["b"].full_text == "T"


def test_missing_qrels_header_always_raises(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "ds", GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS[1:])
    for skip in (False, True):
        with pytest.raises(DataError, match=r"test\.tsv:1: missing header") as info:
            load_qrels(folder / "qrels" / "test.tsv", skip_bad=skip)
        assert info.value.line == 1
    (folder / "qrels" / "test.tsv").write_text("")
    with pytest.raises(DataError, match=r"missing header .* got an empty file"):
        load_beir(folder, "test", skip_bad=True)


def test_missing_split_names_available_ones(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "ds", GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
    with pytest.raises(DataError, match=r"dev\.tsv: file not found \(splits here: \['test'\]\)"):
        load_beir(folder, "dev")
    with pytest.raises(DataError, match="file not found"):
        load_corpus(tmp_path / "nowhere.jsonl")


def test_standalone_loaders_count_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "corpus.jsonl"
    lines = [GOOD_CORPUS[0], "", "{bad", json.dumps({"_id": "x"}), GOOD_CORPUS[1]]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_corpus(path)
    assert info.value.line == 3  # blank lines are skipped but still counted as lines
    counter = BadRecordCounter()
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        corpus = load_corpus(path, skip_bad=True, counter=counter)
    assert list(corpus) == ["d0", "d1"] and counter.count == 2
    assert len(caplog.records) == 1 and "skipped 2 bad records" in caplog.records[0].getMessage()
    assert [d.id for d in iter_corpus(path, skip_bad=True)] == ["d0", "d1"]


def test_crlf_bom_and_bad_utf8(tmp_path: Path) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(
        b"\xef\xbb\xbf" + GOOD_QUERIES[0].encode() + b"\r\n\xff\xfe\r\n" + GOOD_QUERIES[1].encode()
    )
    with pytest.raises(DataError, match=r"queries\.jsonl:2: not valid UTF-8"):
        load_queries(queries)
    assert load_queries(queries, skip_bad=True) == {"q0": "query 0", "q1": "query 1"}
    qrels = tmp_path / "qrels.tsv"
    qrels.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\nq0\td0\t2\r\n")
    assert load_qrels(qrels) == {"q0": {"d0": 2}}
