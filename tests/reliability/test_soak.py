"""Kill a tiny run at random points (seeded) and resume it: its final weights equal an
uninterrupted run's, bit for bit (issue 23, Deliver 8). The longer soak is ``bench/soak.py``."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable

from safetensors.torch import load_file

from tests.reliability.conftest import Outcome, TinyRun, finish, spawn, steps, wait_for

KILLS = 2  # bounded for CI; bench/soak.py runs as many as asked
STEPS = 8


def test_kills_at_random_points_leave_the_weights_of_an_uninterrupted_run(
    tiny_run: TinyRun, dualforge: Callable[..., Outcome], children: list[subprocess.Popen[str]]
) -> None:
    rng = random.Random(2023)
    reference = TinyRun(tiny_run.model, tiny_run.data, tiny_run.out, "reference")
    assert dualforge(reference.argv(f"optim.max_steps={STEPS}")).status == 0
    folder = tiny_run.folder / "checkpoints"
    for _ in range(KILLS):
        done = max((int(name[5:]) for name in steps(tiny_run)), default=0)
        if done >= STEPS - 1:  # a slow machine ran on past the last kill point
            break
        target = rng.randint(done + 1, STEPS - 1)
        child = spawn([*tiny_run.argv(f"optim.max_steps={STEPS}"), "--resume"])
        children.append(child)
        wait_for((folder / f"step-{target:07d}").is_dir, child)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the next step, or its checkpoint
        os.kill(child.pid, signal.SIGKILL)
        finish(child)
    resumed = dualforge([*tiny_run.argv(f"optim.max_steps={STEPS}"), "--resume"])
    assert resumed.status == 0, resumed.err
    assert "resumed from step " in resumed.err
    got = load_file(str(tiny_run.folder / "final" / "model.safetensors"))
    want = load_file(str(reference.folder / "final" / "model.safetensors"))
    assert got.keys() == want.keys()
    assert all(got[k].equal(want[k]) for k in want)
    assert not [p for p in tiny_run.folder.rglob(".tmp-*")]
