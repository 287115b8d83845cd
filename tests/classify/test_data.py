"""Labelled JSONL loading (file:line:field errors), label vocabulary, stratified split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from dualforge.classify import build_vocab, encode_labels, load_labelled, stratified_split
from dualforge.data import BadRecordCounter, DataError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(text: object, label: object, coarse: object = "X") -> str:
    return json.dumps({"text": text, "label": label, "coarse": coarse})


def test_loads_text_label_and_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", [_row("what is x ?", "A:b", "A"), "", _row("who", "H:i")])
    data = load_labelled(path)
    assert data.texts == ("what is x ?", "who") and data.labels == ("A:b", "H:i")
    assert data.lines == (1, 3) and len(data) == 2
    coarse = load_labelled(path, label_field="coarse")
    assert coarse.labels == ("A", "X") and coarse.label_field == "coarse"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "a.jsonl:2: malformed JSON"),
        ('["a list"]', "a.jsonl:2: expected a JSON object"),
        (json.dumps({"text": "q"}), "a.jsonl:2: field 'label': missing"),
        (_row("   ", "A"), "a.jsonl:2: field 'text': empty"),
        (_row("q", ""), "a.jsonl:2: field 'label': empty"),
        (_row("q", 3), "a.jsonl:2: field 'label': expected a string, got number"),
        (_row(None, "A"), "a.jsonl:2: field 'text': missing"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    path = _write(tmp_path / "a.jsonl", [_row("fine", "A"), line, _row("also fine", "B")])
    with pytest.raises(DataError) as info:
        load_labelled(path)
    assert str(info.value).startswith(str(tmp_path / expected))
    assert info.value.line == 2
    counter = BadRecordCounter()
    data = load_labelled(path, skip_bad=True, counter=counter)
    assert data.labels == ("A", "B") and counter.count == 1


def test_custom_fields_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.jsonl", [json.dumps({"q": "hi", "y": "1"})])
    assert load_labelled(path, text_field="q", label_field="y").labels == ("1",)
    with pytest.raises(DataError, match="field 'text': missing"):
        load_labelled(path)
    with pytest.raises(DataError, match="file not found"):
        load_labelled(tmp_path / "nope.jsonl")
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DataError, match="no labelled examples"):
        load_labelled(empty)


def test_vocab_is_sorted_and_unseen_labels_error_or_count(tmp_path: Path) -> None:
    train = load_labelled(_write(tmp_path / "train.jsonl", [_row("a", "B"), _row("b", "A")]))
    vocab = build_vocab(train.labels)
    assert vocab == ("A", "B")
    assert encode_labels(train, vocab).tolist() == [1, 0]
    test = load_labelled(
        _write(tmp_path / "test.jsonl", [_row("a", "A"), _row("c", "Z"), _row("d", "B")])
    )
    with pytest.raises(DataError) as info:
        encode_labels(test, vocab)
    assert str(info.value).startswith(f"{tmp_path / 'test.jsonl'}:2: field 'label': label 'Z'")
    assert "unseen='count'" in str(info.value)
    assert encode_labels(test, vocab, unseen="count").tolist() == [0, -1, 1]
    with pytest.raises(ValueError, match="unseen"):
        encode_labels(test, vocab, unseen="drop")  # type: ignore[arg-type]


def test_stratified_split_partitions_and_keeps_proportions() -> None:
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 4 + [3] * 1)[torch.randperm(85)]
    fit, held = stratified_split(targets, 0.2, seed=3)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(85))
    assert fit.tolist() == sorted(fit.tolist()) and held.tolist() == sorted(held.tolist())
    held_counts = Counter(targets[held].tolist())
    assert held_counts == {0: 10, 1: 6, 2: 1}  # round(0.2 * n_c); the singleton class stays in fit
    again_fit, again_held = stratified_split(targets, 0.2, seed=3)
    assert torch.equal(again_held, held) and torch.equal(again_fit, fit)
    other = stratified_split(targets, 0.2, seed=4)[1]
    assert not torch.equal(other, held)
    assert len(stratified_split(targets, 0.0)[1]) == 0


def test_stratified_split_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(torch.zeros(4, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="1-D"):
        stratified_split(torch.zeros(2, 2, dtype=torch.long), 0.5)


def test_real_trec_train_and_test_labels(shared_data: Path) -> None:
    folder = shared_data / "trec-qc"
    train = load_labelled(folder / "train.jsonl")
    test = load_labelled(folder / "test.jsonl")
    assert (len(train), len(test)) == (5452, 500)
    vocab = build_vocab(train.labels)
    assert len(vocab) == 50 and len(set(test.labels)) == 42
    assert (encode_labels(test, vocab) >= 0).all()
    coarse = build_vocab(load_labelled(folder / "train.jsonl", label_field="coarse").labels)
    assert coarse == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
