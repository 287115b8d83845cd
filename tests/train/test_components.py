"""Components built from config: models, projection texts; a Matryoshka run end to end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dualforge.config import load_config
from dualforge.data import TrainingExample
from dualforge.modeling import load_model
from dualforge.train.components import build_model, projection_texts
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides


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


def _train_rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Step -> the ``train`` record of that step (the last one logged for it)."""
    rows = read_metrics_log(run_dir / "metrics.jsonl")
    return {r["step"]: r for r in rows if r["event"] == "train"}


def test_pca_run_resumed_mid_way_matches_the_uninterrupted_run(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """A 4-step PCA run stopped after its step-2 checkpoint and resumed ends bit-identical to the
    uninterrupted run (dropout on, one thread): weights, projection, the losses of steps 3-4; the
    projection comes from the checkpoint, not from a new fit.

    The stopped run is the uninterrupted run's step-2 checkpoint alone in a fresh run folder (what
    a crash right after that checkpoint leaves). Stopping it by a smaller ``optim.max_steps``
    instead would change the run: the linear decay ends at ``max_steps``, so the first two steps
    would train at other learning rates.
    """
    args = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "optim.max_steps=4",
        "run.save_every=2",
        "eval.before=false",
        "model.projection=pca",
    ]
    straight = train(load_config(None, [*args, "run.name=straight"]))
    step2 = straight.run_dir / "checkpoints" / "step-0000002"
    stopped = tmp_path / "stopped" / "checkpoints"
    shutil.copytree(step2, stopped / step2.name)
    (stopped / "latest").write_text(step2.name, encoding="utf-8")
    resumed = train(load_config(None, [*args, "run.name=stopped", "run.resume=true"]))
    events = [r["event"] for r in read_metrics_log(resumed.run_dir / "metrics.jsonl")]
    assert "resume" in events and "projection" not in events  # fitted once, in the first run
    assert resumed.steps == 4 and sorted(_train_rows(resumed.run_dir)) == [3, 4]
    losses = {s: r["loss"] for s, r in _train_rows(straight.run_dir).items()}
    assert {s: r["loss"] for s, r in _train_rows(resumed.run_dir).items()} == {
        3: losses[3],
        4: losses[4],
    }
    for name in ("model.safetensors", "2_Dense/model.safetensors"):
        a = load_file(str(straight.run_dir / "final" / name))
        b = load_file(str(resumed.run_dir / "final" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
