"""Deterministic, resumable batches from a stream of training examples too large to hold.

:class:`StreamingBatchSampler` is a drop-in for :class:`~dualforge.data.sampler.EpochBatchSampler`
over ``open_stream(epoch)``, a callable that reads the examples again from the start (e.g.
``lambda epoch: iter_hf_examples(path, streaming=True)``). Each epoch shuffles within a buffer
of ``buffer_size`` examples and draws positives and negatives with generators seeded by
``(seed, epoch)`` alone, so epoch ``e`` is the same whatever ran before it, and only the buffer
(plus a few batches) is ever held. The state (seed, epoch, batches given out) is JSON.

Differences from :class:`EpochBatchSampler`:

- the shuffle is local: an example comes out at most ``buffer_size`` places before its place
  in the stream (it may come out much later), so a stream sorted by topic stays roughly sorted;
- only ``positives="sample"``;
- no end-of-epoch conflict repair: an entry whose query or positive is already in the batch
  waits for a later batch (while up to 16 batches' worth of entries wait; beyond that the
  oldest is taken anyway);
- resuming re-reads the stream from the start of the epoch and skips the batches already given
  out (read, shuffled and drawn, never built or trained on): its cost is the time to read that
  prefix of the stream.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dualforge.data.batch import Batch, Pick, batch_of
from dualforge.data.examples import TrainingExample
from dualforge.data.sampler import TooFewExamplesError, conflict_keys, draw_negatives

logger = logging.getLogger("dualforge.data")

OpenStream = Callable[[int], Iterable[TrainingExample]]
"""``open_stream(epoch)``: the training examples, from the start, in the same order each call."""
_WAIT_BATCHES = 16  # how many batches' worth of clashing entries may wait for a later batch
_SETTINGS = ("seed", "batch_size", "buffer_size", "positives", "num_negatives", "drop_last")
_Key = tuple[str, str]


class BatchSampler(Protocol):
    """What the training loop uses of a sampler (both samplers of :mod:`dualforge.data`)."""

    epoch: int
    position: int

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The position as a JSON-serialisable dict."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        ...

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch's batches."""
        ...

    def __len__(self) -> int:
        """Batches per epoch."""
        ...


class _Entry(NamedTuple):
    """One example of an epoch with its drawn positive and negative rows."""

    example: TrainingExample
    positive: int
    neg_rows: tuple[int, ...]
    keys: frozenset[_Key]


def shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """``items`` in a random order that holds at most ``size`` of them at a time.

    Each new item takes the place of one drawn at random from the full buffer; what is left
    at the end comes out shuffled. ``size=1`` keeps the order.

    Args:
        items: The stream.
        size: Items held at most (>= 1).
        rng: The generator that decides the order.

    Yields:
        Every item once.
    """
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class _Tally:
    """What one epoch's stream held: examples read, and those without negatives."""

    epoch: int
    read: int = 0
    lacking: int = 0


class _Packer:
    """Fills batches in arrival order; an entry that clashes with its batch waits for the next."""

    def __init__(self, batch_size: int) -> None:
        self.size = batch_size
        self.waiting: deque[_Entry] = deque()
        self.batch: list[_Entry] = []
        self.used: set[_Key] = set()

    def _take(self, entry: _Entry) -> None:
        self.batch.append(entry)
        self.used.update(entry.keys)

    def _full(self) -> Iterator[list[_Entry]]:
        """Hand out the batch when full; start the next from the waiting entries that fit."""
        while len(self.batch) == self.size:
            yield self.batch
            self.batch, self.used = [], set()
            for _ in range(len(self.waiting)):
                entry = self.waiting.popleft()
                if len(self.batch) < self.size and self.used.isdisjoint(entry.keys):
                    self._take(entry)
                else:
                    self.waiting.append(entry)

    def add(self, entry: _Entry) -> Iterator[list[_Entry]]:
        """Place ``entry``; yields the batches it completes."""
        if self.used.isdisjoint(entry.keys):
            self._take(entry)
        else:
            self.waiting.append(entry)
            if len(self.waiting) > _WAIT_BATCHES * self.size:
                self._take(self.waiting.popleft())  # an unavoidable clash
        yield from self._full()

    def finish(self) -> Iterator[list[_Entry]]:
        """The stream ended: place the waiting entries (clashing if they must), then the rest."""
        while self.waiting:
            fits = (i for i, e in enumerate(self.waiting) if self.used.isdisjoint(e.keys))
            i = next(fits, 0)
            self._take(self.waiting[i])
            del self.waiting[i]
            yield from self._full()
        if self.batch:
            yield self.batch


class StreamingBatchSampler:
    """Batches of streamed training examples, one epoch at a time, deterministic and resumable.

    Iterating yields the rest of the current epoch's batches and advances :attr:`position`;
    call :meth:`set_epoch` for the next epoch. See the module docstring for what differs from
    :class:`~dualforge.data.sampler.EpochBatchSampler`.

    Args:
        open_stream: ``open_stream(epoch)`` gives the examples from the start, in the same
            order every call (it is called once per epoch, and again on resume).
        batch_size: Queries per batch.
        seed: Base seed; epoch ``e`` uses generators seeded by ``(seed, e)`` only.
        positives: Only ``"sample"``: each example appears once per epoch with one of its
            positives drawn at random (redrawn every epoch).
        num_negatives: ``K`` hard negatives per entry, drawn as
            :class:`~dualforge.data.sampler.EpochBatchSampler` does (without replacement when
            the example has at least ``K``, cycled otherwise; none when it has none).
        drop_last: Drop the last batch of an epoch when it is smaller than ``batch_size``.
        require_negatives: Raise when ``num_negatives > 0`` and an example has no negatives
            (found while streaming); otherwise they are counted and warned about per epoch.
        buffer_size: Examples held for shuffling (``1``: stream order).
        num_examples: The number of examples per epoch, if known (e.g. from
            :func:`~dualforge.data.hf.hf_num_rows`); it gives :meth:`__len__`, and a stream
            that yields another number is warned about.

    Attributes:
        epoch: The current epoch.
        position: Batches of the current epoch already given out.
        examples_without_negatives: Examples that got no negatives in the last epoch read to
            its end (0 until then, and when ``num_negatives`` is 0).

    Raises:
        ValueError: A bad argument, or ``num_examples`` too few for one batch with
            ``drop_last``.
    """

    def __init__(
        self,
        open_stream: OpenStream,
        batch_size: int,
        seed: int = 0,
        positives: str = "sample",
        num_negatives: int = 0,
        drop_last: bool = True,
        require_negatives: bool = False,
        *,
        buffer_size: int = 10_000,
        num_examples: int | None = None,
    ) -> None:
        """Check the arguments (see the class docstring)."""
        if positives != "sample":
            raise ValueError(f"positives={positives!r}: a streaming sampler draws 'sample' only")
        for name, value, least in (
            ("batch_size", batch_size, 1), ("num_negatives", num_negatives, 0),
            ("buffer_size", buffer_size, 1),
        ):  # fmt: skip
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if num_examples is not None and num_examples < (batch_size if drop_last else 1):
            raise TooFewExamplesError(num_examples, batch_size, "examples")
        self.open_stream = open_stream
        self.batch_size = batch_size
        self.seed = seed
        self.positives = positives
        self.num_negatives = num_negatives
        self.drop_last = drop_last
        self.require_negatives = require_negatives
        self.buffer_size = buffer_size
        self.num_examples = num_examples
        self.epoch = 0
        self.position = 0
        self.examples_without_negatives = 0
        self._finished: tuple[int, int] | None = None  # (epoch, its number of batches)

    def __len__(self) -> int:
        """Batches per epoch, from ``num_examples``.

        Raises:
            TypeError: ``num_examples`` was not given: train for a number of steps, not epochs
                (``list(sampler)`` still works: Python reads this TypeError as "no length").
        """
        if self.num_examples is None:
            raise TypeError(
                "StreamingBatchSampler has no length: the number of examples is unknown "
                "(pass num_examples=..., or give the number of steps)"
            )
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` (0-based; a negative one is a ValueError)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """The position as a JSON-serialisable dict.

        Returns:
            ``seed``, ``epoch`` and ``position`` (batches given out this epoch), plus the
            settings that shape the batches, checked by :meth:`load_state_dict`.
        """
        settings = {name: getattr(self, name) for name in _SETTINGS}
        return {
            **settings,
            "epoch": self.epoch,
            "position": self.position,
            "num_examples": self.num_examples,
            "epoch_done": self._finished == (self.epoch, self.position),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next batch is the one that would have come.

        Args:
            state: A saved state of a sampler with the same settings.

        Raises:
            ValueError: The state belongs to a sampler with other settings (or is an
                :class:`~dualforge.data.sampler.EpochBatchSampler` state), or is out of range.
        """
        mine = self.state_dict()
        checked = [*_SETTINGS]
        if state.get("num_examples") is not None and self.num_examples is not None:
            checked.append("num_examples")
        for key in checked:
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r}, this sampler {mine[key]!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        most = position if self.num_examples is None else len(self)
        if epoch < 0 or not 0 <= position <= most:
            raise ValueError(f"sampler state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position
        self._finished = (epoch, position) if state.get("epoch_done") else None

    def __iter__(self) -> Iterator[Batch]:
        """Yield the rest of the current epoch's batches (the position advances as they go).

        The batches already given out this epoch are read and skipped again (not rebuilt).
        The plan runs one batch ahead, so the end of the epoch is known with its last batch
        (and a state saved then resumes without re-reading the epoch).
        """
        epoch = self.epoch
        if self._finished == (epoch, self.position):
            return
        plan = self._plan(epoch)
        count, current = 0, next(plan, None)
        while current is not None:
            count += 1
            following = next(plan, None)
            if following is None:
                self._finished = (epoch, count)
            if count > self.position:
                self.position = count
                yield self._batch(current)
            current = following
        if count == 0:
            raise TooFewExamplesError(
                None, self.batch_size, f"examples of the stream's epoch {epoch}"
            )

    def _plan(self, epoch: int) -> Iterator[list[_Entry]]:
        """The batches of ``epoch`` as entries, in order (deterministic in seed and epoch)."""
        draw = random.Random(f"{self.seed}:{epoch}:draw")
        order = random.Random(f"{self.seed}:{epoch}:order")
        packer = _Packer(self.batch_size)
        tally = _Tally(epoch)
        entries = (self._entry(ex, draw, tally) for ex in self.open_stream(epoch))
        for entry in shuffle_buffer(entries, self.buffer_size, order):
            yield from packer.add(entry)
        for batch in packer.finish():
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch
        self._epoch_done(tally)

    def _entry(self, ex: TrainingExample, rng: random.Random, tally: _Tally) -> _Entry:
        """Draw the positive and negatives of one example (counting it in ``tally``)."""
        tally.read += 1
        p = rng.randrange(len(ex.positives)) if len(ex.positives) > 1 else 0
        k, n = self.num_negatives, len(ex.negatives)
        rows = draw_negatives(k, n, rng)
        if k and not n:
            tally.lacking += 1
            if self.require_negatives:
                raise ValueError(
                    f"num_negatives={k} but example #{tally.read - 1} of epoch {tally.epoch} "
                    f"(query {ex.query[:60]!r}) has no negatives"
                )
        return _Entry(ex, p, rows, conflict_keys(ex, p))

    def _epoch_done(self, tally: _Tally) -> None:
        """Record and warn about what the finished epoch found."""
        self.examples_without_negatives = tally.lacking
        if tally.lacking:
            logger.warning(
                "epoch %d: %d of %d streamed examples have no negatives (num_negatives=%d); "
                "they got an empty list", tally.epoch, tally.lacking, tally.read,
                self.num_negatives,
            )  # fmt: skip
        if self.num_examples is not None and tally.read != self.num_examples:
            logger.warning(
                "epoch %d: the stream gave %d examples, num_examples=%d (len() is off)",
                tally.epoch, tally.read, self.num_examples,
            )  # fmt: skip

    def _batch(self, entries: list[_Entry]) -> Batch:
        """The texts, ids and columns of ``entries``."""
        return batch_of([Pick(e.example, e.positive, e.neg_rows) for e in entries])
