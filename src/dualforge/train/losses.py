"""Which loss ``loss.name`` builds: a registry that is passed in, never a mutable global.

A :class:`LossRegistry` maps each name to its config section (the ``loss:`` keys the loss
accepts, read by :func:`dualforge.config.load_config`) and a builder ``build(section, context)
-> Loss``. :func:`default_losses` holds dualforge's own; a user (or a test) adds one with
:meth:`LossRegistry.register`, which returns a new registry::

    losses = default_losses().register("mine", MySection, build_mine)
    cfg = load_config("run.yaml", ["loss.name=mine"], losses=losses.sections)
    train(cfg, losses=losses)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from dualforge.config import (
    BUILTIN_LOSSES,
    ConfigError,
    DistillLossConfig,
    InfoNceConfig,
    KlConfig,
    LossConfig,
    MarginMseConfig,
    MatryoshkaConfig,
)
from dualforge.losses import (
    Distillation,
    InfoNCE,
    ListwiseKL,
    Loss,
    MaxSimNCE,
    Nesting,
    default_dims,
    dense_candidates,
    margin_mse,
    maxsim_candidates,
)
from dualforge.losses.distill import Objective
from dualforge.losses.tiles import default_budget


@dataclass(frozen=True)
class LossContext:
    """Plain values a builder may need beside its section, read from the run.

    Attributes:
        model_dim: Size of the model's representations (token vectors for late interaction).
        normalized: Whether the model outputs unit vectors.
        tokens: Token-level representations (late interaction: score with MaxSim).
        nesting: The Matryoshka nesting the config asks for (None: none).
        budget: Elements a tile of scores may hold.
    """

    model_dim: int
    normalized: bool
    tokens: bool
    nesting: Nesting | None
    budget: int


LossBuilder = Callable[[Any, LossContext], Loss]
"""``build(section, context) -> Loss`` (``section`` is an instance of the entry's section)."""


@dataclass(frozen=True)
class LossEntry:
    """One registered loss: its config section class and its builder."""

    section: type[LossConfig]
    build: LossBuilder


@dataclass(frozen=True)
class LossRegistry:
    """Losses by ``loss.name`` (immutable: :meth:`register` returns a new registry)."""

    entries: Mapping[str, LossEntry]

    def register(self, name: str, section: type[LossConfig], build: LossBuilder) -> LossRegistry:
        """A registry with ``name`` added.

        Raises:
            ValueError: ``name`` is taken, or ``section`` is not a :class:`LossConfig`.
        """
        if name in self.entries:
            raise ValueError(f"a loss named {name!r} is registered already")
        if not issubclass(section, LossConfig):
            raise ValueError(f"the section of loss {name!r} must subclass LossConfig")
        return LossRegistry(MappingProxyType({**self.entries, name: LossEntry(section, build)}))

    @property
    def sections(self) -> Mapping[str, type[LossConfig]]:
        """``loss.name`` -> section class, for :func:`~dualforge.config.load_config`."""
        return MappingProxyType({name: e.section for name, e in self.entries.items()})

    def entry(self, cfg: LossConfig) -> LossEntry:
        """The entry of ``cfg.name``, checked against the section ``cfg`` was read as.

        Raises:
            ConfigError: The name is not registered, or the config was read as another section.
        """
        found = self.entries.get(cfg.name)
        if found is None:
            raise ConfigError(f"loss.name={cfg.name!r}: must be one of {sorted(self.entries)}")
        if not isinstance(cfg, found.section):
            raise ConfigError(
                f"loss.name={cfg.name!r}: the config was read as {type(cfg).__name__}, the "
                f"registered section is {found.section.__name__} (pass losses=registry.sections "
                "to load_config)"
            )
        return found


def build_info_nce(cfg: InfoNceConfig | DistillLossConfig, ctx: LossContext) -> Loss:
    """InfoNCE with the section's temperature, symmetry and similarity; over MaxSim scores for
    token-level representations."""
    if ctx.tokens:
        return MaxSimNCE(cfg.temperature, cfg.symmetric, ctx.nesting, ctx.budget)
    return InfoNCE(cfg.temperature, cfg.symmetric, cfg.similarity, ctx.nesting, ctx.budget)


def _distillation(cfg: DistillLossConfig, ctx: LossContext, objective: Objective) -> Loss:
    """A :class:`Distillation` with ``objective`` over the student's scores of each query's
    candidates (MaxSim for token representations), plus InfoNCE when ``distill.weight > 0``."""
    renormalize = ctx.nesting.renormalize if ctx.nesting is not None else False
    every = cfg.distill.in_batch
    scorer = (
        maxsim_candidates(renormalize, ctx.budget, every)
        if ctx.tokens
        else dense_candidates(cfg.similarity, renormalize, every)
    )
    weight = cfg.distill.weight
    nce = build_info_nce(cfg, ctx) if weight > 0 else None
    return Distillation(
        objective, scorer, cfg.distill.normalize, ctx.nesting, nce, weight, in_batch=every
    )


def build_kl(cfg: KlConfig, ctx: LossContext) -> Loss:
    """Listwise KL from teacher scores (``loss.name: kl``)."""
    objective = ListwiseKL(cfg.temperature, cfg.distill.teacher_temperature)
    return _distillation(cfg, ctx, objective)


def build_margin_mse(cfg: MarginMseConfig, ctx: LossContext) -> Loss:
    """MarginMSE from teacher scores (``loss.name: margin_mse``)."""
    return _distillation(cfg, ctx, margin_mse)


_BUILDERS: Mapping[str, LossBuilder] = MappingProxyType(
    {"info_nce": build_info_nce, "kl": build_kl, "margin_mse": build_margin_mse}
)


def default_losses() -> LossRegistry:
    """dualforge's own losses (a new registry each call)."""
    return LossRegistry(
        MappingProxyType({n: LossEntry(BUILTIN_LOSSES[n], b) for n, b in _BUILDERS.items()})
    )


def nesting_of(
    cfg: MatryoshkaConfig, model_dim: int, normalized: bool, seed: int
) -> Nesting | None:
    """The :class:`Nesting` the ``loss.matryoshka`` section asks for (None when off).

    Raises:
        ConfigError: Dims beyond the model dim, or dims / weights that do not fit.
    """
    if not cfg.active:
        return None
    dims = cfg.dims or default_dims(model_dim)
    if dims[-1] > model_dim:
        raise ConfigError(f"loss.matryoshka.dims={list(dims)} exceeds the model dim {model_dim}")
    renormalize = normalized if cfg.renormalize is None else cfg.renormalize
    try:
        return Nesting(dims, cfg.weights, renormalize, cfg.sample_dims or None, seed)
    except ValueError as err:
        raise ConfigError(f"loss.matryoshka: {err}") from err


def build_loss(
    cfg: LossConfig,
    registry: LossRegistry,
    *,
    model_dim: int,
    normalized: bool,
    seed: int = 0,
    tokens: bool = False,
    device: torch.device | None = None,
) -> Loss:
    """The loss ``cfg.name`` names in ``registry``, with the run's nesting and tile budget.

    Args:
        cfg: The ``loss:`` section.
        registry: The losses to choose from (:func:`default_losses`, or yours).
        model_dim: Size of the model's representations (default Matryoshka dims end there).
        normalized: Whether the model outputs unit vectors (then prefixes are renormalised
            unless ``loss.matryoshka.renormalize`` says otherwise).
        seed: Seed of Matryoshka dim sampling.
        tokens: Token-level representations (late interaction).
        device: Where the loss runs (the automatic tile budget depends on it).
    """
    entry = registry.entry(cfg)
    budget = cfg.tile_budget or default_budget(device or torch.device("cpu"))
    nesting = nesting_of(cfg.matryoshka, model_dim, normalized, seed)
    return entry.build(cfg, LossContext(model_dim, normalized, tokens, nesting, budget))
