"""A run folder has one owner and never loses an earlier run's work (issue 23, findings 1, 3,
10, 12): a rerun without --resume is refused, --overwrite replaces, a second live run is
refused, what a killed run left is removed, and resuming says what it did."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.reliability.conftest import (
    Outcome,
    TinyRun,
    digest,
    finish,
    spawn,
    steps,
    wait_for,
)


def test_a_rerun_is_refused_and_overwrite_replaces(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome]
) -> None:
    first = dualforge(tiny_run.argv("optim.max_steps=6"))
    assert first.status == 0, first.err
    kept = digest(tiny_run.folder / "final")
    report = (tiny_run.folder / "report.json").read_bytes()

    again = dualforge(tiny_run.argv("optim.max_steps=3"))
    assert again.status == 2
    assert "already holds a run (checkpoints/, final/, report.json)" in again.error
    assert "--resume" in again.error and "--overwrite" in again.error
    assert digest(tiny_run.folder / "final") == kept
    assert (tiny_run.folder / "report.json").read_bytes() == report
    assert steps(tiny_run) == ["step-0000005", "step-0000006"]
    assert dualforge(tiny_run.argv("optim.max_steps=3", command="validate")).status == 2

    replaced = dualforge([*tiny_run.argv("optim.max_steps=3"), "--overwrite"])
    assert replaced.status == 0, replaced.err
    assert steps(tiny_run) == ["step-0000002", "step-0000003"]
    latest = (tiny_run.folder / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-0000003" and (tiny_run.folder / "checkpoints" / latest).is_dir()
    assert digest(tiny_run.folder / "final") != kept
    events = (tiny_run.folder / "metrics.jsonl").read_text().count('"event": "start"')
    assert events == 1  # the replaced run's log went with it


def test_resume_says_where_it_starts(tiny_run: TinyRun, dualforge: Callable[..., Outcome]) -> None:
    fresh = dualforge([*tiny_run.argv("optim.max_steps=2"), "--resume"])
    assert fresh.status == 0, fresh.err
    assert f"nothing to resume under {tiny_run.folder / 'checkpoints'}: starting at step 0" in (
        fresh.err
    )
    more = dualforge([*tiny_run.argv("optim.max_steps=3"), "--resume"])
    assert more.status == 0, more.err
    assert "resumed from step 2" in more.err
    mode = (tiny_run.folder / "final" / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def test_a_second_live_run_is_refused(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], children: list[subprocess.Popen[str]]
) -> None:
    """The lock names the holder; once it is killed (SIGKILL: no cleanup at all) the folder is
    free again and what the dead run was writing is removed."""
    child = spawn(tiny_run.argv("optim.max_steps=400", "run.save_every=1"))
    children.append(child)
    lock = tiny_run.folder / ".lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(child.pid), child)
    second = dualforge(tiny_run.argv("optim.max_steps=2", "run.save_every=0"))
    assert second.status == 2
    assert f"is in use by pid {child.pid}" in second.error

    ckpts = tiny_run.folder / "checkpoints"
    wait_for(lambda: any(ckpts.glob(".tmp-step-*")), child)
    os.kill(child.pid, signal.SIGKILL)
    finish(child)
    left = [p.name for p in ckpts.glob(".tmp-step-*")]
    left = left or kill_mid_write(tiny_run, ckpts, ".tmp-step-*", children)
    assert left  # what a crash leaves: a checkpoint's size each
    resumed = dualforge([*tiny_run.argv("optim.max_steps=2"), "--resume"])
    assert resumed.status == 0, resumed.err
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    assert f"removed what dead runs left in {tiny_run.folder}" in resumed.err


def kill_mid_write(
    run: TinyRun, folder: Path, pattern: str, children: list[subprocess.Popen[str]]
) -> list[str]:
    """SIGKILL a resumed run of ``run`` while a ``pattern`` temporary is under ``folder``; the
    temporaries left (tried up to 3 times: the kill may land just after a rename)."""
    for _ in range(3):
        child = spawn([*run.argv("optim.max_steps=400"), "--resume"])
        children.append(child)
        wait_for(lambda: any(folder.glob(pattern)), child)
        os.kill(child.pid, signal.SIGKILL)
        finish(child)
        left = [p.name for p in folder.glob(pattern)]
        if left:
            return left
    return []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
