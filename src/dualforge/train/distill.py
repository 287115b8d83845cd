"""Teacher scores stored with the training data: checked before training, summarised for the log.

A distillation run (``loss.name`` ``kl`` or ``margin_mse``) needs a teacher score for every
candidate of every example; :func:`summarize_teacher` refuses data without them before anything
trains, and says what the scores look like: their range, whether they look normalised already
(min-max or z-scored per query, the silent default of some tools), and, for ``kl``, how peaked the
teacher's softmax is at ``loss.distill.teacher_temperature`` (a softmax that puts almost all its
mass on one candidate teaches little more than a label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dualforge.config import DistillLossConfig, KlConfig
from dualforge.data import TrainingExample
from dualforge.errors import UserError
from dualforge.losses import normalize_scores

SATURATED = 0.99  # mean top-candidate probability above which the teacher softmax is "saturated"
FLAT = 1e-6  # tolerance of "looks normalised"


@dataclass(frozen=True)
class TeacherSummary:
    """What the run's teacher scores look like (logged in the ``start`` event and the report).

    Attributes:
        source: Where the scores come from (``data``).
        normalize: The per-query normalisation applied (``loss.distill.normalize``).
        examples: Scored training examples.
        low: Smallest stored score.
        high: Largest stored score.
        looks_normalized: ``minmax`` or ``zscore`` when every query's stored scores already look
            so, else None.
        top_probability: ``kl``: mean teacher probability of each query's best candidate, over
            the positive and its first ``num_negatives`` negatives, after normalisation (None
            for other losses).
        warnings: What a user should know, one line each.
    """

    source: str
    normalize: str
    examples: int
    low: float
    high: float
    looks_normalized: str | None
    top_probability: float | None
    warnings: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """Plain values for metrics.jsonl and report.json."""
        return {**asdict(self), "warnings": list(self.warnings)}


def summarize_teacher(
    cfg: DistillLossConfig, examples: Sequence[TrainingExample], num_negatives: int
) -> TeacherSummary:
    """Check that every example has teacher scores and summarise them.

    Raises:
        UserError: An example without scores (the first is named), or no examples.
    """
    unscored = [ex for ex in examples if not ex.scored]
    if unscored or not examples:
        first = f" (the first: query {unscored[0].query[:60]!r})" if unscored else ""
        raise UserError(
            f"loss.name={cfg.name!r} needs teacher scores for every training example: "
            f"{len(unscored)} of {len(examples)} have none{first}; give 'scores' or "
            "'pos_scores' / 'neg_scores' with the data"
        )
    rows = [
        torch.tensor(
            [ex.positive_scores[0], *ex.negative_scores[:num_negatives]], dtype=torch.float64
        )
        for ex in examples
    ]
    stored = torch.cat(
        [torch.tensor([*ex.positive_scores, *ex.negative_scores]) for ex in examples]
    )
    looks = _looks_normalized(rows)
    top = _top_probability(cfg, rows) if isinstance(cfg, KlConfig) else None
    return TeacherSummary(
        "data", cfg.distill.normalize, len(examples), float(stored.min()), float(stored.max()),
        looks, top, _warnings(cfg, looks, top),
    )  # fmt: skip


def _looks_normalized(rows: Sequence[torch.Tensor]) -> str | None:
    """``minmax`` / ``zscore`` when every row of two or more scores already looks so."""
    many = [r for r in rows if r.numel() > 1]
    if not many:
        return None
    if all(abs(float(r.min())) < FLAT and abs(float(r.max()) - 1) < FLAT for r in many):
        return "minmax"
    if all(
        abs(float(r.mean())) < FLAT and abs(float(r.std(unbiased=False)) - 1) < FLAT for r in many
    ):
        return "zscore"
    return None


def _top_probability(cfg: DistillLossConfig, rows: Sequence[torch.Tensor]) -> float:
    """Mean over queries of the teacher softmax's largest probability."""
    scale = 1.0 / cfg.distill.teacher_temperature
    normalized = [normalize_scores(r[None], cfg.distill.normalize)[0] for r in rows]
    tops = [float(torch.softmax(r * scale, dim=0).max()) for r in normalized]
    return sum(tops) / len(tops)


def _warnings(cfg: DistillLossConfig, looks: str | None, top: float | None) -> tuple[str, ...]:
    out = []
    if looks is not None:
        out.append(
            f"the stored teacher scores look {looks}-normalised already (every query's); "
            f"loss.distill.normalize={cfg.distill.normalize!r} is applied on top of that"
        )
    if top is not None and top > SATURATED:
        out.append(
            f"the teacher softmax saturates: at loss.distill.teacher_temperature="
            f"{cfg.distill.teacher_temperature:g} (normalize={cfg.distill.normalize!r}) the best "
            f"candidate gets p={top:.3f} on average; raise the temperature or normalise the "
            "scores (loss.distill.normalize=zscore)"
        )
    return tuple(out)
