"""Deterministic, resumable batches of training examples.

Each epoch draws its positives and negatives and shuffles with a generator seeded by
``(seed, epoch)`` alone, so epoch ``e`` is the same whatever ran before it. Batches avoid
in-batch false negatives where the data allows: two entries conflict when they share the query
(id or text) or the positive document (id, or text when ids are missing); conflicting entries
are deferred to later batches, and any clash left at the end of the epoch is swapped against
other batches (or the dropped remainder). The sampler's state (seed, epoch, batches already
given out) is JSON, so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple, get_args

from dualforge.data.batch import Batch, Pick, batch_of
from dualforge.data.examples import TrainingExample
from dualforge.errors import UserError

logger = logging.getLogger("dualforge.data")


class TooFewExamplesError(UserError, ValueError):
    """The training data cannot fill one batch.

    Attributes:
        count: How many training units there are (pairs, or examples of a stream), or None
            when unknown (a stream of unknown length).
        batch_size: The batch size asked for.
        what: What ``count`` counts.
    """

    def __init__(self, count: int | None, batch_size: int, what: str = "training pairs") -> None:
        """Build the error (``"5 training pairs cannot fill one batch of 8"``)."""
        some = f"{count} {what}" if count is not None else f"the {what}"
        super().__init__(f"{some} cannot fill one batch of {batch_size}")
        self.count = count
        self.batch_size = batch_size
        self.what = what


PositiveMode = Literal["sample", "all"]
"""How an example with several positives is used (see :class:`EpochBatchSampler`)."""
POSITIVE_MODES: tuple[str, ...] = get_args(PositiveMode)
_LOOKAHEAD_BATCHES = 64  # how far (in batches) packing looks ahead for a non-conflicting entry
_REPAIR_BUDGET = 200_000  # entries examined per epoch when swapping remaining clashes away

_Key = tuple[str, str]


class _Unit(NamedTuple):
    """One (query, positive) entry of an epoch; ``neg_rows`` index the example's negatives."""

    example: int
    positive: int
    neg_rows: tuple[int, ...]
    keys: frozenset[_Key]


def conflict_keys(ex: TrainingExample, p: int) -> frozenset[_Key]:
    """What the entry (``ex``, positive ``p``) must not share with another entry of its batch."""
    keys = {("query", ex.query), ("positive", ex.positives[p])}
    if ex.query_id is not None:
        keys.add(("query-id", ex.query_id))
    if ex.positive_ids:
        keys.add(("positive-id", ex.positive_ids[p]))
    return frozenset(keys)


def draw_negatives(k: int, n: int, rng: random.Random) -> tuple[int, ...]:
    """``k`` of an example's ``n`` negatives: without replacement when ``n >= k``, else cycled
    through in a shuffled order; none when either is 0."""
    if k == 0 or n == 0:
        return ()
    if n >= k:
        return tuple(rng.sample(range(n), k))
    order = rng.sample(range(n), n)
    return tuple(order[j % n] for j in range(k))


class _BatchCounts:
    """Key counts per batch, built on first use and kept up to date through swaps."""

    def __init__(self, batches: list[list[_Unit]]) -> None:
        self.batches = batches
        self.counts: dict[int, Counter[_Key]] = {}

    def __getitem__(self, bi: int) -> Counter[_Key]:
        if bi not in self.counts:
            self.counts[bi] = Counter(k for u in self.batches[bi] for k in u.keys)
        return self.counts[bi]

    def replace(self, bi: int, old: _Unit, new: _Unit) -> None:
        """Record that ``new`` took the place of ``old`` in batch ``bi``."""
        self[bi].subtract(old.keys)
        self[bi].update(new.keys)


def _fits(new: _Unit, old: _Unit, count: Counter[_Key]) -> bool:
    """Whether ``new`` can replace ``old`` in a batch with key counts ``count``, clash-free."""
    return all(count[k] - (k in old.keys) == 0 for k in new.keys)


def _swap_out(
    batches: list[list[_Unit]], counts: _BatchCounts, at: tuple[int, int], spare: list[_Unit]
) -> int:
    """Swap the clashing entry at ``at`` for one that fits its batch.

    The dropped remainder ``spare`` is tried first (it has no constraint), then the other
    batches (the entry must fit there too).

    Returns:
        The number of entries examined.
    """
    bi, i = at
    unit = batches[bi][i]
    for j, other in enumerate(spare):
        if _fits(other, unit, counts[bi]):
            batches[bi][i], spare[j] = other, unit
            counts.replace(bi, unit, other)
            return j + 1
    examined = len(spare)
    for ci, batch in enumerate(batches):
        if ci == bi:
            continue
        examined += len(batch)
        for j, other in enumerate(batch):
            if _fits(other, unit, counts[bi]) and _fits(unit, other, counts[ci]):
                batches[bi][i], batch[j] = other, unit
                counts.replace(bi, unit, other)
                counts.replace(ci, other, unit)
                return examined
    return examined


class EpochBatchSampler:
    """Batches of training examples, one epoch at a time, deterministic and resumable.

    Iterating yields the rest of the current epoch's batches and advances :attr:`position`;
    it does not move to the next epoch by itself: call :meth:`set_epoch`.

    Args:
        examples: Training examples.
        batch_size: Queries per batch.
        seed: Base seed; epoch ``e`` uses a generator seeded by ``(seed, e)`` only.
        positives: ``"sample"``: each example appears once per epoch, with one of its
            positives drawn at random (seeded, redrawn every epoch). ``"all"``: each example is
            expanded into one entry per positive, so every (query, positive) pair appears once
            per epoch (and two entries of one query never share a batch where avoidable).
        num_negatives: ``K`` hard negatives per entry, taken from the example's negatives:
            drawn without replacement (redrawn every epoch) when it has at least ``K``, cycled
            through in a shuffled order when it has fewer. An example with *no* negatives gets
            an empty list: the batch then holds different numbers of negatives and the caller
            decides what to do (see :attr:`examples_without_negatives` and
            ``require_negatives``).
        drop_last: Drop the last batch of an epoch when it is smaller than ``batch_size``.
        require_negatives: Raise instead of warning when ``num_negatives > 0`` and some
            examples have no negatives.

    Attributes:
        epoch: The current epoch.
        position: Batches of the current epoch already given out.
        examples_without_negatives: Examples that get no negatives (0 when ``num_negatives``
            is 0).

    Raises:
        ValueError: A bad argument, no examples, too few for one batch with ``drop_last``, or
            (with ``require_negatives``) examples without negatives.
    """

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        batch_size: int,
        seed: int = 0,
        positives: str = "sample",
        num_negatives: int = 0,
        drop_last: bool = True,
        require_negatives: bool = False,
    ) -> None:
        """Check the arguments (see the class docstring)."""
        if positives not in POSITIVE_MODES:
            raise ValueError(f"positives={positives!r}; use one of {POSITIVE_MODES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        units = sum(len(ex.positives) for ex in examples) if positives == "all" else len(examples)
        if units == 0 or (units < batch_size and drop_last):
            raise TooFewExamplesError(units, batch_size)
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.positives = positives
        self.num_negatives = num_negatives
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._units = units
        self._plan_cache: tuple[int, list[list[_Unit]]] | None = None
        self._keys: list[tuple[frozenset[_Key], ...]] | None = None
        self.examples_without_negatives = self._check_negatives(require_negatives)

    def _check_negatives(self, require: bool) -> int:
        if self.num_negatives == 0:
            return 0
        lacking = [i for i, ex in enumerate(self.examples) if not ex.negatives]
        if lacking:
            message = (
                f"num_negatives={self.num_negatives} but {len(lacking)} of {len(self.examples)} "
                f"examples have no negatives (first: #{lacking[0]}, query "
                f"{self.examples[lacking[0]].query[:60]!r}); they get an empty list"
            )
            if require:
                raise ValueError(message)
            logger.warning(message)
        return len(lacking)

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self._units, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch``.

        Args:
            epoch: The epoch (0-based).
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """The position as a JSON-serialisable dict.

        Returns:
            ``seed``, ``epoch`` and ``position`` (batches given out this epoch), plus the
            settings that shape the batches, checked by :meth:`load_state_dict`.
        """
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "num_examples": len(self.examples),
            "positives": self.positives,
            "num_negatives": self.num_negatives,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the next batch is the one that would have come).

        Args:
            state: A saved state; settings absent from it are not checked.

        Raises:
            ValueError: The state belongs to a sampler with other data or settings.
        """
        mine = self.state_dict()
        for key in (
            "seed",
            "batch_size",
            "num_examples",
            "positives",
            "num_negatives",
            "drop_last",
        ):
            if (key in state or key == "seed") and state.get(key) != mine[key]:
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r}, this sampler {mine[key]!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(f"sampler state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[Batch]:
        """Yield the rest of the current epoch's batches (the position advances as they go)."""
        plan = self._plan(self.epoch)
        while self.position < len(plan):
            units = plan[self.position]
            self.position += 1
            yield self._batch(units)

    def _plan(self, epoch: int) -> list[list[_Unit]]:
        """All batches of ``epoch`` (deterministic in seed and epoch; cached for one epoch)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = random.Random(f"{self.seed}:{epoch}")
        units = self._draw_units(rng)
        rng.shuffle(units)
        batches, forced = self._pack(units)
        spare: list[_Unit] = []
        if batches and self.drop_last and len(batches[-1]) < self.batch_size:
            spare = batches.pop()
        self._repair(batches, [b for b in forced if b < len(batches)], spare)
        self._plan_cache = (epoch, batches)
        return batches

    def _draw_units(self, rng: random.Random) -> list[_Unit]:
        if self._keys is None:
            self._keys = [
                tuple(conflict_keys(ex, p) for p in range(len(ex.positives)))
                for ex in self.examples
            ]
        units = []
        for i, ex in enumerate(self.examples):
            if self.positives == "all":
                chosen: Sequence[int] = range(len(ex.positives))
            else:
                chosen = [rng.randrange(len(ex.positives)) if len(ex.positives) > 1 else 0]
            for p in chosen:
                units.append(_Unit(i, p, self._negatives(ex, rng), self._keys[i][p]))
        return units

    def _negatives(self, ex: TrainingExample, rng: random.Random) -> tuple[int, ...]:
        return draw_negatives(self.num_negatives, len(ex.negatives), rng)

    def _pack(self, units: list[_Unit]) -> tuple[list[list[_Unit]], list[int]]:
        """Fill batches in order, deferring an entry that conflicts with its batch.

        A batch takes conflicting entries only when no other entry is left within the
        look-ahead; every batch but the last is full.

        Returns:
            The batches, and the indices of those that took conflicting entries.
        """
        pending = deque(units)
        limit = _LOOKAHEAD_BATCHES * self.batch_size
        batches: list[list[_Unit]] = []
        forced: list[int] = []
        while pending:
            batch: list[_Unit] = []
            used: set[_Key] = set()
            skipped: list[_Unit] = []
            while pending and len(batch) < self.batch_size and len(skipped) < limit:
                unit = pending.popleft()
                if used.isdisjoint(unit.keys):
                    batch.append(unit)
                    used.update(unit.keys)
                else:
                    skipped.append(unit)
            fill = self.batch_size - len(batch)
            if fill and skipped:
                forced.append(len(batches))
            batch.extend(skipped[:fill])
            pending.extendleft(reversed(skipped[fill:]))
            batches.append(batch)
        return batches, forced

    def _repair(self, batches: list[list[_Unit]], forced: list[int], spare: list[_Unit]) -> None:
        """Swap entries that clash within their batch with fitting entries elsewhere."""
        counts = _BatchCounts(batches)
        budget = _REPAIR_BUDGET
        for bi in forced:
            for i, unit in enumerate(batches[bi]):
                if budget <= 0:
                    return
                if any(counts[bi][k] > 1 for k in unit.keys):
                    budget -= _swap_out(batches, counts, (bi, i), spare)

    def _batch(self, units: list[_Unit]) -> Batch:
        return batch_of([Pick(self.examples[u.example], u.positive, u.neg_rows) for u in units])
