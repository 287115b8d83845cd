"""Checkpoints of a {component name: state} mapping: file per kind of state, atomic, strict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dualforge.train.checkpoint import (
    STATE,
    CorruptCheckpointError,
    ModelWeights,
    TrainerState,
    component_files,
    latest_checkpoint,
    load_checkpoint,
    resume_from,
    save_checkpoint,
)
from dualforge.train.state import GlobalRng, RunClock


class Box:
    """A component holding any state."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def _tied() -> nn.Module:
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied: saved once
    return model


def test_each_kind_of_state_gets_its_file_and_comes_back(tmp_path: Path) -> None:
    model = _tied()
    mixed = {"ids": torch.arange(4), "recent": [3, 1], "nested": {2: torch.ones(2)}}
    parts = {"model": ModelWeights(model), "plain": Box({"a": [1, 2.5], "b": None}), "mixed": Box(mixed)}  # fmt: skip
    path = save_checkpoint(tmp_path, TrainerState(step=7, best_score=0.5, best_step=6), parts)
    assert path.name == "step-0000007" and latest_checkpoint(tmp_path) == path
    files = component_files(path)
    assert files == {"model": "model.safetensors", "plain": "plain.json", "mixed": "mixed.pt"}
    assert json.loads((path / "plain.json").read_text()) == {"a": [1, 2.5], "b": None}
    fresh_model, plain, back = _tied(), Box(None), Box(None)
    state = load_checkpoint(path, {"model": ModelWeights(fresh_model), "plain": plain, "mixed": back})  # fmt: skip
    assert state == TrainerState(step=7, best_score=0.5, best_step=6)
    assert torch.equal(fresh_model[0].weight, model[0].weight)
    assert fresh_model[1].weight is fresh_model[0].weight  # still tied after loading
    assert plain.state == {"a": [1, 2.5], "b": None}
    assert torch.equal(back.state["ids"], mixed["ids"]) and back.state["recent"] == [3, 1]
    assert list(back.state["nested"]) == [2]  # int keys survive (not JSON)


def test_missing_or_mismatched_components_are_errors_naming_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, TrainerState(step=1), {"model": ModelWeights(_tied())})
    with pytest.raises(ValueError, match=r"no 'miner' state in this checkpoint"):
        load_checkpoint(path, {"miner": Box(None)})
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not match"):
        load_checkpoint(path, {"model": ModelWeights(other)})
    assert load_checkpoint(path, {}) == TrainerState(step=1)  # extra components are left alone


def test_keep_prunes_old_checkpoints_and_rng_and_clock_round_trip(tmp_path: Path) -> None:
    clock = RunClock()
    clock.add(3.0, 1.0)
    for step in (1, 2, 3):
        torch.manual_seed(step)
        save_checkpoint(tmp_path, TrainerState(step=step), {"rng": GlobalRng(), "clock": clock}, keep=2)  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000002", "step-0000003"]
    expected = torch.rand(3)  # what the generator gives after the step-3 save
    torch.manual_seed(99)
    again = RunClock()
    load_checkpoint(tmp_path / "step-0000003", {"rng": GlobalRng(), "clock": again})
    assert torch.equal(torch.rand(3), expected)
    assert again.fields() == {"mining_seconds": 1.0, "training_seconds": 2.0}


def test_pruning_orders_by_step_number_and_keeps_the_one_just_written(tmp_path: Path) -> None:
    """Names past seven digits sort before shorter ones by name, not by step; and a checkpoint
    older than those kept is still not removed the moment it is written."""
    clock = RunClock()
    for step in (9_999_999, 10_000_000):
        save_checkpoint(tmp_path, TrainerState(step=step), {"clock": clock}, keep=2)
    save_checkpoint(tmp_path, TrainerState(step=10_000_001), {"clock": clock}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-10000000", "step-10000001"]
    save_checkpoint(tmp_path, TrainerState(step=3), {"clock": clock}, keep=2)
    assert (tmp_path / "step-0000003").is_dir()
    assert (tmp_path / "latest").read_text() == "step-0000003"


def test_resume_from_skips_what_does_not_read_whole(tmp_path: Path) -> None:
    clock = RunClock()
    for step in (1, 2, 3):
        clock.add(1.0, 0.0)
        save_checkpoint(tmp_path, TrainerState(step=step), {"clock": clock}, keep=3)
    (tmp_path / "step-0000003" / "clock.json").write_text('{"train')  # cut short
    again = RunClock()
    resumed = resume_from(tmp_path, {"clock": again})
    assert resumed is not None and resumed.state.step == 2
    assert resumed.skipped == (f"{tmp_path / 'step-0000003' / 'clock.json'}: unreadable "
                               "(Unterminated string starting at: line 1 column 2 (char 1))",)  # fmt: skip
    assert again.fields()["training_seconds"] == 2.0
    assert resume_from(tmp_path / "none", {"clock": RunClock()}) is None
    for step in (1, 2):
        (tmp_path / f"step-{step:07d}" / STATE).unlink()
    with pytest.raises(CorruptCheckpointError, match=r"no checkpoint under .* loads: .*missing"):
        resume_from(tmp_path, {"clock": RunClock()})


def test_loading_some_components_reads_only_their_files(tmp_path: Path) -> None:
    """Exporting the weights of a checkpoint does not read (nor need) its optimizer state."""
    model = _tied()
    parts = {"model": ModelWeights(model), "optimizer": Box({"big": [torch.ones(3)]})}
    path = save_checkpoint(tmp_path, TrainerState(step=2), parts)
    (path / "optimizer.pt").write_bytes(b"cut short")
    fresh = _tied()
    assert load_checkpoint(path, {"model": ModelWeights(fresh)}) == TrainerState(step=2)
    assert torch.equal(fresh[0].weight, model[0].weight)
    with pytest.raises(CorruptCheckpointError, match=r"optimizer\.pt: unreadable"):
        load_checkpoint(path, {"model": ModelWeights(_tied()), "optimizer": Box(None)})
