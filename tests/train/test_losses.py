"""The loss registry: ``loss.name`` picks a section and a builder, passed in, never patched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dualforge.config import ConfigError, InfoNceConfig, LossConfig, load_config
from dualforge.losses import (
    InfoNCE,
    Loss,
    LossInputs,
    LossOutput,
    MaxSimNCE,
    Nesting,
    PositiveCodes,
)
from dualforge.losses.inputs import TEACHER_SCORES
from dualforge.tokens import join_tokens
from dualforge.train.checkpoint import latest_checkpoint
from dualforge.train.inputs import check_inputs
from dualforge.train.loop import NonFiniteLossError, train
from dualforge.train.losses import LossContext, build_loss, default_losses
from dualforge.train.metrics_log import read_metrics_log
from tests.train.helpers import tiny_overrides


def _build(*overrides: str, dim: int = 384, tokens: bool = False) -> Loss:
    cfg = load_config(None, list(overrides))
    return build_loss(cfg.loss, default_losses(), model_dim=dim, normalized=True, tokens=tokens)


def test_the_default_is_plain_infonce() -> None:
    loss = _build()
    assert isinstance(loss, InfoNCE) and loss.nesting is None
    assert isinstance(_build(tokens=True), MaxSimNCE)


def test_enabled_uses_default_dims_and_renormalizes_normalized_models() -> None:
    loss = _build("loss.matryoshka.enabled=true")
    assert isinstance(loss, InfoNCE) and loss.nesting is not None
    assert loss.nesting.dims == (32, 64, 128, 256, 384) and loss.nesting.renormalize


def test_dims_override_and_explicit_settings() -> None:
    loss = _build(
        "loss.matryoshka.dims=[16,64]", "loss.matryoshka.weights=[2,1]",
        "loss.matryoshka.renormalize=false", "loss.matryoshka.sample_dims=1",
        "loss.tile_budget=4096", dim=64,
    )  # fmt: skip
    assert isinstance(loss, InfoNCE)
    assert loss.nesting == Nesting((16, 64), (2.0, 1.0), False, 1, 0)
    assert loss.budget == 4096


def test_the_automatic_tile_budget_follows_the_device() -> None:
    cfg = load_config().loss
    cpu = build_loss(cfg, default_losses(), model_dim=8, normalized=True)
    gpu = build_loss(
        cfg, default_losses(), model_dim=8, normalized=True, device=torch.device("cuda")
    )
    assert isinstance(cpu, InfoNCE) and isinstance(gpu, InfoNCE) and gpu.budget > cpu.budget


def test_bad_matryoshka_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match="exceeds the model dim 64"):
        _build("loss.matryoshka.dims=[32,128]", dim=64)
    with pytest.raises(ConfigError, match=r"loss.matryoshka: .*increasing"):
        load_config(None, ["loss.matryoshka.dims=[64,32]"])
    with pytest.raises(ConfigError, match=r"loss\.matryoshka"):
        load_config(None, ["loss.matryoshka.dimz=[32]"])


def test_a_loss_section_is_a_tagged_union() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^loss.name='triplet': must be one of \['info_nce', 'kl', 'margin_mse'\]$",
    ):
        load_config(None, ["loss.name=triplet"])
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) \['margin'\] for loss.name='info_nce'"
    ):
        load_config(None, ["loss.margin=0.2"])
    with pytest.raises(ConfigError, match=r"^loss.tile_budget=10: must be >= 1024"):
        load_config(None, ["loss.tile_budget=10"])


@dataclass(frozen=True)
class MarginConfig(LossConfig):
    """A loss with a setting of its own."""

    name: str = "margin"
    margin: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.margin > 0:
            raise ConfigError(f"loss.margin={self.margin!r}: must be > 0")


@dataclass(frozen=True)
class MarginLoss:
    margin: float

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice, /
    ) -> LossOutput:
        n = d.shape[0] // q.shape[0]
        mine = torch.arange(q.shape[0])[rows]
        pos = (q[mine] * d[mine * n]).sum(-1)  # (b,)
        neg = (q[mine] * d[(mine * n + n // 2) % d.shape[0]]).sum(-1)
        return LossOutput((self.margin - pos + neg).clamp_min(0).sum() / q.shape[0], {})


def build_margin(cfg: MarginConfig, ctx: LossContext) -> Loss:
    return MarginLoss(cfg.margin)


def test_a_registered_loss_has_its_own_section_without_patching() -> None:
    losses = default_losses().register("margin", MarginConfig, build_margin)
    assert "margin" not in default_losses().entries  # the default registry is untouched
    cfg = load_config(None, ["loss.name=margin", "loss.margin=0.5"], losses=losses.sections)
    assert isinstance(cfg.loss, MarginConfig) and cfg.loss.margin == 0.5
    loss = build_loss(cfg.loss, losses, model_dim=8, normalized=True)
    assert loss == MarginLoss(0.5)
    with pytest.raises(ConfigError, match=r"loss.margin=-1.0: must be > 0"):
        load_config(None, ["loss.name=margin", "loss.margin=-1"], losses=losses.sections)
    with pytest.raises(ConfigError, match="must be one of"):
        build_loss(cfg.loss, default_losses(), model_dim=8, normalized=True)
    with pytest.raises(ValueError, match="registered already"):
        losses.register("margin", MarginConfig, build_margin)
    with pytest.raises(ConfigError, match=r"loss.name='info_nce': the config was read as"):
        build_loss(MarginConfig(name="info_nce"), losses, model_dim=8, normalized=True)


def test_check_inputs_takes_the_registry(tiny_beir: Path) -> None:
    losses = default_losses().register("margin", MarginConfig, build_margin)
    cfg = load_config(None, [f"data.path={tiny_beir}", "loss.name=margin"], losses=losses.sections)
    check_inputs(cfg, losses)
    with pytest.raises(ConfigError, match=r"^loss.name='margin': must be one of"):
        check_inputs(cfg)


CONTEXTS = {
    "dense": ({}, False),
    "dense-nested-sampled": ({"loss.matryoshka.dims": "[4,8,16]", "loss.matryoshka.sample_dims": "2"}, False),
    "dense-symmetric-cos": ({"loss.symmetric": "true", "loss.similarity": "cos"}, False),
    "tokens": ({"loss.symmetric": "true"}, True),
    "tokens-nested": ({"loss.matryoshka.dims": "[8,16]"}, True),
}  # fmt: skip


def _reps(tokens: bool, b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if not tokens:
        q = torch.randn(b, 16, generator=g, dtype=torch.float64)
        return q, torch.randn(b * n, 16, generator=g, dtype=torch.float64)
    mask_q = torch.rand(b, 4, generator=g) > 0.2
    mask_d = torch.rand(b * n, 5, generator=g) > 0.2
    mask_q[:, 0] = mask_d[:, 0] = True
    return (
        join_tokens(torch.randn(b, 4, 16, generator=g, dtype=torch.float64), mask_q),
        join_tokens(torch.randn(b * n, 5, 16, generator=g, dtype=torch.float64), mask_d),
    )


@pytest.mark.parametrize("name", sorted(default_losses().entries))
@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("world", [2, 3])
def test_every_registered_loss_splits_into_shares_that_sum(
    name: str, context: str, world: int
) -> None:
    """The contract: W processes' shares (rows) sum to the one-process loss and gradient."""
    settings, tokens = CONTEXTS[context]
    data = ["data.format=jsonl", "data.num_negatives=1"]  # data any loss can train on
    cfg = load_config(
        None, [*data, f"loss.name={name}", *(f"{k}={v}" for k, v in settings.items())]
    )
    loss = build_loss(cfg.loss, default_losses(), model_dim=16, normalized=False, tokens=tokens)
    b, n = 6, 2
    q, d = _reps(tokens, b, n)
    q.requires_grad_()
    d.requires_grad_()
    ids = [f"d{j % 7}" for j in range(b * n)]
    teacher = torch.rand(b, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs = LossInputs(
        step=5,
        positives=PositiveCodes.from_ids(ids, [[i] for i in ids[::n]]),
        extras={TEACHER_SCORES: teacher * 10},
    )
    whole = loss(q, d, inputs, slice(0, b)).loss
    want = torch.autograd.grad(whole, [q, d])
    share = b // world
    parts = [loss(q, d, inputs, slice(r * share, (r + 1) * share)).loss for r in range(world)]
    got = torch.autograd.grad(sum(parts), [q, d])  # type: ignore[arg-type]
    total = float(sum(p.detach() for p in parts))
    assert abs(total - float(whole.detach())) <= 1e-10 * abs(float(whole.detach()))
    for a, b_ in zip(got, want):
        assert torch.allclose(a, b_, atol=1e-10, rtol=0)


def test_a_run_with_a_registered_loss_that_turns_nan_stops(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """A test registers a loss through the registry (no monkeypatching): the run uses it."""
    calls = {"n": 0}

    def build_flaky(cfg: InfoNceConfig, ctx: LossContext) -> Loss:
        inner = InfoNCE(cfg.temperature)

        def flaky(q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice) -> LossOutput:
            calls["n"] += 1
            out = inner(q, d, inputs, rows)
            return LossOutput(out.loss * float("nan") if calls["n"] == 2 else out.loss, {})

        return flaky

    losses = default_losses().register("flaky", InfoNceConfig, build_flaky)
    overrides = [
        *tiny_overrides(tiny_model_dir, tiny_beir, tmp_path), "loss.name=flaky",
        "run.save_every=1", "eval.before=false",
    ]  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 2"):
        train(load_config(None, overrides, losses=losses.sections), losses=losses)
    events = [r["event"] for r in read_metrics_log(tmp_path / "run" / "metrics.jsonl")]
    assert events.count("train") == 1 and "error" in events
    latest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert latest is not None and latest.name == "step-0000001"
