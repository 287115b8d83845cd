"""How a run that stops early says so: one line naming the step, what was kept and what to do.

Ctrl-C, a non-finite loss and a full disk end a run without losing what it wrote: checkpoints are
atomic, so the newest one is whole. :func:`reported_faults` turns each into a :class:`RunStoppedError`
whose message ends with that checkpoint (``checkpoint step-0000040 kept; resume with
--resume``), printed by the ``dualforge`` command as one line (exit 130 for Ctrl-C, else 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dualforge.errors import UserError
from dualforge.files import NoSpaceError, out_of_space
from dualforge.train.checkpoint import checkpoints
from dualforge.train.run_folder import CHECKPOINTS


class RunStoppedError(UserError):
    """Training stopped before its last step; :func:`reported_faults` adds what was kept."""

    def noted(self, note: str) -> RunStoppedError:
        """The same fault, its message ending with ``note``."""
        return type(self)(f"{self}; {note}")


class InterruptedRunError(RunStoppedError):
    """Ctrl-C (SIGINT) stopped the run (``interrupted at step N``)."""

    status = 130


class NonFiniteLossError(RunStoppedError):
    """The loss became NaN or infinite; training stopped, the last checkpoint is intact."""


class DiskFullError(RunStoppedError):
    """A write of the run failed because the disk is full."""


def kept(run_dir: Path) -> str:
    """What a stopped run leaves to resume from, as the end of its message."""
    found = checkpoints(run_dir / CHECKPOINTS)
    if not found:
        return "no checkpoint was written yet (run.save_every sets how often)"
    return f"checkpoint {found[0].name} kept; resume with --resume"


@contextlib.contextmanager
def reported_faults(run_dir: Path) -> Iterator[None]:
    """Re-raise Ctrl-C, a non-finite loss and a full disk as one :class:`RunStoppedError` whose
    message names what was kept under ``run_dir``; other errors pass unchanged."""
    try:
        yield
    except RunStoppedError as err:
        raise err.noted(kept(run_dir)) from err
    except KeyboardInterrupt:
        raise InterruptedRunError(f"interrupted; {kept(run_dir)}") from None
    except NoSpaceError as err:
        raise DiskFullError(f"{err}; {kept(run_dir)}") from err
    except OSError as err:
        if not out_of_space(err, run_dir if run_dir.exists() else Path.cwd()):
            raise
        where = err.filename or run_dir
        raise DiskFullError(f"{where}: no space left on the device; {kept(run_dir)}") from err
