"""The training loop on a tiny model: it learns, resumes exactly after SIGKILL, stops on NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualforge.config import load_config
from dualforge.train.checkpoint import TrainerState, latest_checkpoint
from dualforge.train.loop import (
    Parts,
    StepInfo,
    build_parts,
    resume_or_start,
    train,
    train_steps,
)
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides

SLOW_TRAIN = """
import sys, time
from dualforge.config import load_config
from dualforge.train.loop import train
train(load_config(None, sys.argv[1:]), hooks=[lambda p, state, info: time.sleep(0.3)])
"""


def test_run_learns_and_writes_outputs(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    result = train(load_config(None, tiny_overrides(tiny_model_dir, tiny_beir, tmp_path)))
    assert result.steps == 12
    report = json.loads((result.run_dir / "report.json").read_text())
    assert set(report["metrics"]) >= {"ndcg@10", "recall@100"} and report["before"] is not None
    assert report["metrics"]["ndcg@10"] > report["before"]["ndcg@10"]
    losses = [
        r["loss"]
        for r in read_metrics_log(result.run_dir / "metrics.jsonl")
        if r["event"] == "train"
    ]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert (result.run_dir / "final" / "modules.json").is_file()
    assert "ndcg@10" in (result.run_dir / "summary.md").read_text()


def test_train_steps_stops_where_told_and_calls_hooks(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """Driving the loop in two calls (stop after 3 steps, then run to the end) trains exactly
    what one call does; hooks see every step once, after its bookkeeping."""
    args = [*tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), "eval.before=false"]
    whole = train(load_config(None, [*args, "run.name=whole"]))
    p = build_parts(load_config(None, [*args, "run.name=split", "run.save_every=100"]))
    seen: list[tuple[int, float, bool]] = []

    def hook(parts: Parts, state: TrainerState, info: StepInfo) -> None:
        saved = latest_checkpoint(parts.run_dir / "checkpoints")
        seen.append(
            (state.step, info.loss, saved is not None and saved.name.endswith(f"{state.step:07d}"))
        )

    state = train_steps(p, resume_or_start(p), stop=lambda s: s.step >= 3, hooks=[hook])
    assert state.step == 3 and [s for s, _, _ in seen] == [1, 2, 3]
    assert seen[-1][2] and not seen[0][2]  # the stop's step is checkpointed as a last step
    assert train_steps(p, state, stop=lambda s: s.step >= 3) == state  # nothing left to do
    state = train_steps(p, state, hooks=[hook])
    assert state.step == p.steps == 12 and [s for s, _, _ in seen] == list(range(1, 13))
    losses = [r["loss"] for r in read_metrics_log(whole.run_dir / "metrics.jsonl") if r["event"] == "train"]  # fmt: skip
    assert [loss for _, loss, _ in seen] == losses


def _wait_for_checkpoint(
    run_dir: Path, step: int, proc: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is not None and int(latest.name.split("-")[1]) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(
                f"training exited early: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared in time")


def test_sigkill_then_resume_gives_identical_weights(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    base = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path),
        "run.save_every=1",
        "eval.before=false",
    ]
    straight = train(load_config(None, [*base, "run.name=straight"]))
    killed_args = [*base, "run.name=killed"]
    root = Path(__file__).resolve().parents[2]  # this checkout's sources first, then its tests
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, *killed_args], stderr=subprocess.PIPE, env=env
    )
    try:
        _wait_for_checkpoint(tmp_path / "killed", 5, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = latest_checkpoint(tmp_path / "killed" / "checkpoints")
    assert interrupted_at is not None and int(interrupted_at.name.split("-")[1]) < 12
    resumed = train(load_config(None, [*killed_args, "run.resume=true"]))
    events = [r["event"] for r in read_metrics_log(resumed.run_dir / "metrics.jsonl")]
    assert "resume" in events
    a = load_file(str(straight.run_dir / "final" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
