"""The dualforge command on the tiny model and tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dualforge.cli.main import main
from dualforge.errors import UsageError
from dualforge.modeling import load_model
from tests.train.helpers import tiny_overrides


def test_check_grad_passes_on_tiny_model(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-grad", "--model", str(tiny_model_dir), "--batch", "8", "--chunk", "3"]) == 0
    out = capsys.readouterr().out
    assert "same chunks" in out and "OK" in out
    rel = float(out.split("max rel grad diff:")[1].split()[0])
    assert rel <= 1e-5


def test_check_grad_reports_failure_above_tolerance(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against the plain full batch (no dropout) rounding differs a little: tolerance 0 must fail."""
    args = [
        "check-grad",
        "--model",
        str(tiny_model_dir),
        "--batch",
        "6",
        "--chunk",
        "2",
        "--no-dropout",
        "--tolerance",
        "0",
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "plain full-batch backward" in out and "FAIL" in out


def test_eval_writes_metrics_report(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(tiny_beir),
            "--split",
            "test",
            "--dims",
            "16,64",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert 0.0 <= report["metrics"]["ndcg@10"] <= 1.0
    assert set(report["metrics_by_dim"]) == {"16", "64"}
    assert report["metrics_by_dim"]["64"] == report["metrics"]
    assert report["num_queries"] == 8


def test_encode_and_validate_and_export(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "emb.npy"
    assert (
        main(
            [
                "encode",
                "--model",
                str(tiny_model_dir),
                "--input",
                str(tiny_beir / "corpus.jsonl"),
                "--output",
                str(target),
                "--dim",
                "16",
            ]
        )
        == 0
    )
    emb = np.load(target)
    assert emb.shape == (40, 16)
    assert target.with_suffix(".ids.txt").read_text().split()[0] == "d0"

    overrides = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "optim.max_steps=2",
        "run.save_every=1",
        "eval.before=false",
        "eval.dims=[16,64]",  # the shipped dims go up to MiniLM's 384; the tiny model has 64
    ]
    assert main(["validate", "configs/scifact-minilm.yaml", *overrides]) == 0
    assert "training examples: 24" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()

    assert main(["train", "configs/scifact-minilm.yaml", *overrides]) == 0
    exported = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run"), "--output", str(exported)]) == 0
    a = load_model(str(exported)).encode(["alpha beta"])
    b = load_model(str(tmp_path / "run" / "final")).encode(["alpha beta"])
    assert np.allclose(a, b, atol=1e-6)
    assert "library_name: sentence-transformers" in (exported / "README.md").read_text()
    args = ["export", str(tmp_path / "run"), "--output", str(tmp_path / "x"), "--adapter"]
    assert main(args) == 2
    assert "trained no LoRA adapters" in capsys.readouterr().err


def test_export_adapter_of_a_late_interaction_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Late-interaction folders are exported merged: --adapter fails on the config, in one line,
    before any checkpoint is read."""
    from dualforge.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    late = ["model.kind=late_interaction", "model.lora.enabled=true"]
    save_config(load_config(None, late), run / "config.yaml")
    assert main(["export", str(run), "--output", str(tmp_path / "x"), "--adapter"]) == 2
    err = capsys.readouterr().err
    assert "model.lora.export='adapter' is for single-vector models" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_dims_argument(
    tiny_model_dir: Path, tiny_beir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(tiny_beir), "--dims", "a,b"]
    assert main(args) == 2
    assert capsys.readouterr().err == "error: --dims must be comma-separated integers, got 'a,b'\n"
    with pytest.raises(UsageError, match="--dims"):
        main(["--debug", *args])


def test_rotate_keeps_full_scores_and_front_loads_prefixes(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tiny_beir / "corpus.jsonl"
    out = tmp_path / "rotated"
    assert main(["rotate", "--model", str(tiny_model_dir), "--input", str(corpus),
                 "--output", str(out), "--docs", "64"]) == 0  # fmt: skip
    base, rotated = load_model(str(tiny_model_dir)), load_model(str(out))
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()[:40]]
    a, b = base.encode(texts, "document"), rotated.encode(texts, "document")
    qa, qb = base.encode(["alpha beta"], "query"), rotated.encode(["alpha beta"], "query")
    assert np.abs(qa @ a.T - qb @ b.T).max() < 1e-5
    assert (b[:, :8] ** 2).sum() > (a[:, :8] ** 2).sum()
    capsys.readouterr()
    assert main(["rotate", "--input", str(corpus), "--output", str(out), "--docs", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --docs must be at least 2")
