"""Atomic files and folders: whole or absent, the old one kept on a failure, leftovers of dead
processes removed (a swap cut between its renames completed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualforge.files import (
    NoSpaceError,
    atomic_folder,
    blocked,
    out_of_space,
    remove_stale,
    write_text_atomic,
)


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path: Path) -> None:
    dest = tmp_path / "final"
    with atomic_folder(dest) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_folder(dest) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash")
    assert (dest / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    with atomic_folder(dest) as tmp:
        (tmp / "weights").write_text("new")
    assert (dest / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_files_get_the_usual_mode(tmp_path: Path) -> None:
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "secret").write_text("x")
        os.chmod(tmp / "secret", 0o600)  # what some writers choose
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out" / "secret").stat().st_mode & 0o777 == 0o666 & ~mask
    path = write_text_atomic(tmp_path / "deep" / "report.json", "{}")
    assert path.read_text() == "{}" and path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_remove_stale_completes_a_cut_swap_and_removes_the_rest(tmp_path: Path) -> None:
    dead = 999_999_999  # no such pid
    (tmp_path / f".old-final-{dead}").mkdir()  # the swap renamed final away, then died
    (tmp_path / f".tmp-final-{dead}").mkdir()
    (tmp_path / f".tmp-final-{dead}" / "weights").write_text("finished")
    (tmp_path / f".old-best-{dead}").mkdir()  # died before the new best was complete
    (tmp_path / f".old-best-{dead}" / "weights").write_text("previous")
    (tmp_path / f".tmp-step-0000003-{dead}").mkdir()
    (tmp_path / f".tmp-report.json-{dead}").write_text("{")
    mine = tmp_path / f".tmp-step-0000004-{os.getpid()}"
    mine.mkdir()
    removed = remove_stale(tmp_path)
    assert (tmp_path / "final" / "weights").read_text() == "finished"
    assert (tmp_path / "best" / "weights").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "best", "final"]
    assert f".tmp-step-0000003-{dead}" in removed and f".tmp-report.json-{dead}" in removed


def test_blocked_names_what_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert blocked(tmp_path / "new" / "deeper") is None
    assert blocked(tmp_path / "file" / "runs") == f"{tmp_path / 'file'} is a file, not a folder"


def test_out_of_space_reads_errno_and_words(tmp_path: Path) -> None:
    assert out_of_space(OSError(28, "No space left on device"), tmp_path)
    assert out_of_space(RuntimeError("I/O error: No space left on device (os error 28)"), tmp_path)
    assert not out_of_space(RuntimeError("shape mismatch"), tmp_path)
    assert issubclass(NoSpaceError, OSError)
