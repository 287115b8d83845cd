"""One training batch: per-example fields that travel together.

A :class:`Batch` holds, for each of its ``B`` examples, the query, one positive, its hard negatives,
their ids, and named :class:`Column` extras (teacher scores, say). Every field is a list with one
entry per example, so :meth:`Batch.take` (a process's shard) and :meth:`Batch.with_negatives`
(the miner's replacement) handle any field, present or added later, without naming it: a new
per-example signal is one more column, not an edit to sharding, mining and collate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from dualforge.data.examples import TrainingExample

TEACHER_SCORES = "teacher_scores"
"""The column of teacher scores, one list per example aligned with ``[positive] + negatives``."""


@dataclass(frozen=True)
class Column:
    """A named per-example field of a batch.

    Attributes:
        values: One value per example (a list per example when ``per_candidate``).
        per_candidate: Each value is aligned with the example's candidates ``[positive] +
            negatives``; such a column describes the negatives it came with, so it is dropped
            when the negatives are replaced.
    """

    values: list[Any]
    per_candidate: bool = False

    def take(self, rows: slice) -> Column:
        """The values of ``rows``."""
        return Column(self.values[rows], self.per_candidate)


@dataclass(frozen=True)
class Batch:
    """One training batch; ids are None where the data has none.

    Attributes:
        queries: Query texts.
        positives: One positive text per query.
        negatives: Hard-negative texts per query (``num_negatives`` each, or none for an
            example that has no negatives).
        query_ids: Query ids.
        positive_ids: Positive ids.
        negative_ids: Negative ids, aligned with ``negatives``.
        extras: Named per-example columns (e.g. :data:`TEACHER_SCORES`); a plain dict, so a
            batch pickles (rank 0 sends mined batches to the other ranks).
    """

    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]
    query_ids: list[str | None]
    positive_ids: list[str | None]
    negative_ids: list[list[str | None]]
    extras: Mapping[str, Column] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check that every field has one entry per example.

        Raises:
            ValueError: A field of another length.
        """
        for name, value in self._fields().items():
            if len(value) != len(self.queries):
                raise ValueError(
                    f"Batch.{name} has {len(value)} entries for {len(self.queries)} queries"
                )

    def __len__(self) -> int:
        """Number of queries."""
        return len(self.queries)

    def _fields(self) -> dict[str, Sequence[Any]]:
        """Every per-example field by name (extras as ``extras.<name>``)."""
        out: dict[str, Sequence[Any]] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"
        }
        out.update({f"extras.{k}": c.values for k, c in self.extras.items()})
        return out

    def take(self, rows: slice) -> Batch:
        """Rows ``rows`` of every field, extras included, still aligned."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        taken = {k: v[rows] for k, v in values.items() if k != "extras"}
        extras = {k: c.take(rows) for k, c in self.extras.items()}
        return type(self)(**taken, extras=extras)

    def with_negatives(
        self, negatives: list[list[str]], negative_ids: list[list[str | None]]
    ) -> Batch:
        """The batch with other negatives; columns aligned with the old candidates are dropped."""
        kept = {k: c for k, c in self.extras.items() if not c.per_candidate}
        return replace(self, negatives=negatives, negative_ids=negative_ids, extras=kept)

    def with_column(self, name: str, column: Column) -> Batch:
        """The batch with column ``name`` added (or replaced)."""
        return replace(self, extras={**self.extras, name: column})


class Pick(NamedTuple):
    """What a sampler drew for one batch entry: an example, which positive, which negatives."""

    example: TrainingExample
    positive: int
    neg_rows: tuple[int, ...]


def batch_of(picks: Sequence[Pick]) -> Batch:
    """The batch of ``picks`` (both samplers build their batches here).

    The :data:`TEACHER_SCORES` column is present when every example carries scores.
    """
    exs = [p.example for p in picks]
    extras: dict[str, Column] = {}
    if exs and all(ex.scored for ex in exs):
        extras[TEACHER_SCORES] = Column(
            [
                [p.example.positive_scores[p.positive]]
                + [p.example.negative_scores[j] for j in p.neg_rows]
                for p in picks
            ],
            per_candidate=True,
        )
    return Batch(
        queries=[ex.query for ex in exs],
        positives=[p.example.positives[p.positive] for p in picks],
        negatives=[[p.example.negatives[j] for j in p.neg_rows] for p in picks],
        query_ids=[ex.query_id for ex in exs],
        positive_ids=[
            p.example.positive_ids[p.positive] if p.example.positive_ids else None for p in picks
        ],
        negative_ids=[
            [p.example.negative_ids[j] if p.example.negative_ids else None for j in p.neg_rows]
            for p in picks
        ],
        extras=extras,
    )
