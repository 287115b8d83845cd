"""The run folder's lock and reuse rules (the command-level faults are in tests/reliability/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualforge.train.run_folder import (
    LOCK,
    RunFolderError,
    RunLock,
    check_run_folder,
    claim,
    earlier_work,
    holder,
)


def test_the_lock_names_its_holder_and_a_probe_writes_nothing(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "run").acquire()
    try:
        assert (tmp_path / "run" / LOCK).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunFolderError, match=f"is in use by pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
        busy = holder(tmp_path / "run")
        assert busy is not None and f"pid {os.getpid()}" in str(busy)
        assert (tmp_path / "run" / LOCK).read_text() == f"{os.getpid()}\n"
        check_run_folder(tmp_path / "run", resume=False, overwrite=False, probe=False)
        with pytest.raises(RunFolderError, match="in use"):
            check_run_folder(tmp_path / "run", resume=False, overwrite=False)
    finally:
        lock.release()
    assert holder(tmp_path / "run") is None


def test_earlier_work_is_refused_unless_resumed_or_replaced(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    assert earlier_work(run) == []  # a log alone, or an empty checkpoints folder, is no run
    (run / "checkpoints" / "step-0000001").mkdir()
    (run / "final").mkdir()
    assert earlier_work(run) == ["checkpoints/", "final/"]
    with pytest.raises(RunFolderError, match=r"already holds a run \(checkpoints/, final/\)"):
        check_run_folder(run, resume=False, overwrite=False)
    check_run_folder(run, resume=True, overwrite=False)
    claim(run, resume=False, overwrite=True).release()
    assert sorted(p.name for p in run.iterdir()) == [LOCK]
