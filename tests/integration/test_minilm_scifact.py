"""Integration: the real all-MiniLM-L6-v2 on real SciFact (slower; CI runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualforge.config import EvalConfig, load_config
from dualforge.data import EpochBatchSampler, examples_from_beir, load_beir, load_eval_set
from dualforge.losses import info_nce
from dualforge.modeling import DualEncoder, load_model
from dualforge.train.check_grad import check_gradients
from dualforge.train.evaluation import evaluate_split
from dualforge.train.loop import train

pytestmark = pytest.mark.integration

# Independent figures (pytrec_eval) for zero-shot all-MiniLM-L6-v2 on SciFact test.
ZERO_SHOT = {"384": 0.645, "64": 0.484, "32": 0.337}


@pytest.mark.slow  # the whole corpus, ~4-6 min on 2 cores; `pytest -m slow` runs it
@pytest.mark.usefixtures("default_threads")  # the whole corpus: large matmuls
def test_zero_shot_scifact_matches_known_figures(shared_data: Path) -> None:
    data = load_eval_set(shared_data / "scifact", "test", skip_bad=False)
    report = evaluate_split(
        load_model("minilm"), data, EvalConfig(dims=(32, 64, 384)), show_progress=False
    )
    assert report.num_queries == 300 and report.num_docs == 5183
    for dim, expected in ZERO_SHOT.items():
        assert report.metrics_by_dim[dim]["ndcg@10"] == pytest.approx(expected, abs=1e-3), dim


def test_check_grad_on_minilm_within_1e5() -> None:
    result = check_gradients("minilm", batch=16, chunk=4, dropout=True)  # four chunks a tower
    assert result.diff.max_rel <= 1e-5, result.diff
    assert result.loss_cached == pytest.approx(result.loss_plain, rel=1e-6)


def fixed_batch_loss(model: DualEncoder, queries: list[str], docs: list[str]) -> float:
    model.eval()
    with torch.no_grad():
        q = model(model.tokenize(queries, "query", 64), "query")
        d = model(model.tokenize(docs, "document", 64), "document")
        return float(info_nce(q, d))


def test_short_training_run_lowers_training_loss(shared_data: Path, tmp_path: Path) -> None:
    examples = examples_from_beir(load_beir(shared_data / "scifact", "train"))
    batch = next(iter(EpochBatchSampler(examples, 64, seed=123)))
    before = fixed_batch_loss(load_model("minilm"), batch.queries, batch.positives)
    overrides = [
        f"data.path={shared_data / 'scifact'}",
        "data.test_split=null",
        "model.doc_max_length=64",
        "model.attention_dropout=0.0",
        "optim.batch_size=32",
        "optim.max_steps=8",
        "optim.lr=5e-5",
        "gradcache.chunk_size=8",
        "gradcache.precision=fp32",  # learning is tested here; bf16 in test_precision.py
        "eval.before=false",
        f"run.output_dir={tmp_path}",
        "run.progress=false",
        "run.save_every=0",  # no checkpoints (2 x 270 MB): resuming is tested in tests/train
    ]
    result = train(load_config("configs/scifact-minilm.yaml", overrides))
    assert result.steps == 8
    after = fixed_batch_loss(
        load_model(str(result.run_dir / "final")), batch.queries, batch.positives
    )
    assert after < before - 0.05, (before, after)
