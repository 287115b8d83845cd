"""The ``loss:`` section: a tagged union chosen by ``loss.name``.

Every loss shares the keys of :class:`LossConfig` (its name, false-negative masking, the tile
budget, Matryoshka nesting) and adds its own settings in a subclass; ``loss.name`` picks the
subclass when the config is read (:func:`dualforge.config.load_config`), so a key that the named
loss does not have, or a bad value of one it has, is an error naming the key before anything
loads (``dualforge validate`` catches it). :data:`BUILTIN_LOSSES` are the sections of the losses
dualforge ships; a library user who registers a loss of their own
(:class:`dualforge.train.losses.LossRegistry`) passes its sections to ``load_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from dualforge.config.checks import ConfigError, _optional_at_least, _validate
from dualforge.losses.contrastive import Similarity
from dualforge.losses.distill import Normalization
from dualforge.matryoshka import check_dims

MIN_TILE_BUDGET = 1024
QRELS_TEACHER = "qrels"
"""``loss.distill.teacher``: the training qrels' grades, not a model folder."""


@dataclass(frozen=True)
class MatryoshkaConfig:
    """Matryoshka nesting over the loss: on when ``enabled`` or ``dims`` is given.

    ``dims`` empty means powers of two from 32 up to the model dim, plus the model dim.
    ``renormalize`` None means: renormalise prefixes when the model outputs unit vectors.
    ``sample_dims`` 0 uses every dim at every step.
    """

    enabled: bool = False
    dims: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    renormalize: bool | None = None
    sample_dims: int = 0

    def __post_init__(self) -> None:
        """Check values; errors name the key (the dims' bound, the model dim, is checked later)."""
        most = len(self.dims) or None
        _validate(
            self,
            "loss.matryoshka",
            [
                (all(w >= 0 for w in self.weights), "weights", ">= 0 each"),
                (self.sample_dims >= 0, "sample_dims", ">= 0 (0: every dim)"),
                (most is None or self.sample_dims <= most, "sample_dims", f"<= {most}, the dims"),
            ],
        )
        if self.dims:
            try:
                check_dims(self.dims, self.weights or None)
            except ValueError as err:
                raise ConfigError(f"loss.matryoshka: {err}") from err

    @property
    def active(self) -> bool:
        """Whether the loss is nested."""
        return self.enabled or bool(self.dims)


@dataclass(frozen=True)
class LossConfig:
    """Keys every loss has; ``name`` (a key of the loss registry) picks the section's class.

    ``tile_budget``: elements a tile of scores may hold (null: automatic, 2**24 on a CPU and
    2**28 on a GPU; see :mod:`dualforge.losses.tiles`). ``mask_false_negatives``: a document
    known to be relevant to a query (qrels, or a copy of its positive) is not its negative.
    """

    TAG: ClassVar[str] = "name"

    name: str = "info_nce"
    mask_false_negatives: bool = True
    tile_budget: int | None = None
    matryoshka: MatryoshkaConfig = field(default_factory=MatryoshkaConfig)

    def __post_init__(self) -> None:
        """Check the shared keys; errors name the key."""
        _validate(
            self,
            "loss",
            [
                (bool(self.name), "name", "a loss name"),
                (
                    _optional_at_least(self.tile_budget, MIN_TILE_BUDGET),
                    "tile_budget",
                    f">= {MIN_TILE_BUDGET} or null (automatic)",
                ),
            ],
        )


@dataclass(frozen=True)
class InfoNceConfig(LossConfig):
    """``loss.name: info_nce``: InfoNCE over in-batch and hard negatives (MaxSim scores for
    late-interaction models), exact and tiled."""

    name: str = "info_nce"
    temperature: float = 0.05
    symmetric: bool = False
    similarity: Similarity = "dot"

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        super().__post_init__()
        _validate(self, "loss", [(self.temperature > 0, "temperature", "> 0")])


@dataclass(frozen=True)
class DistillConfig:
    """``loss.distill``: where teacher scores come from and how they are read.

    ``teacher_temperature``: the teacher's scores are divided by it before the softmax (``kl``).
    ``normalize``: per-query normalisation of the teacher scores, ``none`` (default, scores as
    given), ``minmax`` (to [0, 1]) or ``zscore`` (mean 0, standard deviation 1). ``weight``:
    InfoNCE over the whole batch is added with this weight (0: distillation only). ``teacher``:
    a model folder (bi-encoder, late interaction or cross-encoder) that scores each query's
    candidates in the loop, mined negatives included, or ``qrels``: the training qrels' grades
    (BEIR data; 0 for unjudged documents) (null: the scores stored with the data);
    ``teacher_batch_size``: texts (or pairs) it scores at a time. ``in_batch`` (``kl`` with a
    ``teacher``): the teacher scores every document of the batch for every query and the KL covers
    them all, in-batch negatives included (a ``(B, B * (1 + K))`` matrix of teacher scores).
    """

    teacher_temperature: float = 1.0
    normalize: Normalization = "none"
    weight: float = 0.0
    teacher: str | None = None
    teacher_batch_size: int = 64
    in_batch: bool = False

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        _validate(
            self,
            "loss.distill",
            [
                (self.teacher_temperature > 0, "teacher_temperature", "> 0"),
                (self.weight >= 0, "weight", ">= 0"),
                (self.teacher is None or bool(self.teacher), "teacher", "a model folder or null"),
                (self.teacher_batch_size >= 1, "teacher_batch_size", ">= 1"),
            ],
        )


@dataclass(frozen=True)
class DistillLossConfig(LossConfig):
    """Keys every distillation loss has: the student's similarity and temperature (also those
    of the added InfoNCE term), its symmetry, and the ``distill`` settings."""

    temperature: float = 0.05
    symmetric: bool = False
    similarity: Similarity = "dot"
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        super().__post_init__()
        _validate(self, "loss", [(self.temperature > 0, "temperature", "> 0")])


@dataclass(frozen=True)
class KlConfig(DistillLossConfig):
    """``loss.name: kl``: listwise KL between the teacher's softmax over each query's scored
    candidates (at ``distill.teacher_temperature``) and the student's (at ``temperature``)."""

    name: str = "kl"


@dataclass(frozen=True)
class MarginMseConfig(DistillLossConfig):
    """``loss.name: margin_mse``: squared error between the student's and the teacher's margins
    (positive minus each negative), on raw scores (``temperature`` only scales InfoNCE)."""

    name: str = "margin_mse"


BUILTIN_LOSSES: Mapping[str, type[LossConfig]] = MappingProxyType(
    {"info_nce": InfoNceConfig, "kl": KlConfig, "margin_mse": MarginMseConfig}
)
"""The section class of each loss dualforge ships, by ``loss.name``."""
