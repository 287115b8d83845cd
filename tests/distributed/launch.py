"""Start W local worker processes (gloo, localhost) for a test, each under a timeout.

A hang fails the test instead of blocking CI: every process is killed when the timeout passes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on localhost nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun would set for ``rank`` of ``world`` on one machine."""
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )  # fmt: skip
    return env


def run_workers(
    args: Sequence[str],
    world: int,
    timeout: float = 180.0,
    module: str = "tests.distributed.worker",
) -> list[str]:
    """Run ``python -m module *args`` as ``world`` ranks; return each rank's stderr.

    Raises:
        AssertionError: A rank failed (its stderr is in the message) or the job ran past
            ``timeout`` seconds (every rank is killed first).
    """
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=worker_env(r, world, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for r in range(world)
    ]
    deadline = time.monotonic() + timeout
    try:
        outputs = [p.communicate(timeout=max(deadline - time.monotonic(), 1))[1] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError(
            f"{world} workers {list(args)} hung: killed after {timeout} s"
        ) from None
    for rank, (p, err) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{err[-3000:]}"
    return outputs
