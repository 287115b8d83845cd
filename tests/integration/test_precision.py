"""``gradcache.precision=bf16`` reaches the engine: the one loop-level bf16 test.

Every other training test runs in fp32: bf16 autocast on a CPU without native bf16 (AVX2 only)
is an order of magnitude slower than fp32, and precision is not what those tests are about.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualforge.config import load_config
from dualforge.train.loop import train
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides

pytestmark = pytest.mark.integration


def test_bf16_run_is_close_to_but_not_the_fp32_run(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """Oracle: the same seeded run in fp32. Under autocast the losses and weights differ from it
    by bf16 rounding (an 8-bit mantissa: a few percent at most), and they are not bit-identical
    as they would be if the precision key were dropped on the way to the engine (the first
    step's loss can round to the same float; later steps' cannot all do so)."""
    base = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "data.test_split=null",
        "eval.before=false",
        "optim.max_steps=3",
    ]
    runs = {
        precision: train(
            load_config(None, [*base, f"run.name={precision}", f"gradcache.precision={precision}"])
        )
        for precision in ("fp32", "bf16")
    }
    losses = {
        precision: [
            r["loss"]
            for r in read_metrics_log(run.run_dir / "metrics.jsonl")
            if r["event"] == "train"
        ]
        for precision, run in runs.items()
    }
    assert len(losses["fp32"]) == len(losses["bf16"]) == 3
    assert all(torch.isfinite(torch.tensor(losses["bf16"])))
    for lo, hi in zip(losses["fp32"], losses["bf16"]):
        assert hi == pytest.approx(lo, rel=5e-2)
    assert losses["bf16"] != losses["fp32"]  # fp32 runs are bit-reproducible (see test_loop)
    weights = {
        p: load_file(str(run.run_dir / "final" / "model.safetensors")) for p, run in runs.items()
    }
    assert weights["fp32"].keys() == weights["bf16"].keys()
    assert any(not torch.equal(weights["fp32"][k], weights["bf16"][k]) for k in weights["fp32"])
