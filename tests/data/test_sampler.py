"""Batch sampling: determinism, exact resume, positives modes, negatives, duplicate avoidance."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest

from dualforge.data import (
    Batch,
    EpochBatchSampler,
    TrainingExample,
    examples_from_beir,
    load_beir,
)


def examples(n: int = 20, negatives: int = 0, with_ids: bool = True) -> list[TrainingExample]:
    """``n`` queries with two positives each and ``negatives`` hard negatives."""
    out = []
    for i in range(n):
        pos_ids = (f"d{i}", f"alt{i}")
        negs = tuple(f"n{i}-{j}" for j in range(negatives))
        out.append(
            TrainingExample(
                f"q{i}",
                tuple(f"text {p}" for p in pos_ids),
                negs,
                f"q{i}" if with_ids else None,
                pos_ids if with_ids else (),
                negs if with_ids else (),
            )
        )
    return out


def shared(n: int, distinct: int, with_ids: bool = True) -> list[TrainingExample]:
    """``n`` queries whose single positive is one of ``distinct`` documents (round robin)."""
    return [
        TrainingExample(
            f"q{i}",
            (f"text d{i % distinct}",),
            (),
            f"q{i}" if with_ids else None,
            (f"d{i % distinct}",) if with_ids else (),
        )
        for i in range(n)
    ]


def flat(batches: list[Batch]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (q, p, tuple(n)) for b in batches for q, p, n in zip(b.queries, b.positives, b.negatives)
    ]


def test_deterministic_per_seed_and_epoch() -> None:
    a = EpochBatchSampler(examples(negatives=4), 4, seed=3, num_negatives=2)
    b = EpochBatchSampler(examples(negatives=4), 4, seed=3, num_negatives=2)
    assert flat(list(a)) == flat(list(b))
    a.set_epoch(1)
    epoch1 = flat(list(a))
    b.set_epoch(0)
    assert epoch1 != flat(list(b))
    fresh = EpochBatchSampler(examples(negatives=4), 4, seed=3, num_negatives=2)
    fresh.set_epoch(1)  # an epoch does not depend on the ones before it
    assert flat(list(fresh)) == epoch1
    other_seed = EpochBatchSampler(examples(negatives=4), 4, seed=4, num_negatives=2)
    assert flat(list(other_seed)) != flat(list(EpochBatchSampler(examples(negatives=4), 4, seed=3)))


def test_len_and_drop_last() -> None:
    dropping = EpochBatchSampler(examples(22), 4, seed=0)
    assert len(dropping) == 5 == len(list(dropping))
    keeping = EpochBatchSampler(examples(22), 4, seed=0, drop_last=False)
    batches = list(keeping)
    assert len(keeping) == 6 == len(batches) and [len(b) for b in batches][-1] == 2
    assert sorted(q for b in batches for q in b.queries) == sorted(f"q{i}" for i in range(22))


def test_resume_continues_exactly() -> None:
    def make() -> EpochBatchSampler:
        return EpochBatchSampler(examples(negatives=3), 4, seed=1, num_negatives=2)

    reference = make()
    expected = flat(list(reference))
    reference.set_epoch(1)
    expected += flat(list(reference))
    first = make()
    taken = list(itertools.islice(iter(first), 3))
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["epoch"], state["position"], state["seed"]) == (0, 3, 1)
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    resumed.set_epoch(1)
    assert flat(taken) + flat(rest) + flat(list(resumed)) == expected


def test_resume_mid_second_epoch() -> None:
    first = EpochBatchSampler(examples(), 4, seed=9)
    first.set_epoch(2)
    next(iter(first))
    resumed = EpochBatchSampler(examples(), 4, seed=9)
    resumed.load_state_dict(first.state_dict())
    assert resumed.epoch == 2 and flat(list(resumed)) == flat(list(first))


def test_state_from_another_sampler_is_refused() -> None:
    state = EpochBatchSampler(examples(), 4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        EpochBatchSampler(examples(), 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(examples(), 5, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        EpochBatchSampler(examples(21), 4, seed=1).load_state_dict(state)
    minimal = {"seed": 1, "epoch": 0, "position": 99}
    with pytest.raises(ValueError, match="out of range"):
        EpochBatchSampler(examples(), 4, seed=1).load_state_dict(minimal)


def test_positives_sample_draws_one_per_example_per_epoch() -> None:
    sampler = EpochBatchSampler(examples(), 4, seed=0, positives="sample")
    seen: set[str] = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        pairs = flat(list(sampler))
        assert sorted(q for q, _, _ in pairs) == sorted(f"q{i}" for i in range(20))
        seen.update(p for _, p, _ in pairs)
    assert seen == {f"text {p}{i}" for i in range(20) for p in ("d", "alt")}


def test_positives_all_expands_every_pair_and_keeps_queries_apart() -> None:
    sampler = EpochBatchSampler(examples(), 4, seed=0, positives="all")
    batches = list(sampler)
    pairs = [(q, p) for q, p, _ in flat(batches)]
    assert len(sampler) == 10 and len(pairs) == 40 and len(set(pairs)) == 40
    assert all(len(set(b.queries)) == len(b) for b in batches)
    for b in batches:
        assert [p.removeprefix("text ") for p in b.positives] == b.positive_ids


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positives"):
        EpochBatchSampler(examples(), 4, positives="first")
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(examples(), 0)
    with pytest.raises(ValueError, match="num_negatives"):
        EpochBatchSampler(examples(), 4, num_negatives=-1)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(examples(3), 4)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler([], 4, drop_last=False)
    assert len(EpochBatchSampler(examples(3), 4, drop_last=False)) == 1


def test_negatives_without_replacement_and_redrawn_per_epoch() -> None:
    sampler = EpochBatchSampler(examples(negatives=6), 4, seed=0, num_negatives=3)
    drawn: dict[str, set[tuple[str, ...]]] = {}
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for q, negs, ids in zip(batch.queries, batch.negatives, batch.negative_ids):
                assert len(negs) == 3 == len(set(negs)) and ids == negs
                assert all(n.startswith(f"n{q[1:]}-") for n in negs)
                drawn.setdefault(q, set()).add(tuple(negs))
    assert all(len(sets) > 1 for sets in drawn.values())


def test_few_negatives_are_cycled() -> None:
    sampler = EpochBatchSampler(examples(negatives=2), 4, seed=0, num_negatives=5)
    for batch in sampler:
        for q, negs in zip(batch.queries, batch.negatives):
            assert len(negs) == 5 and set(negs) == {f"n{q[1:]}-0", f"n{q[1:]}-1"}
            assert negs[0] != negs[1] and negs[:2] == negs[2:4]


def test_examples_without_negatives_get_none(caplog: pytest.LogCaptureFixture) -> None:
    data = examples(negatives=3)[:10] + examples(negatives=0)[10:]
    with caplog.at_level(logging.WARNING, logger="dualforge.data"):
        sampler = EpochBatchSampler(data, 4, seed=0, num_negatives=2)
    assert sampler.examples_without_negatives == 10
    assert "10 of 20 examples have no negatives" in caplog.text
    lengths = {int(q[1:]) < 10: len(n) for b in sampler for q, n in zip(b.queries, b.negatives)}
    assert lengths == {True: 2, False: 0}
    with pytest.raises(ValueError, match="have no negatives"):
        EpochBatchSampler(data, 4, num_negatives=2, require_negatives=True)
    assert EpochBatchSampler(data, 4).examples_without_negatives == 0


def test_ids_none_when_missing() -> None:
    batch = next(iter(EpochBatchSampler(examples(negatives=2, with_ids=False), 4, num_negatives=1)))
    assert batch.query_ids == [None] * 4 and batch.positive_ids == [None] * 4
    assert batch.negative_ids == [[None]] * 4


@pytest.mark.parametrize("with_ids", [True, False])
def test_no_duplicate_positive_in_a_batch(with_ids: bool) -> None:
    data = shared(24, 8, with_ids)  # 3 queries share each positive; one of each fits a batch
    for seed in range(20):
        sampler = EpochBatchSampler(data, 8, seed=seed)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == 3
            assert all(len(set(b.positives)) == 8 for b in batches)


@pytest.mark.parametrize("drop_last", [True, False])
def test_clash_at_the_end_of_an_epoch_is_swapped_away(drop_last: bool) -> None:
    # Orders like a, b, c, c2 leave the two queries sharing "C" for the last batch.
    data = [*shared(3, 3), TrainingExample("q3", ("text d2",), (), "q3", ("d2",))]
    if not drop_last:
        data.append(TrainingExample("q4", ("text d4",), (), "q4", ("d4",)))
    for seed in range(60):
        for batch in EpochBatchSampler(data, 2, seed=seed, drop_last=drop_last):
            assert len(set(batch.positive_ids)) == len(batch)


def test_unavoidable_duplicates_still_fill_batches() -> None:
    sampler = EpochBatchSampler(shared(10, 1), 4, seed=0, drop_last=False)
    assert [len(b) for b in sampler] == [4, 4, 2]


def test_large_input_is_fast_enough() -> None:
    data = shared(30_000, 20_000)
    sampler = EpochBatchSampler(data, 64, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 468
    assert sum(len(set(b.positive_ids)) < len(b) for b in batches) == 0


def test_on_scifact(shared_data: Path) -> None:
    data = examples_from_beir(load_beir(shared_data / "scifact", "train"))
    sampler = EpochBatchSampler(data, 32, seed=0, positives="all")
    batches = list(sampler)
    assert len(batches) == 919 // 32
    for b in batches:
        assert len(set(b.positive_ids)) == len(set(b.queries)) == 32
