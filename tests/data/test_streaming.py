"""Streaming batches: determinism per (seed, epoch), exact resume, bounded memory, negatives."""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dualforge.data import (
    Batch,
    BatchSampler,
    EpochBatchSampler,
    StreamingBatchSampler,
    TrainingExample,
    iter_hf_examples,
)
from dualforge.data.streaming import shuffle_buffer

Flat = list[tuple[str, str, tuple[str, ...]]]


def examples(n: int = 20, negatives: int = 0, positives: int = 2) -> list[TrainingExample]:
    """``n`` queries with ``positives`` positives and ``negatives`` hard negatives each."""
    return [
        TrainingExample(
            f"q{i}",
            tuple(f"p{i}-{j}" for j in range(positives)),
            tuple(f"n{i}-{j}" for j in range(negatives)),
        )
        for i in range(n)
    ]


class Source:
    """``open_stream`` over a list that counts its calls and the examples read so far."""

    def __init__(self, data: list[TrainingExample]) -> None:
        self.data = data
        self.opened: list[int] = []
        self.read = 0

    def __call__(self, epoch: int) -> Iterator[TrainingExample]:
        self.opened.append(epoch)
        for ex in self.data:
            self.read += 1
            yield ex


def make(
    data: list[TrainingExample] | None = None,
    *,
    batch_size: int = 4,
    seed: int = 3,
    buffer_size: int = 8,
    **kwargs: Any,
) -> StreamingBatchSampler:
    """A sampler over a :class:`Source` of ``data`` (default: 20 examples, 4 negatives each)."""
    source = Source(examples(negatives=4) if data is None else data)
    return StreamingBatchSampler(source, batch_size, seed, buffer_size=buffer_size, **kwargs)


def flat(batches: list[Batch]) -> Flat:
    return [
        (q, p, tuple(n)) for b in batches for q, p, n in zip(b.queries, b.positives, b.negatives)
    ]


def epochs(sampler: BatchSampler, count: int) -> list[Flat]:
    """The next ``count`` epochs, moving on as the training loop's ``batches()`` does."""
    out = []
    for _ in range(count):
        out.append(flat(list(sampler)))
        sampler.set_epoch(sampler.epoch + 1)
    return out


def test_deterministic_per_seed_and_epoch() -> None:
    first, second = epochs(make(num_negatives=2), 2)
    assert [first, second] == epochs(make(num_negatives=2), 2)
    assert first != second
    fresh = make(num_negatives=2)
    fresh.set_epoch(1)  # an epoch does not depend on the ones before it
    assert flat(list(fresh)) == second
    assert epochs(make(num_negatives=2, seed=4), 1) != [first]


def test_each_example_once_per_epoch_and_positives_redrawn() -> None:
    sampler = make()
    seen: set[str] = set()
    orders = set()
    for pairs in epochs(sampler, 16):
        assert sorted(q for q, _, _ in pairs) == sorted(f"q{i}" for i in range(20))
        assert all(p.startswith(f"p{q[1:]}-") for q, p, _ in pairs)
        seen.update(p for _, p, _ in pairs)
        orders.add(tuple(q for q, _, _ in pairs))
    assert seen == {f"p{i}-{j}" for i in range(20) for j in range(2)} and len(orders) == 16


def resume_run(first: StreamingBatchSampler, taken: int) -> tuple[Flat, StreamingBatchSampler]:
    """Take ``taken`` batches, save the state (through JSON), load it into a new sampler."""
    batches = list(itertools.islice(iter(first), taken))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(num_negatives=2)
    resumed.load_state_dict(state)
    return flat(batches), resumed


def test_resume_mid_epoch_continues_exactly() -> None:
    expected = epochs(make(num_negatives=2), 3)
    first = make(num_negatives=2)
    first.set_epoch(1)
    taken, resumed = resume_run(first, 2)
    assert (resumed.epoch, resumed.position) == (1, 2)
    assert [taken + flat(list(resumed)), *epochs_after(resumed, 1)] == expected[1:]


def epochs_after(sampler: StreamingBatchSampler, count: int) -> list[Flat]:
    sampler.set_epoch(sampler.epoch + 1)
    return epochs(sampler, count)


def test_resume_at_the_end_of_an_epoch_reads_nothing_again() -> None:
    first = make(num_negatives=2)
    taken, resumed = resume_run(first, 5)  # 20 examples / 4: the whole epoch
    assert resumed.state_dict()["epoch_done"] is True
    source = resumed.open_stream
    assert isinstance(source, Source)
    assert list(resumed) == [] and source.opened == []
    resumed.set_epoch(1)
    assert [taken, flat(list(resumed))] == epochs(make(num_negatives=2), 2)


def test_resume_rereads_the_consumed_prefix() -> None:
    first = make(num_negatives=2)
    _, resumed = resume_run(first, 1)
    source = resumed.open_stream
    assert isinstance(source, Source)
    assert len(list(resumed)) == 4 and source.opened == [0] and source.read == 20


def test_len_and_drop_last() -> None:
    data = examples(22)
    dropping = make(data, num_examples=22)
    assert len(dropping) == 5 == len(list(dropping))
    keeping = make(data, drop_last=False, num_examples=22)
    batches = list(keeping)
    assert len(keeping) == 6 == len(batches) and len(batches[-1]) == 2
    assert sorted(q for b in batches for q in b.queries) == sorted(f"q{i}" for i in range(22))
    unknown = make(data)
    with pytest.raises(TypeError, match="no length: the number of examples is unknown"):
        len(unknown)
    assert len(list(unknown)) == 5  # list() does not need a length


def test_wrong_num_examples_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        list(make(examples(22), num_examples=30))
    assert "the stream gave 22 examples, num_examples=30" in caplog.text


def test_buffer_bounds_what_is_held() -> None:
    source = Source(examples(200))
    sampler = StreamingBatchSampler(source, 4, seed=0, buffer_size=16)
    next(iter(sampler))
    assert source.read <= 16 + 2 * 4  # the buffer, the batch and the one read ahead
    in_order = StreamingBatchSampler(Source(examples(12)), 4, seed=0, buffer_size=1)
    assert [q for b in in_order for q in b.queries] == [f"q{i}" for i in range(12)]


def test_shuffle_buffer_keeps_every_item() -> None:
    rng = random.Random(0)
    out = list(shuffle_buffer(range(100), 10, rng))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert all(out.index(i) >= i - 10 for i in range(100))  # never more than 10 places early


def test_negatives_drawn_like_the_epoch_sampler() -> None:
    for epoch_batches in epochs(make(examples(negatives=6), num_negatives=3), 2):
        for q, _, negs in epoch_batches:
            assert len(negs) == 3 == len(set(negs)) and all(
                n.startswith(f"n{q[1:]}-") for n in negs
            )
    for q, _, negs in epochs(make(examples(negatives=2), num_negatives=5), 1)[0]:
        assert set(negs) == {f"n{q[1:]}-0", f"n{q[1:]}-1"} and negs[:2] == negs[2:4]


def test_examples_without_negatives(caplog: pytest.LogCaptureFixture) -> None:
    data = examples(10, negatives=3) + examples(20, negatives=0)[10:]
    sampler = make(data, num_negatives=2)
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        pairs = epochs(sampler, 1)[0]
    assert sampler.examples_without_negatives == 10
    assert "10 of 20 streamed examples have no negatives" in caplog.text
    assert {int(q[1:]) < 10: len(n) for q, _, n in pairs} == {True: 2, False: 0}
    with pytest.raises(ValueError, match="has no negatives"):
        list(make(data, num_negatives=2, require_negatives=True))


def test_repeated_queries_wait_for_another_batch() -> None:
    # Each query three times in a row with another positive (pair data like MS MARCO's).
    data = [TrainingExample(f"q{i}", (f"p{i}-{j}",)) for i in range(40) for j in range(3)]
    for seed in range(10):
        batches = list(make(data, seed=seed, batch_size=6, buffer_size=4))
        assert len(batches) == 20
        # Only the end of an epoch may clash (earlier batches are gone: nothing to swap with).
        assert all(len(set(b.queries)) == 6 for b in batches[:-2])
        assert sorted(p for b in batches for p in b.positives) == sorted(
            e.positives[0] for e in data
        )
    same = [TrainingExample("same", (f"p{j}",)) for j in range(10)]
    assert [len(b) for b in make(same, drop_last=False)] == [4, 4, 2]  # unavoidable: still full


def test_ids_are_carried() -> None:
    data = [
        TrainingExample(f"q{i}", ("a", "b"), ("n",), f"id{i}", (f"a{i}", f"b{i}"), (f"n{i}",))
        for i in range(8)
    ]
    for batch in make(data, num_negatives=1):
        for qid, text, pid, nids in zip(
            batch.query_ids, batch.positives, batch.positive_ids, batch.negative_ids
        ):
            assert qid is not None and pid == f"{text}{qid[2:]}" and nids == [f"n{qid[2:]}"]


def test_states_of_other_samplers_are_refused() -> None:
    state = make().state_dict()
    for other, key in [
        (make(seed=4), "seed"),
        (make(batch_size=5), "batch_size"),
        (make(buffer_size=9), "buffer_size"),
        (make(num_negatives=1), "num_negatives"),
    ]:
        with pytest.raises(ValueError, match=key):
            other.load_state_dict(state)
    epoch_state = EpochBatchSampler(examples(), 4, seed=3).state_dict()
    with pytest.raises(ValueError, match="buffer_size=None"):
        make().load_state_dict(epoch_state)
    with pytest.raises(ValueError, match="num_examples"):
        EpochBatchSampler(examples(), 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        make(num_examples=20).load_state_dict({**state, "position": 6})


def test_bad_arguments_and_streams_too_short() -> None:
    with pytest.raises(ValueError, match="'sample' only"):
        make(positives="all")
    with pytest.raises(ValueError, match="buffer_size must be >= 1"):
        make(buffer_size=0)
    with pytest.raises(ValueError, match="3 examples cannot fill one batch of 4"):
        make(num_examples=3)
    for data in ([], examples(3)):  # an endless epoch loop would never end: raise instead
        with pytest.raises(ValueError, match="cannot fill one batch of 4"):
            list(make(data))
    assert len(list(make(examples(3), drop_last=False))) == 1


def test_streams_a_parquet_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    data = examples(30, negatives=2)
    ds = datasets.Dataset.from_dict(
        {
            "anchor": [e.query for e in data],
            "positive": [list(e.positives) for e in data],
            "negative": [list(e.negatives) for e in data],
        }
    )
    ds.to_parquet(str(tmp_path / "train.parquet"))
    streamed = StreamingBatchSampler(
        lambda epoch: iter_hf_examples(tmp_path / "train.parquet", streaming=True),
        4, seed=1, num_negatives=1, buffer_size=8,
    )  # fmt: skip
    in_memory = StreamingBatchSampler(
        lambda epoch: iter(data), 4, 1, num_negatives=1, buffer_size=8
    )
    assert epochs(streamed, 2) == epochs(in_memory, 2)
