"""A batch's per-example fields travel together through sharding, mining and collate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dualforge.data import TEACHER_SCORES, Batch, Column, EpochBatchSampler, TrainingExample
from dualforge.data.batch import Pick, batch_of
from dualforge.losses import TEACHER_SCORES as LOSS_KEY
from dualforge.train.distributed import shard_batch
from tests.train.test_negatives import _miner


def _batch(n: int = 6) -> Batch:
    return Batch(
        queries=[f"q{i}" for i in range(n)],
        positives=[f"p{i}" for i in range(n)],
        negatives=[[f"n{i}a", f"n{i}b"] for i in range(n)],
        query_ids=[f"q{i}" for i in range(n)],
        positive_ids=[f"p{i}" for i in range(n)],
        negative_ids=[[None, None] for _ in range(n)],
        extras={
            "weight": Column([float(i) for i in range(n)]),
            TEACHER_SCORES: Column([[10.0 * i, i, -i] for i in range(n)], per_candidate=True),
        },
    )


def test_a_shard_keeps_every_column_aligned() -> None:
    whole = _batch()
    for rank in range(3):
        part = shard_batch(whole, rank, 3)
        assert part.queries == [f"q{2 * rank}", f"q{2 * rank + 1}"]
        assert part.extras["weight"].values == [2.0 * rank, 2.0 * rank + 1]
        assert part.extras[TEACHER_SCORES].values[0][0] == 20.0 * rank
        assert part.extras[TEACHER_SCORES].per_candidate


@dataclass(frozen=True)
class _Tagged(Batch):
    """A batch with one more per-example field, added without touching sharding."""

    tags: list[str] = field(default_factory=list)


def test_a_new_field_needs_no_change_to_sharding() -> None:
    base = _batch(4)
    tagged = _Tagged(**{k: getattr(base, k) for k in base.__dataclass_fields__}, tags=list("abcd"))
    part = shard_batch(tagged, 1, 2)
    assert isinstance(part, _Tagged) and part.tags == ["c", "d"] and part.queries == ["q2", "q3"]
    with pytest.raises(ValueError, match=r"Batch\.tags has 3 entries for 4 queries"):
        _Tagged(**{k: getattr(base, k) for k in base.__dataclass_fields__}, tags=list("abc"))


def test_new_negatives_drop_the_columns_that_scored_the_old_ones() -> None:
    b = _batch(2)
    mined = b.with_negatives([["x"], ["y"]], [["dx"], ["dy"]])
    assert mined.negatives == [["x"], ["y"]] and mined.negative_ids == [["dx"], ["dy"]]
    assert set(mined.extras) == {"weight"}  # per-example columns stay, per-candidate ones go
    rescored = mined.with_column(TEACHER_SCORES, Column([[1.0, 0.0], [2.0, 1.0]], True))
    assert rescored.extras[TEACHER_SCORES].values == [[1.0, 0.0], [2.0, 1.0]]


def test_the_miner_keeps_extra_columns_aligned(tiny_model_dir: Path, tiny_beir: Path) -> None:
    miner, data = _miner(tiny_model_dir, tiny_beir, strategy="static", mode="topk")
    batch = next(iter(EpochBatchSampler(data.examples, 8, seed=0)))
    tagged = batch.with_column("row", Column(list(range(8))))
    mined, _ = miner.prepare(tagged, 1)
    assert mined.extras["row"].values == list(range(8)) and mined.queries == batch.queries
    assert all(len(n) == 4 for n in mined.negatives)


def test_batches_carry_teacher_scores_aligned_with_the_drawn_candidates() -> None:
    ex = TrainingExample(
        "q", ("p0", "p1"), ("a", "b", "c"), positive_scores=(9.0, 8.0),
        negative_scores=(3.0, 2.0, 1.0),
    )  # fmt: skip
    got = batch_of([Pick(ex, 1, (2, 0))])
    assert got.positives == ["p1"] and got.negatives == [["c", "a"]]
    assert got.extras[TEACHER_SCORES].values == [[8.0, 1.0, 3.0]]
    plain = TrainingExample("q2", ("p",), ("a", "b", "c"))
    assert TEACHER_SCORES not in batch_of([Pick(ex, 0, (0,)), Pick(plain, 0, (1,))]).extras
    assert LOSS_KEY == TEACHER_SCORES  # the loss reads the column collate turns into a tensor


def test_scores_must_cover_every_candidate() -> None:
    with pytest.raises(ValueError, match=r"1 \+ 2 teacher scores for 1 positive\(s\) \+ 3"):
        TrainingExample("q", ("p",), ("a", "b", "c"), positive_scores=(1.0,),
                        negative_scores=(1.0, 2.0))  # fmt: skip


def test_a_batch_with_columns_pickles() -> None:
    """Rank 0 sends mined batches to the other ranks (broadcast_object pickles them)."""
    import pickle

    b = _batch(2)
    back = pickle.loads(pickle.dumps(b))
    assert back == b and back.extras[TEACHER_SCORES].per_candidate
