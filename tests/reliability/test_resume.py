"""Resume never silently restarts (issue 23, findings 2 and 5): a dangling or corrupt newest
checkpoint falls back to the newest whole one, said on the console; when none reads, one line
names the files; the good checkpoints are never pruned on the way."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import Outcome, TinyRun, steps


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_deleted_newest_checkpoint_falls_back(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    assert dualforge(tiny_run.argv()).status == 0
    shutil.rmtree(tiny_run.folder / "checkpoints" / "step-0000004")  # latest names it
    resumed = dualforge([*tiny_run.argv("optim.max_steps=5"), "--resume"])
    assert resumed.status == 0, resumed.err
    assert "latest names step-0000004, which is missing" in resumed.err
    assert "resumed from step 3" in resumed.err
    assert steps(tiny_run) == ["step-0000004", "step-0000005"]  # step 3 kept until replaced


@pytest.mark.parametrize("component", ["model.safetensors", "optimizer.pt"])
def test_a_truncated_newest_checkpoint_falls_back(
    component: str, tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    assert dualforge(tiny_run.argv()).status == 0
    newest = tiny_run.folder / "checkpoints" / "step-0000004"
    _truncate(newest / component)
    resumed = dualforge([*tiny_run.argv("optim.max_steps=5"), "--resume"])
    assert resumed.status == 0, resumed.err
    assert f"warning: skipped {newest / component}: unreadable" in resumed.err
    assert "resumed from step 3" in resumed.err


def test_no_checkpoint_that_loads_is_one_line_naming_each(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    assert dualforge(tiny_run.argv()).status == 0
    for name in ("step-0000003", "step-0000004"):
        _truncate(tiny_run.folder / "checkpoints" / name / "model.safetensors")
    failed = dualforge([*tiny_run.argv("optim.max_steps=5"), "--resume"])
    assert failed.status == 2
    assert f"no checkpoint under {tiny_run.folder / 'checkpoints'} loads" in failed.error
    for name in ("step-0000003", "step-0000004"):
        assert f"{name}/model.safetensors: unreadable" in failed.error
    assert steps(tiny_run) == ["step-0000003", "step-0000004"]  # nothing pruned, nothing new
