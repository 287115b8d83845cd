"""Teacher scores read from JSONL records and Hugging Face rows, with errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dualforge.data import DataError, EpochBatchSampler, load_hf_examples, load_jsonl_examples
from dualforge.data.batch import TEACHER_SCORES
from dualforge.data.hf_columns import RowError, hf_columns, parse_row
from tests.data.test_hf import hf_cache, write  # noqa: F401  (the fixture is used by name)

HN = Path(__file__).resolve().parents[3] / "shared" / "data" / "hn-samples"


def _jsonl(tmp_path: Path, *rows: dict[str, Any]) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_flagembedding_samples_carry_their_scores() -> None:
    examples = load_jsonl_examples(HN / "msmarco.jsonl")
    raw = [json.loads(line) for line in (HN / "msmarco.jsonl").read_text().splitlines()]
    assert len(examples) == len(raw) == 10
    for ex, row in zip(examples, raw):
        assert ex.scored and ex.positive_scores == tuple(row["pos_scores"])
        assert ex.negative_scores == tuple(row["neg_scores"]) and len(ex.negatives) == 25
    batch = next(iter(EpochBatchSampler(examples, 4, num_negatives=3, seed=0)))
    for i, scores in enumerate(batch.extras[TEACHER_SCORES].values):
        ex = next(e for e in examples if e.query == batch.queries[i])
        assert scores[0] == ex.positive_scores[0]
        assert scores[1:] == [ex.negative_scores[ex.negatives.index(t)] for t in batch.negatives[i]]


def test_scores_aligned_with_the_candidates(tmp_path: Path) -> None:
    row = {"query": "q", "positive": "p", "negatives": ["a", "b"], "scores": [3, 1.5, -2]}
    (ex,) = load_jsonl_examples(_jsonl(tmp_path, row))
    assert ex.positive_scores == (3.0,) and ex.negative_scores == (1.5, -2.0)
    (plain,) = load_jsonl_examples(_jsonl(tmp_path, {"query": "q", "positive": "p"}))
    assert not plain.scored


BAD_JSONL = [
    ({"scores": [1.0, 2.0]}, "scores", r"2 scores for 1 positive \+ 2 negative\(s\)"),
    ({"pos_scores": [1.0], "neg_scores": [1.0]}, "neg_scores", r"1 scores for 2 negative\(s\)"),
    ({"pos_scores": [1.0]}, "neg_scores", r"0 scores for 2 negative\(s\)"),
    ({"scores": [1, 2, 3], "pos_scores": [1]}, "scores", "give 'scores' or 'pos_scores'"),
    ({"scores": [1, "high", 3]}, "scores", "item 1: expected a finite number, got 'high'"),
    ({"scores": [1, None, 3]}, "scores", "item 1: expected a finite number, got None"),
    ({"scores": [1, True, 3]}, "scores", "item 1: expected a finite number"),
    ({"scores": [1, float("nan"), 3]}, "scores", "item 1: expected a finite number"),
    ({"positive": ["p", "r"], "scores": [1, 2, 3, 4]}, "scores", "needs one positive"),
]


@pytest.mark.parametrize(("change", "key", "message"), BAD_JSONL)
def test_a_bad_score_field_names_file_line_and_field(
    tmp_path: Path, change: dict[str, Any], key: str, message: str
) -> None:
    good = {"query": "fine", "positive": "p", "negatives": ["a", "b"]}
    path = _jsonl(tmp_path, good, {**good, **change})
    with pytest.raises(DataError, match=message) as err:
        load_jsonl_examples(path)
    assert str(err.value).startswith(f"{path}:2: {key}:") or f"{path}:2" in str(err.value)
    assert err.value.field == key


def test_hf_rows_detect_score_columns_and_take_a_mapping() -> None:
    names = ["anchor", "positive", "negative", "scores"]
    cols = hf_columns(names)
    assert cols.scores == "scores"
    row = {"anchor": "q", "positive": "p", "negative": ["a", "b"], "scores": [9, 5, 1]}
    ex = parse_row(row, cols, "ds", 0)
    assert ex.positive_scores == (9.0,) and ex.negative_scores == (5.0, 1.0)
    assert hf_columns(["anchor", "positive", "score"]).scores is None  # a label or a margin
    mapped = hf_columns(
        ["q", "p", "n", "score"],
        {"query": "q", "positive": "p", "negative": "n", "scores": "score"},
    )
    got = parse_row({"q": "x", "p": "y", "n": "z", "score": [2.0, 1.0]}, mapped, "ds", 0)
    assert got.negative_scores == (1.0,)
    with pytest.raises(RowError, match=r"^ds:row 4: column 'score': 3 scores for 1 positive"):
        parse_row({"q": "x", "p": "y", "n": "z", "score": [2, 1, 0]}, mapped, "ds", 4)


def test_hf_flagembedding_columns_from_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (HN / "msmarco.jsonl").read_text().splitlines()[:3]]
    ds = datasets.Dataset.from_list(
        [{k: r[k] for k in ("query", "pos", "neg", "pos_scores", "neg_scores")} for r in rows]
    )
    examples = load_hf_examples(write(ds, tmp_path / "hf", "parquet"))
    assert [ex.negative_scores for ex in examples] == [tuple(r["neg_scores"]) for r in rows]
