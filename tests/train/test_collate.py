"""The false-negative codes built by ``collate``: which document rows stop counting as negatives.

Document rows are grouped by query (``[pos_0, neg_0.., pos_1, neg_1.., ...]``); with one hard
negative per query, query ``i``'s own positive is row ``2 i``.
"""

from __future__ import annotations

import pytest
import torch

from dualforge.data import Batch
from dualforge.errors import UserError
from dualforge.losses import PositiveCodes, info_nce
from dualforge.modeling import DualEncoder, Encoder
from dualforge.train.collate import collate
from tests.conftest import make_tiny_bert


@pytest.fixture(scope="module")
def model(tokenizer) -> DualEncoder:  # type: ignore[no-untyped-def]
    return DualEncoder(tokenizer, Encoder(make_tiny_bert(len(tokenizer)), "mean", True))


def batch(
    positives: list[str | None],
    negatives: list[str | None],
    query_ids: list[str | None] | None = None,
    texts: list[str] | None = None,
) -> Batch:
    """One hard negative per query; document texts default to their ids."""
    n = len(positives)
    docs = texts or [str(d) for pair in zip(positives, negatives) for d in pair]
    return Batch(
        queries=[f"query {i}" for i in range(n)],
        positives=docs[0::2],
        negatives=[[d] for d in docs[1::2]],
        query_ids=query_ids or [f"q{i}" for i in range(n)],
        positive_ids=positives,
        negative_ids=[[d] for d in negatives],
    )


def masked(codes: PositiveCodes | None, docs_per_query: int = 2) -> set[tuple[int, int]]:
    """The masked (query, document row) pairs, a query's own positive row left out (the loss
    never masks it, whatever the codes say there)."""
    assert codes is not None
    return {(i, j) for i, j in codes.dense().nonzero().tolist() if j != i * docs_per_query}


def fn(inputs) -> PositiveCodes | None:  # type: ignore[no-untyped-def]
    return inputs.loss.positives  # type: ignore[no-any-return]


def test_known_positives_elsewhere_in_the_batch_are_masked(model: DualEncoder) -> None:
    # q0 knows d0 and d5: d5 is q1's positive (row 2) and q2's hard negative (row 5).
    b = batch(["d0", "d5", "d8"], ["d3", "d7", "d5"])
    known = {"q0": {"d0", "d5"}, "q1": {"d5"}, "q2": {"d8"}}
    mask = fn(collate(model, b, 16, 16, known))
    # q1's own positive d5 again as q2's hard negative (row 5): masked for q1 too.
    assert masked(mask) == {(0, 2), (0, 5), (1, 5)}


def test_copies_of_a_query_s_own_positive_are_masked_without_qrels(model: DualEncoder) -> None:
    # q0 and q1 share positive d1; q2's hard negative is a copy of its own positive d4.
    b = batch(["d1", "d1", "d4"], ["d2", "d3", "d4"])
    assert masked(fn(collate(model, b, 16, 16, {}))) == {(0, 2), (1, 0), (2, 5)}


def test_without_ids_copies_are_matched_by_text(model: DualEncoder) -> None:
    texts = ["same doc", "other a", "same doc", "other b", "third", "same doc"]
    b = batch([None] * 3, [None] * 3, [None] * 3, texts)
    # Only q0 and q1 have "same doc" as positive; q2's negative "same doc" is not q2's positive.
    mask = fn(collate(model, b, 16, 16, {"q0": {"x"}}))
    assert masked(mask) == {(0, 2), (0, 5), (1, 0), (1, 5)}


def test_a_query_without_id_ignores_qrels(model: DualEncoder) -> None:
    b = batch(["d0", "d1"], ["d2", "d3"], query_ids=[None, "q1"])
    mask = fn(collate(model, b, 16, 16, {"q1": {"d0", "d2"}}))
    assert masked(mask) == {(1, 0), (1, 1)}


def test_masking_can_be_switched_off(model: DualEncoder) -> None:
    b = batch(["d1", "d1"], ["d2", "d3"])
    assert fn(collate(model, b, 16, 16, {}, mask_false_negatives=False)) is None


def test_loss_drops_masked_rows_and_keeps_each_own_positive(model: DualEncoder) -> None:
    """The mask as the loss uses it, against cross-entropy written out by hand."""
    b = batch(["d0", "d5", "d8"], ["d3", "d7", "d5"])
    mask = fn(collate(model, b, 16, 16, {"q0": {"d0", "d5"}, "q1": {"d5"}}, step=7))
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(3, 8, generator=g), torch.randn(6, 8, generator=g)
    scores = q @ d.T / 0.05
    dropped = masked(mask)
    keep = [[j for j in range(6) if (i, j) not in dropped] for i in range(3)]
    by_hand = torch.stack(
        [torch.logsumexp(scores[i, keep[i]], 0) - scores[i, 2 * i] for i in range(3)]
    ).mean()
    loss = info_nce(q, d, temperature=0.05, positives=mask)
    assert torch.isfinite(loss) and torch.allclose(loss, by_hand)
    assert not torch.allclose(loss, info_nce(q, d, temperature=0.05))  # the mask mattered


def test_a_shard_tokenizes_its_rows_and_masks_over_the_global_batch(model: DualEncoder) -> None:
    """Rank 1 of 2 tokenizes queries 2-3 and their documents; its mask still spans the global
    batch, so a known positive on rank 0 is masked for rank 1's queries too."""
    global_batch = batch(["d0", "d1", "d2", "d3"], ["n0", "n1", "n2", "n3"])
    known = {"q3": {"d3", "d0"}}  # d0 sits on rank 0
    full = collate(model, global_batch, 16, 16, known)
    local = collate(model, global_batch, 16, 16, known, shard=(1, 2))
    expected = model.tokenize(["query 2", "query 3"], "query", 16)
    assert torch.equal(local.queries["input_ids"], expected["input_ids"])
    docs = model.tokenize(["d2", "n2", "d3", "n3"], "document", 16)
    assert torch.equal(local.documents["input_ids"], docs["input_ids"])
    assert fn(local) is not None and fn(full) is not None
    assert torch.equal(fn(local).dense(), fn(full).dense())  # type: ignore[union-attr]
    assert (3, 0) in masked(fn(local))
    with pytest.raises(UserError, match="does not divide between 3 processes"):
        collate(model, global_batch, 16, 16, known, shard=(0, 3))


def test_the_loss_inputs_carry_the_step(model: DualEncoder) -> None:
    b = batch(["d1", "d2"], ["d3", "d4"])
    assert collate(model, b, 16, 16, {}, step=7).loss.step == 7
