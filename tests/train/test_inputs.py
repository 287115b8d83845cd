"""check_inputs: the paths and the loss name of a config are checked without loading anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dualforge.config import ConfigError, load_config
from dualforge.train.inputs import check_inputs


def _check(*overrides: str) -> None:
    check_inputs(load_config(None, list(overrides)))


def test_a_complete_setup_passes(tiny_beir: Path, tiny_model_dir: Path) -> None:
    _check(f"data.path={tiny_beir}", f"model.name={tiny_model_dir}", "data.dev_split=test")
    _check(f"data.path={tiny_beir}", "model.name=minilm")
    _check(f"data.path={tiny_beir}", "model.name=owner/hub-name")  # checked when it loads


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.path={missing}"], r"^data\.path='.*missing': no such folder$"),
        (["data.path={data}/corpus.jsonl"], r"^data\.path='.*corpus\.jsonl': no such folder$"),
        (["data.path={data}", "data.train_split=dev"], r"^data\.train_split='dev': no qrels/dev"),
        (
            ["data.path={data}", "data.dev_split=dev"],
            r"^data\.dev_split='dev': .*\['test', 'train'\]",
        ),
        (["data.format=jsonl"], r"^data\.train_file=None: must be set for data\.format='jsonl'$"),
        (
            ["data.format=tsv", "data.train_file={missing}"],
            r"^data\.train_file='.*': no such file$",
        ),
        (
            ["data.path={data}", "model.name={missing}"],
            r"^model\.name='.*missing': no such folder$",
        ),
        (["data.path={data}", "model.name=./model"], r"^model\.name='\./model': no such folder$"),
        (["data.path={data}", "loss.name=triplet"], r"^loss\.name='triplet': must be one of"),
    ],
)
def test_missing_inputs_name_the_key(
    overrides: list[str], message: str, tiny_beir: Path, tmp_path: Path
) -> None:
    filled = [o.format(data=tiny_beir, missing=tmp_path / "missing") for o in overrides]
    with pytest.raises(ConfigError, match=message):
        _check(*filled)


def test_a_folder_without_a_corpus_is_not_beir(tiny_beir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    shutil.copytree(tiny_beir, folder)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"no queries\.jsonl in it \(not a BEIR folder\)"):
        _check(f"data.path={folder}")
