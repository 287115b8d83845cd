"""``dualforge eval`` on a late-interaction folder: exhaustive MaxSim, storage, candidate stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualforge.errors import UsageError
from dualforge.modeling.late_io import save_late_model
from tests.cli.test_search_eval_cli import eval_args, run_cli
from tests.modeling.test_late_interaction import late_model


@pytest.fixture(scope="module")
def late_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    return save_late_model(late_model(tokenizer), tmp_path_factory.mktemp("late") / "model")


def test_eval_of_a_late_interaction_folder(
    late_dir: Path, tiny_beir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With every token as a candidate the reranked metrics are the exhaustive ones."""
    extra = ["--dims", "8,16", "--candidates", "--k-token", "100000", "--candidate-dim", "8"]
    assert run_cli(eval_args(late_dir, tiny_beir, *extra)) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics_by_dim"]) == {"8", "16"}
    assert report["candidates"]["recall_of_exhaustive@100"] == 1.0
    assert report["candidates"]["metrics"] == pytest.approx(report["metrics"])
    assert report["bytes_per_doc"]["16"]["fp32"] == report["tokens_per_doc"] * 16 * 4
    with pytest.raises(UsageError, match="--funnel is for single-vector models"):
        run_cli(eval_args(late_dir, tiny_beir, "--funnel", "8:10,16:5"))
