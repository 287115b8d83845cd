"""TensorBoard logging: the tag scheme, event files read back, the fan-out and its builder."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dualforge.errors import UserError
from dualforge.train.metrics_log import MetricsLog, read_metrics_log
from dualforge.train.tensorboard import (
    INSTALL_HINT,
    FanOutLog,
    TensorBoardLog,
    TensorBoardMissingError,
    build_logs,
    scalar_tags,
)

TRAIN = {
    "step": 3, "epoch": 0, "loss": 1.5, "lr": 2e-5, "grad_norm": 0.75, "examples_per_s": 40.0,
    "loss_by_dim": {"64": 1.75, "128": 1.25},
}  # fmt: skip
EVAL = {
    "step": 3,
    "split": "test",
    "metrics": {"ndcg@10": 0.5, "recall@100": 0.875},
    "metrics_by_dim": {"64": {"ndcg@10": 0.25}, "128": {"ndcg@10": 0.5}},
}


def accumulator(folder: Path) -> Any:
    """Every event file under ``folder``, read."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every event file under ``folder``."""
    acc = accumulator(folder)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tags_flatten_nested_fields_and_skip_text() -> None:
    mining = {"step": 5, "strategy": "refresh", "kind": "full", "encoded": 10, "ok": True}
    assert scalar_tags("mining", mining) == {"mining/encoded": 10.0}
    assert scalar_tags("train", TRAIN) == {
        "train/epoch": 0.0, "train/loss": 1.5, "train/lr": 2e-5, "train/grad_norm": 0.75,
        "train/examples_per_s": 40.0, "train/loss_by_dim/64": 1.75, "train/loss_by_dim/128": 1.25,
    }  # fmt: skip
    assert scalar_tags("eval", EVAL) == {
        "eval/test/ndcg@10": 0.5, "eval/test/recall@100": 0.875,
        "eval/test/ndcg@10/64": 0.25, "eval/test/ndcg@10/128": 0.5,
    }  # fmt: skip
    assert scalar_tags("start", {"steps": 12, "config": {"a": 1}, "device": "cpu"}) == {
        "start/steps": 12.0
    }
    tags = scalar_tags("error", {"step": 2, "loss": float("nan"), "n": np.int64(4)})
    assert math.isnan(tags["error/loss"]) and tags["error/n"] == 4.0


def test_event_files_hold_the_scalars_at_their_steps(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path / "tb")
    log.write("start", steps=12, config={"optim": {"lr": 2e-5}}, device="cpu")
    log.write("train", **TRAIN)
    log.write("train", **{**TRAIN, "step": 4, "loss": 1.0})
    log.write("eval", **EVAL)
    log.write("done", seconds=9.5)  # no step: the last one written (the eval's)
    log.close()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(3, 1.5), (4, 1.0)]
    assert scalars["train/loss_by_dim/64"] == [(3, 1.75), (4, 1.75)]
    assert scalars["eval/test/ndcg@10"] == [(3, 0.5)]
    assert scalars["eval/test/ndcg@10/128"] == [(3, 0.5)]
    assert scalars["eval/test/recall@100"] == [(3, 0.875)]
    assert scalars["start/steps"] == [(0, 12.0)]
    assert scalars["done/seconds"] == [(3, 9.5)]
    assert not any(tag.endswith(("/step", "/time", "/device")) for tag in scalars)
    (text,) = accumulator(tmp_path / "tb").Tensors("start/config/text_summary")
    assert text.step == 0 and b"lr: 2.0e-05" in text.tensor_proto.string_val[0]


def test_each_record_is_on_disk_before_close(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path / "tb")
    log.write("train", **TRAIN)
    assert read_scalars(tmp_path / "tb")["train/loss"] == [(3, 1.5)]
    log.write("train", **{**TRAIN, "step": 4, "loss": 1.0})
    assert read_scalars(tmp_path / "tb")["train/loss"] == [(3, 1.5), (4, 1.0)]
    log.close()
    log.close()  # closing twice is harmless


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path / "tb", enabled=False)
    log.write("train", **TRAIN)
    log.close()
    assert not (tmp_path / "tb").exists()


def test_missing_tensorboard_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for enabled in (True, False):  # every rank fails alike
        with pytest.raises(TensorBoardMissingError, match=r"dualforge\[tensorboard\]") as info:
            TensorBoardLog(tmp_path / "tb", enabled=enabled)
        assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="pip install"):
        build_logs(["jsonl", "tensorboard"], tmp_path, enabled=True)
    assert INSTALL_HINT in str(info.value)
    build_logs(["jsonl"], tmp_path, enabled=True).close()  # jsonl alone needs no tensorboard


def test_build_logs_fans_out_to_jsonl_and_tensorboard(tmp_path: Path) -> None:
    log = build_logs(["jsonl", "tensorboard"], tmp_path, enabled=True)
    assert log.enabled and log.path == tmp_path / "metrics.jsonl"
    log.write("train", **TRAIN)
    log.close()
    records = read_metrics_log(tmp_path / "metrics.jsonl")
    assert [r["loss_by_dim"] for r in records] == [TRAIN["loss_by_dim"]]
    assert read_scalars(tmp_path / "tensorboard")["train/loss"] == [(3, 1.5)]


def test_build_logs_disabled_and_bad_names(tmp_path: Path) -> None:
    quiet = build_logs(["tensorboard", "jsonl"], tmp_path, enabled=False)
    quiet.write("train", **TRAIN)
    quiet.close()
    assert not quiet.enabled and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"'wandb'.*\['jsonl', 'tensorboard'\]"):
        build_logs(["jsonl", "wandb"], tmp_path, enabled=True)
    with pytest.raises(ValueError, match="twice"):
        build_logs(["jsonl", "jsonl"], tmp_path, enabled=True)
    assert build_logs([], tmp_path, enabled=True).path is None


def test_fan_out_forwards_to_every_log(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        enabled = True

        def write(self, event: str, **fields: Any) -> None:
            seen.append((event, fields))

        def close(self) -> None:
            seen.append(("closed", {}))

    jsonl = MetricsLog(tmp_path / "m.jsonl", enabled=False)
    log = FanOutLog([jsonl, Recorder()])
    log.write("eval", step=1, split="dev")
    log.close()
    assert log.enabled and log.path == tmp_path / "m.jsonl"
    assert seen == [("eval", {"step": 1, "split": "dev"}), ("closed", {})]
