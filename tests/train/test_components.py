"""Components built from config: the Matryoshka wrapper is chosen by config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualforge.config import ConfigError, load_config
from dualforge.losses import MatryoshkaLoss
from dualforge.train.components import build_loss
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides


def test_plain_loss_without_matryoshka() -> None:
    assert not isinstance(build_loss(load_config().loss, 384, True), MatryoshkaLoss)


def test_enabled_uses_default_dims_and_renormalizes_normalized_models() -> None:
    cfg = load_config(None, ["loss.matryoshka.enabled=true"])
    loss = build_loss(cfg.loss, 384, normalized=True)
    assert isinstance(loss, MatryoshkaLoss)
    assert loss.dims == (32, 64, 128, 256, 384) and loss.renormalize


def test_dims_override_and_explicit_settings() -> None:
    cfg = load_config(
        None,
        [
            "loss.matryoshka.dims=[16,64]",
            "loss.matryoshka.weights=[2,1]",
            "loss.matryoshka.renormalize=false",
            "loss.matryoshka.sample_dims=1",
        ],
    )
    loss = build_loss(cfg.loss, 64, normalized=True)
    assert isinstance(loss, MatryoshkaLoss)
    assert (loss.dims, loss.weights, loss.renormalize, loss.sample_dims) == (
        (16, 64),
        (2.0, 1.0),
        False,
        1,
    )


def test_bad_matryoshka_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="exceeds the model dim 64"):
        build_loss(load_config(None, ["loss.matryoshka.dims=[32,128]"]).loss, 64, True)
    with pytest.raises(ValueError, match=r"loss.matryoshka: .*increasing"):
        build_loss(load_config(None, ["loss.matryoshka.dims=[64,32]"]).loss, 64, True)
    with pytest.raises(ConfigError, match=r"loss\.matryoshka"):
        load_config(None, ["loss.matryoshka.dimz=[32]"])


def test_matryoshka_run_logs_per_dim_losses_and_metrics(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    overrides = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "optim.epochs=1",
        "loss.matryoshka.dims=[16,32,64]",
        "eval.dims=[16,64]",
    ]
    result = train(load_config(None, overrides))
    rows = [r for r in read_metrics_log(result.run_dir / "metrics.jsonl") if r["event"] == "train"]
    assert rows and all(set(r["loss_by_dim"]) == {"16", "32", "64"} for r in rows)
    assert set(result.after["metrics_by_dim"]) == {"16", "64"}
