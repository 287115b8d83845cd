"""The multi-process mining step: two gloo ranks draw the one-process negatives, and a rank that
breaks or hangs mid-protocol ends the job with a message naming it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.distributed.launch import ROOT, free_port, run_workers, worker_env
from tests.distributed.mining_worker import batch

MODULE = "tests.distributed.mining_worker"


@pytest.mark.parametrize(("index", "rule"), [("tree", "absolute"), ("flat", "relative")])
def test_two_ranks_draw_the_one_process_negatives(tmp_path: Path, index: str, rule: str) -> None:
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        out.mkdir()
        spec = {"index": index, "filter": rule}
        run_workers([json.dumps(spec), str(out)], world, timeout=120, module=MODULE)
    one = torch.load(tmp_path / "w1" / "rank0.pt")["negatives"]
    ranks = [torch.load(tmp_path / "w2" / f"rank{r}.pt")["negatives"] for r in (0, 1)]
    assert ranks[0] == ranks[1] == one
    assert len(one) == 5 and all(len(ids) == 3 for step in one for ids in step)
    # the planted copy of each query's own positive never comes back with the filter on
    for step, mined in enumerate(one, start=1):
        for positive, ids in zip(batch(step).positive_ids, mined):
            assert positive is not None and f"copy{positive[1:]}" not in ids


def _run_failing(tmp_path: Path, fail: str, timeout: float) -> tuple[list[int | None], list[str]]:
    """Start 2 ranks with ``fail``; wait for rank 0 (at most 90 s); kill what is left."""
    port = free_port()
    spec = json.dumps({"fail": fail, "timeout": timeout})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", MODULE, spec, str(tmp_path)],
            env=worker_env(r, 2, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for r in range(2)
    ]
    deadline = time.monotonic() + 90
    try:
        procs[0].wait(timeout=90)
        procs[1].wait(timeout=max(1.0, deadline - time.monotonic()) if fail == "raise" else 1.0)
    except subprocess.TimeoutExpired:
        pass
    for p in procs:
        p.kill()
    errs = [p.communicate()[1] for p in procs]
    return [p.returncode for p in procs], errs


def test_a_rank_that_breaks_mid_protocol_is_named(tmp_path: Path) -> None:
    codes, errs = _run_failing(tmp_path, "raise", timeout=30)
    assert codes[1] != 0 and "rank 1 broke while encoding" in errs[1]
    assert codes[0] not in (0, None)
    assert "MiningProtocolError: mining step 2, encode: rank 1 did not answer" in errs[0]


def test_a_rank_that_hangs_is_named_after_the_timeout(tmp_path: Path) -> None:
    tick = time.monotonic()
    codes, errs = _run_failing(tmp_path, "hang", timeout=3)
    assert codes[0] not in (0, None) and time.monotonic() - tick < 80
    assert "mining step 2, encode: rank 1 did not answer within 3 s" in errs[0]
