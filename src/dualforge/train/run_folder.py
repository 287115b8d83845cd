"""A run folder has one owner: a lock held for the run's lifetime, no silent reuse of a folder
that holds another run's work, and no leftovers of dead processes.

``runs/<name>/.lock`` is locked (``flock``; the kernel drops it when the process dies, so a
killed run never leaves a stale lock) and holds the owner's pid, named in the error a second run
gets. A folder that holds checkpoints, ``final/``, ``best/`` or a report is refused unless the run
resumes it (``run.resume``, ``--resume``) or replaces it (``run.overwrite``, ``--overwrite``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from dualforge.errors import UserError
from dualforge.files import remove, remove_stale
from dualforge.train.distributed import ProcessInfo, broadcast_object

LOCK = ".lock"
CHECKPOINTS = "checkpoints"
# what a run writes into its folder: refused for reuse (the first four), cleared by --overwrite
WORK = (CHECKPOINTS, "final", "best", "report.json")
OUTPUTS = (*WORK, "summary.md", "config.yaml", "metrics.jsonl", "tensorboard")


class RunFolderError(UserError):
    """The run folder is in use by another process, or holds a run this one would overwrite."""


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or the process ends)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock and write this pid into it.

        Raises:
            RunFolderError: Another live process holds it (the message names its pid).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        if not _try_lock(handle):
            handle.seek(0)
            pid = handle.read().strip()
            handle.close()
            raise _in_use(self.run_dir, pid)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a waiting run)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def holder(run_dir: Path) -> RunFolderError | None:
    """The error a run would get now because another process holds ``run_dir``, or None (a
    probe: it takes the lock for an instant and writes nothing)."""
    path = run_dir / LOCK
    if not path.is_file():
        return None
    with open(path, "a+", encoding="utf-8") as handle:
        if _try_lock(handle):
            return None  # closing the file drops the lock
        handle.seek(0)
        return _in_use(run_dir, handle.read().strip())


def earlier_work(run_dir: Path) -> list[str]:
    """What of an earlier run ``run_dir`` holds (checkpoints, final/, best/, report.json)."""
    found = []
    for name in WORK:
        path = run_dir / name
        if name == CHECKPOINTS:
            if path.is_dir() and any(path.glob("step-*")):
                found.append(f"{name}/")
        elif path.exists():
            found.append(f"{name}/" if path.is_dir() else name)
    return found


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool, probe: bool = True) -> None:
    """Refuse a folder in use, or one holding an earlier run that is neither resumed nor
    replaced (reads only; :func:`claim` checks again under the lock).

    Args:
        run_dir: The run folder.
        resume: The run continues the folder's run.
        overwrite: The run replaces the folder's run.
        probe: Test the lock (rank 0 only: several ranks probing at once would see each other).

    Raises:
        RunFolderError: Naming the folder, what it holds and the flags that would accept it.
    """
    busy = holder(run_dir) if probe else None
    if busy is not None:
        raise busy
    refuse_reuse(run_dir, resume, overwrite)


def refuse_reuse(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """:func:`check_run_folder` less the lock test (for the lock's holder).

    Raises:
        RunFolderError: ``run_dir`` holds an earlier run, neither resumed nor replaced.
    """
    found = earlier_work(run_dir)
    if found and not (resume or overwrite):
        raise RunFolderError(
            f"run folder {run_dir} already holds a run ({', '.join(found)}): pass --resume "
            "(run.resume=true) to continue it, --overwrite (run.overwrite=true) to replace it, "
            "or choose another run.name"
        )


def claim(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Lock ``run_dir``, check it again, clear it for ``overwrite``, and remove what dead
    processes left (temporary checkpoints and exports), reported on stderr.

    Raises:
        RunFolderError: See :func:`check_run_folder`.
    """
    lock = RunLock(run_dir).acquire()
    try:
        refuse_reuse(run_dir, resume, overwrite)
        if overwrite and not resume:
            for name in OUTPUTS:
                remove(run_dir / name)
        removed = remove_stale(run_dir) + remove_stale(run_dir / CHECKPOINTS)
    except BaseException:
        lock.release()
        raise
    if removed:
        print(
            f"note: removed what dead runs left in {run_dir}: {', '.join(removed)}", file=sys.stderr
        )
    return lock


@contextlib.contextmanager
def own_run_folder(
    run_dir: Path, resume: bool, overwrite: bool, proc: ProcessInfo
) -> Iterator[None]:
    """Hold ``run_dir`` for the block: :func:`claim` on rank 0, released at the end; every rank
    raises rank 0's error (none is left waiting)."""
    lock, error = None, None
    if proc.main:
        try:
            lock = claim(run_dir, resume, overwrite)
        except RunFolderError as err:
            error = str(err)
    error = broadcast_object(error, proc) if proc.world > 1 else error
    try:
        if error is not None:
            raise RunFolderError(error)
        yield
    finally:
        if lock is not None:
            lock.release()


def _in_use(run_dir: Path, pid: str) -> RunFolderError:
    return RunFolderError(
        f"run folder {run_dir} is in use by pid {pid or 'unknown'} (another run): wait for it to "
        "end, or choose another run.name"
    )


def _try_lock(handle: IO[str]) -> bool:
    """Take an exclusive, non-blocking lock on ``handle``; False when another process has it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
