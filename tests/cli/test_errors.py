"""User errors end as one line ``error: ...`` on stderr and exit status 2, before anything loads;
other errors keep their traceback, and ``--debug`` shows it for every error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dualforge.cli.train as cli_train
import dualforge.cli.validate as cli_validate
from dualforge.cli.main import error_line, main
from dualforge.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "scifact-minilm.yaml")


def _must_not_load(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("data or model was loaded before the bad value was reported")


def _user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``dualforge argv``; check exit 2 and one ``error:`` line; return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.similarity=l2"], "error: loss.similarity='l2': must be one of ['dot', 'cos']"),
        (["eval.select_metric=ndcg@20"], "error: eval.select_metric='ndcg@20': must be one of"),
        (
            ["data.format=csv"],
            "error: data.format='csv': must be one of ['beir', 'jsonl', 'tsv', 'hf']",
        ),
        (["data.path=/nonexistent"], "error: data.path='/nonexistent': no such folder"),
        (["optim.lr=abc"], "error: optim.lr: expected a number, got 'abc'"),
        (
            ["data.path={data}", "model.name=/no/such/model"],
            "error: model.name='/no/such/model': no such folder",
        ),
        (["optim.lr"], "error: override 'optim.lr' must look like key.sub=value"),
        (["optim.lrr=1"], "error: optim: unknown key(s) ['lrr']"),
        (["data.path={data}", "loss.name=l2"], "error: loss.name='l2': must be one of"),
        (["loss.margin=0.2"], "error: loss: unknown key(s) ['margin'] for loss.name='info_nce'"),
        (["loss.tile_budget=64"], "error: loss.tile_budget=64: must be >= 1024 or null"),
        (["data.format=jsonl"], "error: data.train_file=None: must be set for data.format="),
        (["data.path={data}", "data.train_split=trian"], "error: data.train_split='trian': no"),
    ],
)
def test_bad_values_fail_before_loading_in_one_line(
    command: str,
    overrides: list[str],
    message: str,
    tiny_beir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_validate, "build_parts", _must_not_load)
    monkeypatch.setattr(cli_train, "train", _must_not_load)
    argv = [command, CONFIG, *(o.format(data=tiny_beir) for o in overrides)]
    assert _user_error(capsys, argv).startswith(message)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _user_error(capsys, ["validate", str(tmp_path / "nope.yaml")])
    assert line == f"error: {tmp_path / 'nope.yaml'}: no such config file"


def test_bad_data_record_names_file_line_and_field(
    tiny_beir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "beir"
    (broken / "qrels").mkdir(parents=True)
    for name in ("queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        (broken / name).write_text((tiny_beir / name).read_text())
    corpus = (tiny_beir / "corpus.jsonl").read_text().splitlines()
    corpus[2] = '{"title": "", "text": "no id"}'
    (broken / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    argv = ["validate", CONFIG, f"data.path={broken}", f"model.name={tiny_model_dir}"]
    line = _user_error(capsys, argv)
    assert line == f"error: {broken / 'corpus.jsonl'}:3: field '_id': missing"


def test_missing_file_found_late_is_a_user_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_beir: Path
) -> None:
    def lost(*args: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/x/qrels/dev.tsv")

    monkeypatch.setattr(cli_validate, "build_parts", lost)
    line = _user_error(capsys, ["validate", CONFIG, f"data.path={tiny_beir}"])
    assert line == "error: /x/qrels/dev.tsv: No such file or directory"


def test_unexpected_errors_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, tiny_beir: Path
) -> None:
    def bug(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_validate, "build_parts", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["validate", CONFIG, f"data.path={tiny_beir}"])


def test_debug_shows_the_traceback_of_user_errors() -> None:
    with pytest.raises(ConfigError, match=r"loss\.similarity='l2'"):
        main(["--debug", "validate", CONFIG, "loss.similarity=l2"])


def test_error_line_joins_a_multi_line_message() -> None:
    assert error_line(ValueError("first\n  second\n\n")) == "first second"
    assert error_line(FileNotFoundError("plain")) == "plain"


def test_unknown_hub_model_is_one_line_from_the_command(tiny_beir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    argv = ["validate", CONFIG, f"data.path={tiny_beir}", "model.name=no-such-model"]
    done = subprocess.run(
        [sys.executable, "-m", "dualforge.cli.main", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'no-such-model': cannot be loaded")
