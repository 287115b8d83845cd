"""Distillation from teacher scores: listwise KL and MarginMSE over each query's candidates.

Each query ``i`` has ``n = 1 + K`` candidates, its rows ``i*n .. i*n+n-1`` of ``d`` (positive
first), and a teacher score for each, ``inputs.extras[TEACHER_SCORES]`` ``(B, n)``. The student
scores the same candidates (dot / cosine, or MaxSim for token representations) at every
Matryoshka dim; the loss compares the two per query:

- ``kl``: ``KL(softmax(t / T_t) || softmax(s / T_s))``, the teacher's distribution over the
  candidates against the student's (T_t: ``teacher_temperature``, T_s: ``temperature``);
- ``margin_mse``: ``mean_j ((s_0 - s_j) - (t_0 - t_j))^2``, the positive's margin over each
  negative, on raw scores (Hofstätter et al. 2020).

Teacher scores are normalised per query first when asked (``minmax`` to [0, 1], ``zscore`` to
mean 0 and standard deviation 1; ``none`` keeps them). :class:`Distillation` is a
:class:`~dualforge.losses.inputs.Loss`: a function of representations only, so Gradient Cache
caches its gradient like any other and the full-batch gradient stays exact; each process
computes the terms of its ``rows`` divided by the full ``B``. With ``weight > 0`` InfoNCE over
the whole batch (in-batch and hard negatives) is added: ``L = KD + weight * InfoNCE``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from dualforge.errors import UserError
from dualforge.losses.contrastive import Similarity, docs_per_query
from dualforge.losses.inputs import TEACHER_SCORES, Loss, LossInputs
from dualforge.losses.matryoshka import Nesting, nested_output
from dualforge.losses.maxsim import maxsim, token_dim
from dualforge.losses.output import LossOutput
from dualforge.losses.tiles import BUDGET
from dualforge.matryoshka import check_dims
from dualforge.tokens import split_tokens

Normalization = Literal["none", "minmax", "zscore"]
"""Per-query normalisation of teacher scores (:func:`normalize_scores`)."""
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(student (b, n), teacher (b, n)) -> (b,)``: one term per query."""
CandidateScorer = Callable[[torch.Tensor, torch.Tensor, Sequence[int], slice], torch.Tensor]
"""``scorer(q, d, dims, rows) -> (M, b, n)``: student scores of queries ``rows`` against their
own candidates at each dim."""


def normalize_scores(scores: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, n)`` teacher scores normalised per query (row): ``none``, ``minmax`` (to [0, 1]) or
    ``zscore`` (mean 0, population standard deviation 1). A row whose scores are all equal
    becomes zeros under ``minmax`` and ``zscore``."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {how!r}; use one of {NORMALIZATIONS}")
    if how == "none":
        return scores
    if how == "minmax":
        low = scores.amin(dim=1, keepdim=True)
        span = scores.amax(dim=1, keepdim=True) - low
        return (scores - low) / span.clamp_min(torch.finfo(scores.dtype).tiny)
    centred = scores - scores.mean(dim=1, keepdim=True)
    spread = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return centred / spread.clamp_min(torch.finfo(scores.dtype).tiny)


@dataclass(frozen=True)
class ListwiseKL:
    """``KL(softmax(t / teacher_temperature) || softmax(s / temperature))`` per query."""

    temperature: float = 0.05
    teacher_temperature: float = 1.0

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``(b,)`` KL divergences of ``(b, n)`` student and teacher scores."""
        log_p = F.log_softmax(teacher / self.teacher_temperature, dim=1)  # (b, n)
        log_q = F.log_softmax(student / self.temperature, dim=1)  # (b, n)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def margin_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``(b,)`` mean over negatives of the squared difference between the student's and the
    teacher's margins ``score(positive) - score(negative)`` (``n >= 2`` candidates)."""
    if student.shape[1] < 2:
        raise ValueError("margin_mse needs at least one negative per query (data.num_negatives)")
    s = student[:, :1] - student[:, 1:]  # (b, K)
    t = teacher[:, :1] - teacher[:, 1:]  # (b, K)
    return (s - t).pow(2).mean(dim=1)


def own_candidates(d: torch.Tensor, n: int, rows: slice) -> torch.Tensor:
    """``(b, n, ...)``: the candidate rows of queries ``rows`` (documents grouped by query)."""
    part = d[rows.start * n : rows.stop * n]
    return part.view(-1, n, *part.shape[1:])


@dataclass(frozen=True)
class DenseCandidates:
    """The :data:`CandidateScorer` of single-vector students: dot products of (L2-renormalised,
    when ``renormalize`` or ``similarity="cos"``) prefixes."""

    similarity: Similarity = "dot"
    renormalize: bool = False
    in_batch: bool = False

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, dims: Sequence[int], rows: slice
    ) -> torch.Tensor:
        """``(M, b, n)`` scores of queries ``rows`` against their own candidates (``(M, b, B*n)``
        against every document of the batch when ``in_batch``)."""
        n = docs_per_query(q, d)
        qs = q[rows]  # (b, D)
        ds = d if self.in_batch else own_candidates(d, n, rows)  # (B*n, D) or (b, n, D)
        normalize = self.renormalize or self.similarity == "cos"
        out = []
        for m in dims:
            a, c = qs[:, :m], ds[..., :m]
            if normalize:
                a, c = F.normalize(a, dim=-1), F.normalize(c, dim=-1)
            out.append(a @ c.T if self.in_batch else torch.einsum("bd,bnd->bn", a, c))
        return torch.stack(out)  # (M, b, n) or (M, b, B*n)


@dataclass(frozen=True)
class MaxSimCandidates:
    """The :data:`CandidateScorer` of late-interaction students: MaxSim of each query's token
    vectors against its own candidates' at every token dim (masks as
    :mod:`dualforge.losses.maxsim`), in blocks of queries whose ``(b, T_q, n, T_d)`` similarities
    fit ``budget``."""

    renormalize: bool = False
    budget: int = BUDGET
    in_batch: bool = False

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, dims: Sequence[int], rows: slice
    ) -> torch.Tensor:
        """``(M, b, n)`` MaxSim scores of queries ``rows`` against their own candidates
        (``(M, b, B*n)`` against every document of the batch when ``in_batch``)."""
        if self.in_batch:
            qs, full, r = q[rows], q.shape[-1] - 1, self.renormalize
            return torch.stack([
                maxsim(token_dim(qs, m, full, r), token_dim(d, m, full, r), self.budget)
                for m in dims
            ])  # fmt: skip
        n = docs_per_query(q, d)
        qv, qm = split_tokens(q[rows])  # (b, Tq, D), (b, Tq)
        dv, dm = split_tokens(own_candidates(d, n, rows).flatten(0, 1))  # (b*n, Td, D)
        dv, dm = dv.view(-1, n, *dv.shape[1:]), dm.view(-1, n, dm.shape[-1])  # (b, n, Td, D)
        if not bool(dm.any(dim=-1).all()):
            raise ValueError("every document needs at least one scored token")
        step = max(1, self.budget // max(1, qv.shape[1] * n * dv.shape[2]))
        out = []
        for m in dims:
            a, c = qv[..., :m], dv[..., :m]
            if self.renormalize:
                a, c = F.normalize(a, dim=-1), F.normalize(c, dim=-1)
            blocks = [
                _own_maxsim(a[i : i + step], qm[i : i + step], c[i : i + step], dm[i : i + step])
                for i in range(0, a.shape[0], step)
            ]
            out.append(torch.cat(blocks))
        return torch.stack(out)  # (M, b, n)


def dense_candidates(
    similarity: Similarity, renormalize: bool, in_batch: bool = False
) -> CandidateScorer:
    """:class:`DenseCandidates` (the scorer of single-vector students)."""
    return DenseCandidates(similarity, renormalize, in_batch)


def maxsim_candidates(
    renormalize: bool, budget: int = BUDGET, in_batch: bool = False
) -> CandidateScorer:
    """:class:`MaxSimCandidates` (the scorer of late-interaction students)."""
    return MaxSimCandidates(renormalize, budget, in_batch)


def _own_maxsim(
    qv: torch.Tensor, qm: torch.Tensor, dv: torch.Tensor, dm: torch.Tensor
) -> torch.Tensor:
    """``(b, n)`` MaxSim of ``(b, Tq, D)`` queries against their ``(b, n, Td, D)`` candidates."""
    sim = torch.einsum("bid,bnjd->binj", qv, dv)  # (b, Tq, n, Td)
    sim = sim.masked_fill(~dm[:, None, :, :], float("-inf"))  # never a maximum
    best = sim.amax(dim=-1).masked_fill(~qm[:, :, None], 0.0)  # (b, Tq, n)
    return best.sum(dim=1)


@dataclass(frozen=True)
class Distillation:
    """Distillation from teacher scores as a :class:`~dualforge.losses.inputs.Loss` (see the
    module docstring).

    Attributes:
        objective: One term per query from student and teacher scores (:class:`ListwiseKL`,
            :func:`margin_mse`).
        scorer: The student's scores of each query's candidates (:func:`dense_candidates`,
            :func:`maxsim_candidates`).
        normalize: Per-query normalisation of the teacher scores.
        nesting: Matryoshka dims and weights (None: the full dim only).
        nce: InfoNCE over the whole batch, added with ``weight`` (None: none).
        weight: Weight of ``nce``.
        in_batch: The teacher scored every document of the batch for every query (``(B, B*n)``
            scores; the scorer must score them too): the KD term covers in-batch negatives.
    """

    objective: Objective
    scorer: CandidateScorer
    normalize: Normalization = "none"
    nesting: Nesting | None = None
    nce: Loss | None = None
    weight: float = 0.0
    in_batch: bool = False

    def __call__(
        self, q: torch.Tensor, d: torch.Tensor, inputs: LossInputs, rows: slice, /
    ) -> LossOutput:
        """This process's share; ``parts``: ``distill`` (and ``loss_by_dim``, ``info_nce``)."""
        batch, full = q.shape[0], _full_dim(q, d)
        columns = d.shape[0] if self.in_batch else docs_per_query(q, d)
        teacher = _teacher(inputs, batch, columns)[rows]
        t = normalize_scores(teacher, self.normalize).to(q.dtype)  # (b, n)
        dims = self.nesting.chosen(inputs.step) if self.nesting is not None else (full,)
        check_dims(dims, full=full)
        student = self.scorer(q, d, dims, rows)  # (M, b, n)
        values = torch.stack([self.objective(s, t).sum() / batch for s in student])  # (M,)
        if self.nesting is None:
            out = LossOutput(values[0], {})
        else:
            out = nested_output(self.nesting, dims, values)
        parts = {**out.parts, "distill": out.loss.detach()}
        if self.nce is None or self.weight == 0:
            return LossOutput(out.loss, parts)
        nce = self.nce(q, d, inputs, rows)
        parts["info_nce"] = nce.loss.detach()
        return LossOutput(out.loss + self.weight * nce.loss, parts)


class MissingTeacherScoresError(UserError, ValueError):
    """A distillation batch without teacher scores (a streamed example without any, say)."""


def _full_dim(q: torch.Tensor, d: torch.Tensor) -> int:
    """The representation dim (token vectors: without the mask channel)."""
    return q.shape[-1] - 1 if q.dim() == 3 else q.shape[-1]


def _teacher(inputs: LossInputs, batch: int, n: int) -> torch.Tensor:
    """The ``(B, n)`` teacher scores of the batch.

    Raises:
        MissingTeacherScoresError: None given.
        ValueError: Not one per candidate.
    """
    scores = inputs.extras.get(TEACHER_SCORES)
    if scores is None:
        raise MissingTeacherScoresError(
            "distillation needs teacher scores and a batch has examples without them: give them "
            "for every example (JSONL 'scores', or 'pos_scores' / 'neg_scores') or set "
            "loss.distill.teacher"
        )
    if tuple(scores.shape) != (batch, n):
        raise ValueError(
            f"teacher scores are {tuple(scores.shape)}, the batch has {batch} queries with {n} "
            "candidates each (in-batch distillation: every document of the batch)"
        )
    return scores
