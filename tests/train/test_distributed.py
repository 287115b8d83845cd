"""One-process pieces of multi-process training: torchrun's environment, RNG states per rank."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dualforge.errors import UserError
from dualforge.train.distributed import ProcessInfo
from dualforge.train.state import GlobalRng, RankedRng


def test_process_info_reads_torchrun_and_defaults_to_one_process() -> None:
    assert ProcessInfo.from_env({}) == ProcessInfo(0, 1, 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    info = ProcessInfo.from_env(env)
    assert info == ProcessInfo(3, 4, 1, 2) and not info.main
    with pytest.raises(UserError, match="rank 4 of 4 is out of range"):
        ProcessInfo.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="torchrun environment"):
        ProcessInfo.from_env({"WORLD_SIZE": "two"})


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_each_rank_restores_its_own_rng_state() -> None:
    states = []
    for rank in range(2):
        torch.manual_seed(10 + rank), random.seed(10 + rank), np.random.seed(10 + rank)
        states.append(GlobalRng().state_dict())
    expected = []
    for state in states:
        GlobalRng().load_state_dict(state)
        expected.append(_draws())
    saved = RankedRng(0, seed=1, states=states).state_dict()
    for rank in range(2):
        RankedRng(rank, seed=1).load_state_dict(saved)
        assert _draws() == expected[rank]


def test_rng_of_a_one_process_checkpoint_is_rank_0s_and_new_ranks_are_seeded() -> None:
    torch.manual_seed(5)
    single = GlobalRng().state_dict()
    expected = _draws()
    RankedRng(0, seed=1).load_state_dict(single)
    assert _draws() == expected
    RankedRng(2, seed=1).load_state_dict({"ranks": [single, single]})  # W=3 after W=2
    first = _draws()
    RankedRng(2, seed=1).load_state_dict({"ranks": [single, single]})
    assert _draws() == first != expected
    with pytest.raises(RuntimeError, match="cannot be saved"):
        RankedRng(0, seed=1).state_dict()
