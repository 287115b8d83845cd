"""Deterministic, resumable batches of training examples.

Each epoch is a seeded shuffle; batches avoid holding two copies of the same positive document
(an in-batch false negative) where the data allows. The sampler's state (epoch, batches already
given out) is JSON, so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dualforge.data.examples import TrainingExample

POSITIVE_MODES = ("sample", "all")


@dataclass(frozen=True)
class Batch:
    """Aligned lists for one training batch; ids are None when the data has none."""

    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]
    query_ids: list[str | None]
    positive_ids: list[str | None]
    negative_ids: list[list[str | None]]


@dataclass(frozen=True)
class _Unit:
    """One (query, positive) pair chosen for an epoch; ``neg_rows`` index the example's negatives."""

    example: int
    positive: int
    neg_rows: tuple[int, ...]


class EpochBatchSampler:
    """Batches of examples for one epoch at a time.

    Args:
        examples: Training examples.
        batch_size: Queries per batch.
        seed: Base seed; epoch ``e`` shuffles with a generator seeded by ``(seed, e)``.
        positives: ``"sample"``: each example appears once per epoch with one of its positives
            drawn at random; ``"all"``: each (query, positive) pair appears once per epoch.
        num_negatives: Hard negatives per query, drawn without replacement from the example's
            negatives (cycled when it has fewer). Every example must then have at least one.
        drop_last: Drop the last batch of an epoch when it is smaller than ``batch_size``.
    """

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        batch_size: int,
        seed: int = 0,
        positives: str = "sample",
        num_negatives: int = 0,
        drop_last: bool = True,
    ) -> None:
        if positives not in POSITIVE_MODES:
            raise ValueError(f"positives={positives!r}; use one of {POSITIVE_MODES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_negatives > 0:
            lacking = [i for i, ex in enumerate(examples) if not ex.negatives]
            if lacking:
                raise ValueError(
                    f"num_negatives={num_negatives} but {len(lacking)} examples have no negatives "
                    f"(first: #{lacking[0]}, query {examples[lacking[0]].query[:60]!r})"
                )
        units = sum(len(ex.positives) for ex in examples) if positives == "all" else len(examples)
        if units < batch_size and drop_last:
            raise ValueError(f"{units} training pairs cannot fill one batch of {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.positives = positives
        self.num_negatives = num_negatives
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._units = units

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self._units, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch``."""
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: seed, epoch and batches already given out this epoch."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        if state.get("seed") != self.seed:
            raise ValueError(f"sampler state has seed {state.get('seed')}, this sampler {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch's batches (the position advances as they are taken)."""
        plan = self.epoch_plan(self.epoch)
        while self.position < len(plan):
            units = plan[self.position]
            self.position += 1
            yield self._batch(units)

    def epoch_plan(self, epoch: int) -> list[list[_Unit]]:
        """All batches of ``epoch``, as units (deterministic in seed and epoch)."""
        rng = random.Random(f"{self.seed}:{epoch}")
        units = self._draw_units(rng)
        rng.shuffle(units)
        batches = self._pack(units)
        if batches and self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _draw_units(self, rng: random.Random) -> list[_Unit]:
        units = []
        for i, ex in enumerate(self.examples):
            chosen = range(len(ex.positives)) if self.positives == "all" else [rng.randrange(len(ex.positives))]
            for p in chosen:
                units.append(_Unit(i, p, self._negatives(ex, rng)))
        return units

    def _negatives(self, ex: TrainingExample, rng: random.Random) -> tuple[int, ...]:
        k, n = self.num_negatives, len(ex.negatives)
        if k == 0:
            return ()
        if n >= k:
            return tuple(rng.sample(range(n), k))
        order = rng.sample(range(n), n)
        return tuple(order[j % n] for j in range(k))

    def _key(self, unit: _Unit) -> str:
        ex = self.examples[unit.example]
        if ex.positive_ids:
            return f"id:{ex.positive_ids[unit.positive]}"
        return f"text:{ex.positives[unit.positive]}"

    def _pack(self, units: list[_Unit]) -> list[list[_Unit]]:
        """Fill batches in order, deferring a unit whose positive is already in the batch."""
        batches: list[list[_Unit]] = []
        current: list[_Unit] = []
        keys: set[str] = set()
        deferred: deque[_Unit] = deque()
        for unit in units:
            if self._key(unit) in keys:
                deferred.append(unit)
            else:
                current.append(unit)
                keys.add(self._key(unit))
            if len(current) == self.batch_size:
                batches.append(current)
                current, keys = self._refill(deferred)
        while current or deferred:  # leftovers: duplicates allowed only when nothing else is left
            while deferred and len(current) < self.batch_size:
                current.append(deferred.popleft())
            batches.append(current)
            current = []
        return batches

    def _refill(self, deferred: deque[_Unit]) -> tuple[list[_Unit], set[str]]:
        current: list[_Unit] = []
        keys: set[str] = set()
        for _ in range(len(deferred)):
            unit = deferred.popleft()
            if self._key(unit) in keys or len(current) == self.batch_size:
                deferred.append(unit)
            else:
                current.append(unit)
                keys.add(self._key(unit))
        return current, keys

    def _batch(self, units: list[_Unit]) -> Batch:
        exs = [self.examples[u.example] for u in units]
        return Batch(
            queries=[ex.query for ex in exs],
            positives=[ex.positives[u.positive] for ex, u in zip(exs, units)],
            negatives=[[ex.negatives[j] for j in u.neg_rows] for ex, u in zip(exs, units)],
            query_ids=[ex.query_id for ex in exs],
            positive_ids=[ex.positive_ids[u.positive] if ex.positive_ids else None for ex, u in zip(exs, units)],
            negative_ids=[
                [ex.negative_ids[j] if ex.negative_ids else None for j in u.neg_rows] for ex, u in zip(exs, units)
            ],
        )
