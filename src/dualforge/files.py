"""Files and folders that appear whole or not at all, and what a crash leaves is cleaned up.

Everything a run writes goes through here: a file is written beside its destination and renamed
over it (:func:`write_text_atomic`); a folder (a checkpoint, ``final/``, ``best/``, an export) is
built under ``.tmp-<name>-<pid>`` and swapped in (:func:`atomic_folder`). A process killed
mid-write leaves only such temporary names, which :func:`remove_stale` deletes (or, for a swap
cut between its two renames, completes). Written files get the usual mode (``0644`` under the
usual umask), whatever the library that wrote them chose. A write that fails because the disk
(or the process's file-size limit) is full raises :class:`NoSpaceError` naming the destination,
whichever library did the writing. Imports only dualforge.errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from dualforge.errors import UserError

TMP = ".tmp-"
OLD = ".old-"
_TEMP_NAME = re.compile(r"^\.(tmp|old)-(?P<name>.+)-(?P<pid>\d+)$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# libraries that write files their own way say so only in words (safetensors: "os error 28")
_NO_SPACE_WORDS = ("no space left", "os error 28", "disk quota", "file too large", "os error 27")
_FULL_BYTES = 1 << 20  # a failed write with less than this left is taken as a full disk


class NoSpaceError(UserError, OSError):
    """A write failed because the disk (or the file-size limit) is full."""


def out_of_space(err: BaseException, where: Path) -> bool:
    """Whether ``err``, raised while writing under ``where``, means the disk is full: its errno,
    its words, or (for writers that say neither, like ``torch.save``) under 1 MiB left."""
    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        return True
    if any(word in str(err).lower() for word in _NO_SPACE_WORDS):
        return True
    try:
        return shutil.disk_usage(where).free < _FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def space_checked(dest: Path) -> Iterator[None]:
    """Turn a failed write of ``dest`` into :class:`NoSpaceError` when the disk is full."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as err:
        if out_of_space(err, dest.parent if dest.parent.exists() else Path.cwd()):
            raise NoSpaceError(f"{dest}: no space left on the device while writing it") from err
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP}{path.name}-{os.getpid()}")
    try:
        with space_checked(path), open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_folder(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest`` to fill; when the block ends without an error,
    its files are synced and it replaces ``dest`` (an older ``dest`` is removed only then).

    On an error the temporary folder is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP}{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with space_checked(dest):
            yield tmp
            _sync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, dest)


def replace_folder(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest``; an existing ``dest`` is first renamed ``.old-<name>-<pid>``
    and removed after (a crash between the renames is completed by :func:`remove_stale`)."""
    if dest.exists():
        old = dest.parent / f"{OLD}{dest.name}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)
    fsync_dir(dest.parent)


def remove_stale(folder: str | Path) -> list[str]:
    """Remove the temporary files and folders that processes other than this one left in
    ``folder``; return their names.

    A swap cut between its renames (``.old-X-pid`` present, ``X`` missing) is completed first:
    the finished ``.tmp-X-pid`` becomes ``X``, or, without one, ``.old-X-pid`` goes back.
    Call it only while owning the folder (no other live process writes there).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = str(os.getpid())
    stale = [
        (p, m)
        for p in sorted(folder.iterdir())
        if (m := _TEMP_NAME.match(p.name)) and m["pid"] != mine
    ]
    for old, m in stale:
        dest, done = folder / m["name"], folder / f"{TMP}{m['name']}-{m['pid']}"
        if old.name.startswith(OLD) and not dest.exists():
            os.replace(done if done.exists() else old, dest)
    removed = []
    for path, _ in stale:
        if path.exists() or path.is_symlink():
            remove(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def blocked(folder: str | Path) -> str | None:
    """Why ``folder`` (existing or to be created) cannot be written into, or None: its nearest
    existing path is a file, or a folder this process may not write."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def occupied(folder: str | Path) -> str | None:
    """What is at ``folder`` that a new folder must not replace (a file, a non-empty folder),
    or None."""
    folder = Path(folder)
    if folder.is_file() or folder.is_symlink():
        return "a file is there"
    if folder.is_dir() and any(folder.iterdir()):
        return "the folder exists and is not empty"
    return None


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file under ``root`` and give files and folders the usual modes."""
    file_mode, dir_mode = _file_mode(), _file_mode() | 0o111
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, dir_mode)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, file_mode)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _file_mode() -> int:
    """``0666`` less the process umask (``0644`` under the usual ``022``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def remove(path: Path, ignore_errors: bool = False) -> None:
    """Remove a file, a link or a whole folder at ``path`` (nothing there is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        path.unlink(missing_ok=True)
