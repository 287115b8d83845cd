"""Gradient Cache under 2 processes (gloo, started here) equals one process's full-batch gradient.

Each case runs one step in 2 worker processes (``worker.py``) and compares their parameter
gradients with the oracle (``scenario.oracle``): plain full-batch backward in this process, each
rank's rows encoded from that rank's RNG seed, so dropout masks match too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dualforge.gradcache.reference import compare_grads
from tests.distributed import scenario
from tests.distributed.launch import run_workers

TOL = 1e-5
BASE: dict[str, Any] = {
    "world": 2, "batch": 8, "negatives": 1, "chunk": 3, "token_budget": None, "tied": True,
    "dropout": 0.0, "symmetric": False, "matryoshka": False, "masked": False, "uneven": False,
}  # fmt: skip


def run_case(
    tmp_path: Path, **changes: Any
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], float]:
    spec = {**BASE, **changes}
    run_workers([json.dumps(spec), str(tmp_path)], spec["world"], timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(spec["world"])]
    torch.manual_seed(0)
    grads, loss = scenario.oracle(spec, scenario.tokenizer())
    return ranks, grads, loss


CASES = {
    "dropout-off": {},
    "dropout-on": {"dropout": 0.1},
    "symmetric-masked": {"symmetric": True, "masked": True, "negatives": 2},
    "matryoshka": {"matryoshka": True, "symmetric": True},
    "untied": {"tied": False, "dropout": 0.1},
    "learned-temperature": {"learned": True, "symmetric": True, "masked": True},
    "late-interaction": {"late": True, "dropout": 0.1, "symmetric": True, "masked": True},
    "late-interaction-uneven": {"late": True, "uneven": True, "chunk": None, "token_budget": 96},
    "distill-kl": {"distill": "kl", "negatives": 2, "dropout": 0.1, "masked": True},
    "distill-margin-mse": {"distill": "margin_mse", "negatives": 2},
    "distill-late": {"distill": "kl", "late": True, "negatives": 1, "dropout": 0.1},
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_full_batch_gradient(tmp_path: Path, case: str) -> None:
    ranks, oracle, loss = run_case(tmp_path, **CASES[case])
    for r, out in enumerate(ranks):
        diff = compare_grads(out["grads"], oracle)
        assert diff.max_rel <= TOL, (r, diff)  # no x W, no 1/W
        assert out["loss"] == pytest.approx(loss, rel=1e-6)  # the shares sum to the full loss
    assert ranks[0]["grads"].keys() == ranks[1]["grads"].keys()
    for name, g in ranks[0]["grads"].items():
        assert torch.equal(g, ranks[1]["grads"][name]), name  # DDP left both ranks the same


def test_one_gradient_all_reduce_per_step(tmp_path: Path) -> None:
    """Every DDP bucket is all-reduced exactly once, although each rank ran several backwards."""
    ranks, _, _ = run_case(tmp_path, chunk=2)
    for out in ranks:
        assert sum(out["chunks"]) >= 4  # several replays per rank...
        assert sorted(out["reduced"]) == sorted(set(out["reduced"]))  # ...each bucket reduced once
        assert len(out["reduced"]) >= 1


def test_uneven_chunk_counts_neither_hang_nor_change_the_gradient(tmp_path: Path) -> None:
    """Token-budget chunks: rank 0 holds long documents (many chunks), rank 1 short ones."""
    ranks, oracle, _ = run_case(tmp_path, uneven=True, chunk=None, token_budget=96, dropout=0.1)
    assert ranks[0]["chunks"][1] > ranks[1]["chunks"][1], [r["chunks"] for r in ranks]
    for out in ranks:
        assert compare_grads(out["grads"], oracle).max_rel <= TOL
        assert sorted(out["reduced"]) == sorted(set(out["reduced"]))


def test_fsdp2_with_uneven_chunk_counts_gives_the_full_batch_gradient(tmp_path: Path) -> None:
    """Under FSDP2 every forward all-gathers parameters, so the ranks must run as many forwards
    and backwards per tower: the one with fewer chunks pads with one-row passes."""
    changes = {
        "uneven": True,
        "chunk": None,
        "token_budget": 96,
        "dropout": 0.1,
        "strategy": "fsdp",
    }
    ranks, oracle, loss = run_case(tmp_path, **changes)
    assert ranks[0]["chunks"][1] > ranks[1]["chunks"][1]
    for out in ranks:
        assert compare_grads(out["grads"], oracle).max_rel <= TOL
        assert out["loss"] == pytest.approx(loss, rel=1e-6)


def test_matryoshka_parts_are_the_full_batch_values(tmp_path: Path) -> None:
    """Both ranks draw the same dims from the step number, and log the full batch's values."""
    ranks, oracle, loss = run_case(tmp_path, matryoshka=True, sample=True)
    by_dim = ranks[0]["parts"]["loss_by_dim"]
    assert len(by_dim) == 2 and set(by_dim) <= {"16", "32", "64"}
    assert compare_grads(ranks[0]["grads"], oracle).max_rel <= TOL
    assert ranks[1]["parts"] == ranks[0]["parts"]
    assert ranks[0]["loss"] == pytest.approx(loss, rel=1e-6)
