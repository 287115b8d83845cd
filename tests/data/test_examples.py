"""Training examples from BEIR qrels, JSONL (texts or corpus ids) and TSV triples."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from dualforge.data import (
    BadRecordCounter,
    DataError,
    Document,
    TrainingExample,
    examples_from_beir,
    iter_jsonl_examples,
    iter_tsv_triples,
    load_beir,
    load_jsonl_examples,
    load_tsv_triples,
)


def test_beir_groups_all_positives(shared_data: Path) -> None:
    ds = load_beir(shared_data / "scifact", "train")
    examples = examples_from_beir(ds)
    assert len(examples) == 809
    assert sum(len(e.positives) for e in examples) == 919
    assert sum(len(e.positives) > 1 for e in examples) > 0
    for ex in examples:
        assert ex.query_id is not None and ex.query == ds.queries[ex.query_id]
        assert ex.positives == tuple(ds.corpus[d].full_text for d in ex.positive_ids)
        assert ex.negatives == () and ex.negative_ids == ()


def test_score_zero_kept_in_qrels_but_not_a_positive(shared_data: Path) -> None:
    ds = load_beir(shared_data / "dbpedia-entity-subset", "test")
    examples = examples_from_beir(ds)
    assert len(examples) == 40
    assert sum(len(e.positives) for e in examples) == 614 + 266
    assert all(ds.qrels[e.query_id or ""][d] >= 1 for e in examples for d in e.positive_ids)
    assert sum(len(e.positives) for e in examples_from_beir(ds, min_score=2)) == 266
    with pytest.raises(ValueError, match="min_score"):
        examples_from_beir(ds, min_score=0)


def test_flagembedding_jsonl(shared_data: Path) -> None:
    examples = load_jsonl_examples(shared_data / "hn-samples" / "msmarco.jsonl")
    assert len(examples) == 10
    assert all(len(e.positives) == 1 and len(e.negatives) == 25 for e in examples)
    assert all(e.query_id is None and e.positive_ids == () for e in examples)
    nq = load_jsonl_examples(shared_data / "hn-samples" / "nq.jsonl")
    assert sorted(len(e.negatives) for e in nq) == [79] + [100] * 9


CORPUS = {"a": Document("a", "A", "alpha"), "b": Document("b", "", "beta")}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_texts_ids_and_aliases(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"query": "q1", "positive_ids": ["a"], "negative_ids": "b", "query_id": "1"},
            {"query": "q2", "positive": "text pos", "negatives": ["n1", "n2"]},
            {"query": "q3", "positives": ["p1", "p2"], "neg": [], "pos_scores": [1.0, 0.5]},
            {"query": "q4", "pos": ["p"], "positive_ids": ["a"], "negative": "n"},
        ],
    )
    first, second, third, fourth = load_jsonl_examples(path, corpus=CORPUS)
    assert first == TrainingExample("q1", ("A alpha",), ("beta",), "1", ("a",), ("b",))
    assert second == TrainingExample("q2", ("text pos",), ("n1", "n2"))
    assert third.positives == ("p1", "p2") and third.negatives == ()
    assert third.positive_scores == (1.0, 0.5) and third.negative_scores == ()
    assert fourth.positives == ("p",) and fourth.positive_ids == ("a",)


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"positive": "p"}, "query", "missing"),
        ({"query": 3, "positive": "p"}, "query", "expected a string"),
        ({"query": " ", "positive": "p"}, "query", "empty"),
        ({"query": "q"}, "positive", "missing"),
        ({"query": "q", "positive": []}, "positive", "missing"),
        ({"query": "q", "positive": ["ok", ""]}, "positive", "expected a non-empty"),
        ({"query": "q", "pos": "p", "positive": "p"}, "pos", "give only one of"),
        ({"query": "q", "positive": "p", "negatives": [1]}, "negatives", "expected a non-empty"),
        ({"query": "q", "positive_ids": ["zzz"]}, "positive_ids", "id 'zzz' not in the corpus"),
        ({"query": "q", "pos": "p", "negative_ids": ["a", "x"]}, "negative_ids", "'x' not in"),
        ({"query": "q", "pos": ["p", "r"], "positive_ids": ["a"]}, "positive_ids", "1 ids for 2"),
        ({"query": "q", "positive": "p", "query_id": 5}, "query_id", "expected a string"),
    ],
)
def test_jsonl_errors(tmp_path: Path, record: dict[str, Any], field: str, message: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"query": "fine", "positive": "p"}, record])
    with pytest.raises(DataError) as info:
        load_jsonl_examples(path, corpus=CORPUS)
    err = info.value
    assert (Path(err.path).name, err.line, err.field) == ("train.jsonl", 2, field)
    assert message in err.message and f"train.jsonl:2: field '{field}'" in str(err)
    counter = BadRecordCounter()
    assert len(load_jsonl_examples(path, corpus=CORPUS, skip_bad=True, counter=counter)) == 1
    assert counter.count == 1


def test_jsonl_malformed_and_ids_without_corpus(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ['{"query": "q", "pos"', '"just a string"'])
    with pytest.raises(DataError, match=r"t\.jsonl:1: malformed JSON"):
        load_jsonl_examples(path)
    counter = BadRecordCounter()
    assert load_jsonl_examples(path, skip_bad=True, counter=counter) == [] and counter.count == 2
    path = write_jsonl(tmp_path / "ids.jsonl", [{"query": "q", "positive_ids": ["a"]}])
    with pytest.raises(DataError, match="field 'positive_ids': ids need a corpus"):
        load_jsonl_examples(path)


def test_jsonl_streams(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "pos": "p"}, "{broken"])
    stream = iter_jsonl_examples(path)
    assert isinstance(stream, types.GeneratorType)
    assert next(stream).query == "q"  # the bad second line has not been read yet
    with pytest.raises(DataError, match=":2: malformed JSON"):
        next(stream)


def test_tsv_triples(tmp_path: Path) -> None:
    path = tmp_path / "triples.tsv"
    path.write_text("q1\tpos1\tneg1\r\nq2\tpos2\n\nq3\t\tneg3\nq4\tp\tn\tx\nq5\tpos5\tneg5\n")
    with pytest.raises(DataError) as info:
        load_tsv_triples(path)
    assert info.value.line == 2 and info.value.field is None
    assert str(info.value).endswith("triples.tsv:2: expected 3 tab-separated columns, got 2")
    counter = BadRecordCounter()
    kept = load_tsv_triples(path, skip_bad=True, counter=counter)
    assert [(e.query, e.positives, e.negatives) for e in kept] == [
        ("q1", ("pos1",), ("neg1",)),
        ("q5", ("pos5",), ("neg5",)),
    ]
    assert counter.count == 3
    path.write_text("q3\t\tneg3\n")
    with pytest.raises(DataError, match=r"triples\.tsv:1: field 'positive': empty"):
        list(iter_tsv_triples(path))


def test_training_example_checks_alignment() -> None:
    with pytest.raises(ValueError, match="no positive"):
        TrainingExample("q", ())
    with pytest.raises(ValueError, match="2 negative ids for 1 negative texts"):
        TrainingExample("q", ("p",), ("n",), None, (), ("x", "y"))
