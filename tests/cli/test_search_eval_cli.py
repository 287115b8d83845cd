"""``dualforge eval`` with --plot/--compare/--funnel/--budget, and ``dualforge search``."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dualforge.cli import eval as eval_cli
from dualforge.cli import search as search_cli
from dualforge.errors import UsageError
from dualforge.eval.retrieval import exact_search
from dualforge.modeling import load_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="dualforge")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cli.add_parser(sub)
    search_cli.add_parser(sub)
    args = parser.parse_args(list(argv))
    status: int = args.func(args)
    return status


def eval_args(model: Path, data: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--data", str(data), "--split", "test", *extra]


def test_eval_plot_compare_funnel(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "report.json", tmp_path / "plots" / "dims.png"
    extra = ["--dims", "16,32,64", "--plot", str(png), "--compare", str(tiny_model_dir)]
    extra += ["--funnel", "16:20,32:10,64:5", "--output", str(out)]
    assert run_cli(eval_args(tiny_model_dir, tiny_beir, *extra)) == 0
    report = json.loads(out.read_text())
    assert 0.0 <= report["metrics_by_dim"]["64"]["ndcg@10"] <= 1.0
    assert report["metrics_by_dim"]["64"] == report["metrics"]
    assert report["num_queries"] == 8
    # the same model again: identical metrics at every dim
    assert report["compare"]["model"] == str(tiny_model_dir)
    assert report["compare"]["metrics_by_dim"] == report["metrics_by_dim"]
    funnel = report["funnel"]
    assert funnel["spec"] == "16:20,32:10,64:5" and funnel["depth"] == 5
    assert funnel["flops_per_query"] == 40 * 16 + 20 * 32 + 10 * 64
    assert funnel["exact_flops_per_query"] == 40 * 64
    assert funnel["flops_ratio"] == pytest.approx(1920 / 2560)
    assert set(funnel["metrics"]) == set(report["metrics"])
    assert funnel["seconds"] > 0 and funnel["exact_seconds"] > 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_eval_funnel_keeping_all_first_equals_exact(
    tiny_model_dir: Path, tiny_beir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(eval_args(tiny_model_dir, tiny_beir, "--funnel", "8:40,64:10")) == 0
    funnel = json.loads(capsys.readouterr().out)["funnel"]
    assert funnel["metrics"] == funnel["exact_metrics"]
    assert funnel["flops_per_query"] == 40 * 8 + 40 * 64


def test_eval_argument_errors(tiny_model_dir: Path, tiny_beir: Path) -> None:
    with pytest.raises(UsageError, match="--plot needs --dims"):
        run_cli(eval_args(tiny_model_dir, tiny_beir, "--plot", "x.png"))
    with pytest.raises(UsageError, match="--funnel: funnel stage '32-10'"):
        run_cli(eval_args(tiny_model_dir, tiny_beir, "--funnel", "32-10"))
    with pytest.raises(UsageError, match=r"--funnel: funnel dims 128 is outside 1\.\.64"):
        run_cli(eval_args(tiny_model_dir, tiny_beir, "--funnel", "16:20,128:10"))
    with pytest.raises(UsageError, match="--budget needs a dev split"):
        run_cli(eval_args(tiny_model_dir, tiny_beir, "--budget", "0.01"))


def test_eval_budget_on_dev_split(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    data = tmp_path / "beir"
    shutil.copytree(tiny_beir, data)
    shutil.copy(data / "qrels" / "train.tsv", data / "qrels" / "dev.tsv")
    out = tmp_path / "report.json"
    argv = eval_args(tiny_model_dir, data, "--budget", "0.05", "--output", str(out))
    assert run_cli(argv) == 0
    budget = json.loads(out.read_text())["budget"]
    assert budget["dev_split"] == "dev" and budget["tolerance"] == 0.05
    chosen, reference = budget["chosen"], budget["reference"]
    assert reference["spec"] == "64:10" and reference["flops_per_query"] == 40 * 64
    assert chosen["flops_per_query"] <= reference["flops_per_query"]
    assert chosen["quality"] >= 0.95 * reference["quality"]
    assert budget["test"]["spec"] == chosen["spec"]
    with pytest.raises(UsageError, match="other than --split"):
        run_cli([*eval_args(tiny_model_dir, data, "--budget", "0.1"), "--split", "dev"])
    argv = [*argv, "--budget-confidence", "0.9"]
    assert run_cli(argv) == 0
    sure = json.loads(out.read_text())["budget"]
    assert sure["confidence"] == 0.9
    assert sure["chosen"]["flops_per_query"] >= chosen["flops_per_query"]
    with pytest.raises(UsageError, match="--budget-confidence must be in"):
        run_cli([*argv[:-1], "1.5"])


def test_eval_budget_cross_validated(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = eval_args(tiny_model_dir, tiny_beir, "--budget", "0.05", "--budget-cv", "2")
    assert run_cli([*argv, "--output", str(out)]) == 0  # no dev split needed
    report = json.loads(out.read_text())
    cv = report["budget_cv"]
    assert "budget" not in report and len(cv["folds"]) == 2
    assert sum(f["queries"] for f in cv["folds"]) == report["num_queries"]
    assert cv["exact_quality"] == pytest.approx(report["metrics"]["ndcg@10"])
    assert 0 < cv["flops_ratio"] <= 1 and 0 <= cv["quality"] <= 1
    with pytest.raises(UsageError, match="at least 2 folds"):
        run_cli([*argv[:-1], "1"])
    with pytest.raises(UsageError, match="exceeds"):
        run_cli([*argv[:-1], "1000"])


def expected_top(model_dir: Path, corpus: Path, queries: list[str], k: int) -> list[list[str]]:
    """Oracle: encode with the library and search exactly by cosine."""
    model = load_model(str(model_dir))
    records = [json.loads(line) for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    texts = [f"{r['title']} {r['text']}".strip() for r in records]
    docs = model.encode(texts, "document")
    _, ids = exact_search(model.encode(queries, "query"), docs, k, metric="cos")
    return [[records[i]["_id"] for i in row] for row in ids.tolist()]


def result_ids(out: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("query: "):
            blocks.append([])
        elif line.strip():
            blocks[-1].append(line.split("\t")[0].split(". ", 1)[1])
    return blocks


def test_search_queries_file_and_cache(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = ["alpha beta gamma", "protein cell virus"]
    qfile, cache = tmp_path / "queries.txt", tmp_path / "cache" / "corpus.npy"
    qfile.write_text("\n".join(queries) + "\n\n")
    base = ["search", "--model", str(tiny_model_dir), "--corpus", str(tiny_beir)]
    base += ["--queries", str(qfile), "--k", "4"]
    assert run_cli([*base, "--cache", str(cache)]) == 0
    first = capsys.readouterr().out
    want = expected_top(tiny_model_dir, tiny_beir, queries, 4)
    assert result_ids(first) == want
    assert "query: alpha beta gamma" in first
    title = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[int(want[0][0][1:])])
    assert f"\t{title['title']}" in first.splitlines()[1]
    assert np.load(cache).shape == (40, 64)
    assert cache.with_suffix(".ids.txt").read_text().split()[:2] == ["d0", "d1"]
    np.save(cache, np.load(cache)[:, ::-1])  # a tampered cache is read, not re-encoded
    assert run_cli([*base, "--cache", str(cache)]) == 0
    assert result_ids(capsys.readouterr().out) != want
    cache.with_suffix(".ids.txt").write_text("x\n")
    with pytest.raises(UsageError, match="does not match this corpus"):
        run_cli([*base, "--cache", str(cache)])


def test_search_funnel_dims_and_stdin(
    tiny_model_dir: Path,
    tiny_beir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["search", "--model", str(tiny_model_dir), "--corpus", str(tiny_beir / "corpus.jsonl")]
    monkeypatch.setattr("sys.stdin", io.StringIO("heart blood drug\n\ngene dose\n"))
    assert run_cli([*base, "--funnel", "16:40,64:5", "--k", "3"]) == 0
    got = result_ids(capsys.readouterr().out)
    assert got == expected_top(tiny_model_dir, tiny_beir, ["heart blood drug", "gene dose"], 3)
    monkeypatch.setattr("sys.stdin", io.StringIO("heart blood drug\n"))
    assert run_cli([*base, "--dims", "64", "--k", "2"]) == 0
    assert result_ids(capsys.readouterr().out) == [got[0][:2]]
    with pytest.raises(SystemExit):
        run_cli([*base, "--dims", "16", "--funnel", "16:10"])  # mutually exclusive
    with pytest.raises(UsageError, match=r"--dims 128: must be in 1\.\.64"):
        run_cli([*base, "--dims", "128"])
    with pytest.raises(UsageError, match="no such corpus file"):
        run_cli(["search", "--model", str(tiny_model_dir), "--corpus", "nowhere.jsonl"])
