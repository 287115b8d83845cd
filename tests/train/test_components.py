"""Components built from config: the Matryoshka wrapper is chosen by config keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualforge.config import ConfigError, load_config
from dualforge.data import TrainingExample
from dualforge.losses import MatryoshkaLoss
from dualforge.modeling import load_model
from dualforge.train.components import build_loss, build_model, projection_texts
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


def test_projection_key_is_checked() -> None:
    with pytest.raises(ValueError, match=r"model\.projection='svd'"):
        build_model(load_config(None, ["model.projection=svd"]).model)
    with pytest.raises(ValueError, match=r"model\.projection_docs=1"):
        build_model(load_config(None, ["model.projection=pca", "model.projection_docs=1"]).model)


def test_projection_texts_sample_the_corpus_or_the_positives() -> None:
    corpus = {f"d{i}": f"text {i}" for i in range(50)}
    picked = projection_texts(corpus, [], 10, seed=0)
    assert len(set(picked)) == 10 and set(picked) <= set(corpus.values())
    assert picked == projection_texts(corpus, [], 10, seed=0)
    examples = [TrainingExample("q", ("a", "b")), TrainingExample("r", ("b", "c"))]
    assert sorted(projection_texts(None, examples, 10, seed=0)) == ["a", "b", "c"]


def test_pca_projection_run_keeps_full_dim_scores_at_step_zero(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    base = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "optim.max_steps=2",
        "loss.matryoshka.dims=[16,64]",
        "eval.dims=[16,64]",
    ]
    plain = train(load_config(None, [*base, "run.name=plain"]))
    pca = train(load_config(None, [*base, "run.name=pca", "model.projection=pca"]))
    assert plain.before is not None and pca.before is not None
    full_plain, full_pca = plain.before["metrics_by_dim"]["64"], pca.before["metrics_by_dim"]["64"]
    assert all(abs(full_plain[k] - full_pca[k]) < 1e-6 for k in full_plain)  # a rotation
    events = [
        r for r in read_metrics_log(pca.run_dir / "metrics.jsonl") if r["event"] == "projection"
    ]
    assert len(events) == 1 and events[0]["documents"] > 1
    final = pca.run_dir / "final"
    assert (final / "2_Dense" / "model.safetensors").is_file()
    assert load_model(str(final)).query_encoder.projection is not None


def test_resumed_pca_run_takes_its_projection_from_the_checkpoint(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    args = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "optim.max_steps=2",
        "run.save_every=1",
        "eval.before=false",
        "model.projection=pca",
    ]
    first = train(load_config(None, args))
    again = train(load_config(None, [*args, "run.resume=true"]))
    events = [r["event"] for r in read_metrics_log(again.run_dir / "metrics.jsonl")]
    assert events.count("projection") == 1 and "resume" in events  # fitted once, not on resume
    a = load_file(str(first.run_dir / "final" / "2_Dense" / "model.safetensors"))
    b = load_file(str(again.run_dir / "final" / "2_Dense" / "model.safetensors"))
    assert torch.equal(a["linear.weight"], b["linear.weight"])
