"""Every user mistake is one line, exit 2, before any training or encoding (issue 23, findings
6, 7, 8, 9, 11, 12), driven through the command with real bad files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import Outcome, TinyRun

PAIRS = [{"query": f"alpha query {i}", "positive": f"alpha beta document {i}"} for i in range(5)]


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _beir_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("command", ["validate", "train"])
def test_eval_dims_over_the_model_dim_fail_before_training(
    command: str, tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    run = dualforge(tiny_run.argv("eval.dims=[16,1000]", command=command))
    assert run.status == 2
    assert run.error == (
        "error: eval.dims=[16, 1000]: 1000 exceeds the model dim 64 (its embeddings have 64 dims)"
    )
    assert not (tiny_run.folder / "checkpoints").exists()


def test_too_few_examples_say_how_many_and_what_to_lower(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    few = _jsonl(tmp_path / "few.jsonl", PAIRS)
    run = dualforge(
        tiny_run.argv("data.format=jsonl", f"data.train_file={few}", command="validate")
    )
    assert run.status == 2
    assert run.error == (
        f"error: data: 5 training pairs cannot fill one batch of 8 (optim.batch_size=8) from "
        f"{few}: lower optim.batch_size to at most 5, or add examples"
    )
    empty = _jsonl(tmp_path / "empty.jsonl", [])
    run = dualforge(tiny_run.argv("data.format=jsonl", f"data.train_file={empty}"))
    assert run.status == 2 and run.error == f"error: data: no training examples in {empty}"


def test_qrels_with_only_zero_scores(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    data = _beir_copy(tiny_run.data, tmp_path / "beir")
    qrels = data / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text().replace("\t1\n", "\t0\n"))
    run = dualforge(tiny_run.argv(f"data.path={data}", command="validate"))
    assert run.status == 2
    assert (
        run.error
        == f"error: data: no training examples in {data}/qrels/train.tsv (rows with score > 0)"
    )


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_an_empty_beir_file_is_named(
    name: str, tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    data = _beir_copy(tiny_run.data, tmp_path / "beir")
    (data / name).write_text("")
    run = dualforge(tiny_run.argv(f"data.path={data}", command="validate"))
    assert run.status == 2
    assert run.error == (
        f"error: {data / name}: no records (the file is empty, or every line was bad)"
    )


def test_an_unwritable_output_dir_fails_in_validate(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = dualforge(tiny_run.argv(f"run.output_dir={blocker}/runs", command="validate"))
    assert run.status == 2
    assert run.error == f"error: run.output_dir='{blocker}/runs': {blocker} is a file, not a folder"


def test_model_folders_that_are_not_models(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    bare = shutil.copytree(tiny_run.model, tmp_path / "no-weights")
    (bare / "model.safetensors").unlink()
    run = dualforge(tiny_run.argv(f"model.name={bare}", command="validate"))
    assert run.status == 2
    assert run.error.startswith(f"error: model.name='{bare}': no weights in it")
    assert dualforge(tiny_run.argv("optim.max_steps=1")).status == 0
    run = dualforge(["encode", "--model", str(tiny_run.folder), "--input", "x", "--output", "y"])
    assert run.status == 2
    assert f"is a dualforge run folder: load {tiny_run.folder / 'final'}" in run.error


def test_export_and_encode_arguments(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    assert dualforge(tiny_run.argv("optim.max_steps=1", "run.save_every=0")).status == 0
    run = dualforge(["export", str(tiny_run.folder), "--output", str(tmp_path / "out")])
    assert run.status == 2
    assert f"{tiny_run.folder / 'final'} is the trained model already" in run.error
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    run = dualforge(["export", str(tiny_run.folder), "--output", str(taken)])
    assert run.status == 2 and "a file is there" in run.error and taken.read_text() == "mine"

    texts = tmp_path / "texts.txt"
    texts.write_text("alpha\nbeta\n")
    model = str(tiny_run.folder / "final")
    for dim in ("0", "1000"):
        args = [
            "encode",
            "--model",
            model,
            "--input",
            str(texts),
            "--output",
            str(tmp_path / "e.npy"),
        ]
        run = dualforge([*args, "--dim", dim])
        assert run.status == 2
        assert run.error == f"error: --dim {dim}: must be in 1..64 (the model's dim)"
    assert not (tmp_path / "e.npy").exists()


def test_search_and_eval_check_their_arguments_before_encoding(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], tmp_path: Path
) -> None:
    model = str(tiny_run.model)
    search = ["search", "--model", model, "--corpus", str(tiny_run.data)]
    run = dualforge([*search, "--queries", str(tmp_path / "missing.txt")])
    assert run.status == 2 and run.error.endswith("missing.txt: no such file")
    run = dualforge([*search, "--dims", "1000", "--queries", str(tiny_run.data / "queries.jsonl")])
    assert run.status == 2 and run.error == "error: --dims 1000: must be in 1..64 (the model's dim)"
    run = dualforge([*search, "--funnel", "16:10,1000:5"])
    assert run.status == 2 and run.error.startswith(
        "error: --funnel 16:10,1000:5: funnel dims 1000"
    )
    junk = tmp_path / "junk.npy"
    junk.write_text("not a matrix")
    run = dualforge(
        [*search, "--cache", str(junk), "--queries", str(tiny_run.data / "queries.jsonl")]
    )
    assert run.status == 2
    assert run.error.startswith(f"error: --cache {junk}: not an embeddings matrix")
    assert "allow_pickle" not in run.error

    evaluate = ["eval", "--model", model, "--data", str(tiny_run.data), "--split", "test"]
    run = dualforge([*evaluate, "--dims", "16,1000"])
    assert run.status == 2 and run.error == "error: --dims 1000: must be in 1..64 (the model's dim)"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = dualforge([*evaluate, "--output", str(blocker / "report.json")])
    assert run.status == 2 and run.error.endswith(f"{blocker} is a file, not a folder")


def test_a_tsv_header_is_not_trained_on(
    tiny_run: TinyRun,
    dualforge: Callable[..., Outcome],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [f"query {i}\tpositive text {i}\tnegative text {i}" for i in range(9)]
    tsv = tmp_path / "triples.tsv"
    tsv.write_text("query\tpositive\tnegative\n" + "\n".join(rows) + "\n")
    run = dualforge(tiny_run.argv("data.format=tsv", f"data.train_file={tsv}", command="validate"))
    assert run.status == 0, run.err
    assert "training examples: 9;" in run.out
    assert f"{tsv}:1: skipped the header line" in caplog.text  # a warning on stderr
