"""A tiny run driven through the ``dualforge`` command: in this process (``main(argv)``) where the
fault is a bad input, in a child process where it is a signal, a concurrent run or a full disk."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dualforge.cli.main import main
from tests.train.helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "scifact-minilm.yaml")
CHILD_TIMEOUT = 240  # seconds a child run may take before the test fails (never hangs CI)


@dataclass(frozen=True)
class Outcome:
    """What one ``dualforge`` command did."""

    status: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one ``error:`` line (checked: exactly one, the last line, no traceback)."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error")]
        assert "Traceback" not in self.err, self.err
        assert len(errors) == 1 and lines[-1] == errors[0], self.err
        return errors[0]


@dataclass
class TinyRun:
    """``dualforge train`` on a tiny BERT and BEIR folder, with one run folder under ``out``."""

    model: Path
    data: Path
    out: Path
    name: str = "run"
    extra: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The run folder."""
        return self.out / self.name

    def argv(self, *overrides: str, command: str = "train") -> list[str]:
        """``dualforge <command>`` arguments for this run plus ``overrides``."""
        base = tiny_overrides(self.model, self.data, self.out, self.name)
        quick = ["eval.before=false", "eval.dims=[16,64]", "optim.max_steps=4", "run.save_every=1"]
        return [command, CONFIG, *base, *quick, *self.extra, *overrides]


@pytest.fixture
def tiny_run(tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path) -> TinyRun:
    """A fresh tiny run (4 steps, a checkpoint each step)."""
    return TinyRun(tiny_model_dir, tiny_beir, tmp_path / "runs")


@pytest.fixture
def dualforge(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run ``dualforge argv`` in this process; its status and output."""

    def run(argv: list[str]) -> Outcome:
        capsys.readouterr()
        status = main(argv)
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err)

    return run


def child_env() -> dict[str, str]:
    """The environment of a child ``dualforge``: this checkout first, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="0")
    return env


def spawn(argv: list[str], file_limit: int | None = None) -> subprocess.Popen[str]:
    """Start ``dualforge argv`` as a child process (``file_limit``: the largest file it may
    write, in bytes, as a full disk would stop it; writes past it fail with EFBIG)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # Ctrl-C reaches the child even when pytest runs in a background job (which ignores it)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.Popen(
        [sys.executable, "-m", "dualforge.cli.main", *argv],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=limit,
    )  # fmt: skip


def finish(child: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT) -> Outcome:
    """Wait for ``child`` (killed, and the test failed, past ``timeout``)."""
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"dualforge did not finish in {timeout} s")
    return Outcome(child.returncode, out, err)


def wait_for(
    check: Callable[[], bool], child: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT
) -> None:
    """Poll ``check`` until true (failing if ``child`` ends first or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while not check():
        if child.poll() is not None:
            _, err = child.communicate()
            pytest.fail(f"dualforge ended ({child.returncode}) before the awaited state: {err}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the awaited state did not come in {timeout} s")
        time.sleep(0.002)


def digest(folder: Path) -> str:
    """One hash of every file's name and bytes under ``folder`` (weights, config, card)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def steps(run: TinyRun) -> list[str]:
    """The checkpoint folders of ``run``, by name."""
    return sorted(p.name for p in (run.folder / "checkpoints").glob("step-*"))


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
            child.communicate()
