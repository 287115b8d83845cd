"""``dualforge classify train`` / ``eval`` on a tiny JSONL set with the tiny random BERT."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from dualforge.classify import load_heads
from dualforge.cli import classify
from dualforge.data import DataError
from dualforge.errors import UsageError

TOPICS = {
    "LOC": ["where", "city", "river"],
    "HUM": ["who", "person", "author"],
    "NUM": ["how", "many", "year"],
}


def _run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="dualforge")
    classify.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["classify", *argv])
    status: int = args.func(args)
    return status


@pytest.fixture()
def tiny_labelled(tmp_path: Path) -> Path:
    rng = random.Random(0)
    folder = tmp_path / "qc"
    folder.mkdir()
    for split, n in (("train", 60), ("test", 12)):
        rows = []
        for i in range(n):
            coarse = list(TOPICS)[i % 3]
            words = [*rng.sample(TOPICS[coarse], 2), "the", "is"]
            rows.append({"text": " ".join(words), "label": f"{coarse}:x", "coarse": coarse})
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


@pytest.mark.parametrize("kind", ["mrl", "mrle"])
def test_train_then_eval_round_trip(
    tiny_model_dir: Path,
    tiny_labelled: Path,
    tmp_path: Path,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heads_dir = tmp_path / "heads"
    common = ["--data", str(tiny_labelled), "--no-progress", "--cache", str(tmp_path / "cache")]
    train = ["train", "--model", str(tiny_model_dir), *common, "--label", "coarse", "--kind", kind]
    train += ["--dims", "8,16,32,64", "--epochs", "20", "--tolerances", "0,0.1"]
    train += ["--out", str(heads_dir)]
    assert _run(train) == 0
    printed = capsys.readouterr().out
    assert "held-out split" in printed and "| fixed dim 64 |" in printed
    heads, meta = load_heads(heads_dir)
    assert heads.kind == kind and heads.dims == (8, 16, 32, 64) and heads.normalize is True
    assert meta["labels"] == ["HUM", "LOC", "NUM"] and meta["label_field"] == "coarse"
    assert meta["model"] == str(tiny_model_dir)
    assert [p["tolerance"] for p in meta["operating_points"]] == [0.0, 0.1]
    assert (heads_dir / "heldout.json").is_file() and (heads_dir / "heldout.md").is_file()
    assert (tmp_path / "cache" / "train.safetensors").is_file()

    out = tmp_path / "eval" / "report.json"
    plot = tmp_path / "eval" / "plot.png"
    evaluate = [
        "eval",
        "--heads",
        str(heads_dir),
        *common,
        "--output",
        str(out),
        "--plot",
        str(plot),
    ]
    assert _run(evaluate) == 0
    report = json.loads(out.read_text())
    assert report["num_examples"] == 12 and report["kind"] == kind
    assert [r["dim"] for r in report["fixed"]] == [8, 16, 32, 64]
    assert len(report["cascade"]) == 2 and 0.0 <= report["oracle"]["accuracy"] <= 1.0
    table = out.with_suffix(".md").read_text()
    assert "| oracle (smallest correct dim) |" in table and table in capsys.readouterr().out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_unseen_labels_error_or_count(
    tiny_model_dir: Path, tiny_labelled: Path, tmp_path: Path
) -> None:
    heads_dir = tmp_path / "heads"
    base = ["--no-progress", "--model", str(tiny_model_dir)]
    train = ["train", *base, "--data", str(tiny_labelled), "--epochs", "2", "--out", str(heads_dir)]
    assert _run(train) == 0
    odd = tmp_path / "odd.jsonl"
    rows = [{"text": "where city", "label": "LOC:x"}, {"text": "what color", "label": "ENTY:color"}]
    odd.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evaluate = ["eval", "--heads", str(heads_dir), "--data", str(odd), "--no-progress"]
    with pytest.raises(DataError, match=r"odd.jsonl:2: field 'label': label 'ENTY:color'"):
        _run(evaluate)
    out = tmp_path / "r.json"
    assert _run([*evaluate, "--unseen", "count", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_examples"] == 2 and report["num_unseen"] == 1
    assert report["fixed"][-1]["accuracy"] <= 0.5


def test_module_entry_and_bad_dims(tiny_labelled: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--dims"):
        _run(["train", "--data", str(tiny_labelled), "--dims", "8,x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse: not a --kind choice
        _run(["train", "--kind", "svm", "--data", str(tiny_labelled), "--out", "x"])
