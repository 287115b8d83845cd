"""Warmup then linear decay: learning rates checked against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from dualforge.train.schedule import build_optimizer, build_scheduler, linear_warmup_decay


def lrs_used(lr: float, warmup: int, total: int, steps: int) -> list[float]:
    """The learning rate each of ``steps`` optimizer steps runs with, through AdamW + LambdaLR."""
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = build_optimizer([("w", weight)], lr, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup, total)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        scheduler.step()
    return used


def test_multiplier_at_start_end_of_warmup_mid_decay_and_end() -> None:
    # warmup 4 of 12 steps: steps 0..3 ramp 1/4, 2/4, 3/4, 4/4; then (12 - s) / 8.
    assert linear_warmup_decay(0, 4, 12) == pytest.approx(0.25)
    assert linear_warmup_decay(3, 4, 12) == pytest.approx(1.0)  # last warmup step: peak
    assert linear_warmup_decay(4, 4, 12) == pytest.approx(1.0)  # first decay step: 8 / 8
    assert linear_warmup_decay(8, 4, 12) == pytest.approx(0.5)  # half way down: 4 / 8
    assert linear_warmup_decay(11, 4, 12) == pytest.approx(0.125)  # last step: 1 / 8
    assert linear_warmup_decay(12, 4, 12) == 0.0
    assert linear_warmup_decay(20, 4, 12) == 0.0  # never negative past the end


def test_without_warmup_decay_starts_at_the_peak() -> None:
    assert [linear_warmup_decay(s, 0, 4) for s in range(5)] == pytest.approx(
        [1.0, 0.75, 0.5, 0.25, 0.0]
    )


def test_optimizer_steps_run_at_the_scheduled_rates() -> None:
    # lr 0.1, warmup 2 of 6: 0.05, 0.1 | 0.1 * (6 - s) / 4 for s = 2..5
    assert lrs_used(0.1, 2, 6, 6) == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025])
    assert lrs_used(0.1, 0, 4, 5) == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0])


def test_no_weight_decay_on_biases_and_layer_norm_and_frozen_weights_left_out() -> None:
    weight, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    norm, frozen = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    frozen.requires_grad_(False)
    named = [("dense.weight", weight), ("dense.bias", bias), ("LayerNorm.weight", norm)]
    optimizer = build_optimizer([*named, ("frozen", frozen)], lr=0.1, weight_decay=0.5)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(weight)]
    assert [id(p) for p in no_decay["params"]] == [id(bias), id(norm)]
