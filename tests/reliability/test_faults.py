"""A run stopped by Ctrl-C, a NaN loss, a full disk or a kill keeps what it wrote and says so
in one line (issue 23, findings 4 and 9): final/ is replaced whole or not at all."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
from collections.abc import Callable

from tests.reliability.conftest import Outcome, TinyRun, digest, finish, spawn, steps, wait_for

BIG = 4 << 20  # a file-size limit under the tiny model's weights (8 MiB), over everything else


def test_ctrl_c_at_a_random_step(tiny_run: TinyRun, children: list[subprocess.Popen[str]]) -> None:
    at = random.Random(23).randint(1, 3)
    child = spawn(tiny_run.argv("optim.max_steps=400"))
    children.append(child)
    wait_for(lambda: (tiny_run.folder / "checkpoints" / f"step-{at:07d}").is_dir(), child)
    os.kill(child.pid, signal.SIGINT)
    stopped = finish(child)
    assert stopped.status == 130, stopped.err
    newest = steps(tiny_run)[-1]
    said = re.fullmatch(
        r"error: interrupted at step (\d+); checkpoint (\S+) kept; resume with --resume",
        stopped.error,
    )
    assert said is not None, stopped.error
    assert said[2] == newest
    # the step done when Ctrl-C came; its checkpoint, or (cut short) the one before, is kept
    assert int(said[1]) - int(newest[5:]) in (0, 1) and int(said[1]) >= at


def test_a_nan_loss_is_one_line_naming_the_step_and_checkpoint(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    run = dualforge(tiny_run.argv("optim.lr=1e30", "optim.max_grad_norm=0", "optim.warmup_ratio=0"))
    assert run.status == 2
    assert "the loss is nan at step " in run.error
    assert run.error.endswith("kept; resume with --resume")


def test_a_full_disk_during_a_checkpoint(tiny_run: TinyRun) -> None:
    full = finish(spawn(tiny_run.argv(), file_limit=BIG))
    assert full.status == 2
    assert "checkpoints/step-0000001: no space left on the device" in full.error
    assert "no checkpoint was written yet" in full.error
    assert not [p for p in (tiny_run.folder / "checkpoints").iterdir() if p.name != "latest"]


def test_a_full_disk_during_the_final_save_keeps_the_earlier_final(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    assert dualforge(tiny_run.argv("optim.max_steps=2")).status == 0
    before = digest(tiny_run.folder / "final")
    more = [*tiny_run.argv("optim.max_steps=3", "run.save_every=0"), "--resume"]
    full = finish(spawn(more, file_limit=BIG))
    assert full.status == 2
    assert f"{tiny_run.folder / 'final'}: no space left on the device" in full.error
    assert full.error.endswith("checkpoint step-0000002 kept; resume with --resume")
    assert digest(tiny_run.folder / "final") == before  # the earlier final/, whole
    assert not [p for p in tiny_run.folder.iterdir() if p.name.startswith(".tmp-")]


def test_a_kill_during_the_final_save_keeps_a_whole_final(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], children: list[subprocess.Popen[str]]
) -> None:
    """final/ is written as .tmp-final-<pid> and swapped in: a SIGKILL during its write leaves
    the earlier final/ whole (here: none), and the next run removes the leftover."""
    for _ in range(3):  # the kill may land just after the rename; try again then
        child = spawn([*tiny_run.argv("optim.max_steps=2", "run.save_every=0"), "--overwrite"])
        children.append(child)
        wait_for(lambda: any(tiny_run.folder.glob(".tmp-final-*")), child)
        os.kill(child.pid, signal.SIGKILL)
        finish(child)
        if any(tiny_run.folder.glob(".tmp-final-*")):
            break
    assert any(tiny_run.folder.glob(".tmp-final-*"))
    assert not (tiny_run.folder / "final").exists()
    rerun = dualforge([*tiny_run.argv("optim.max_steps=2", "run.save_every=0"), "--overwrite"])
    assert rerun.status == 0, rerun.err
    assert not any(tiny_run.folder.glob(".tmp-*"))
    assert (tiny_run.folder / "final" / "model.safetensors").is_file()
