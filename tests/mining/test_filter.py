"""Positive-aware filtering and the vector stores, against brute-force oracles."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dualforge.mining import TreeIndex
from dualforge.mining.negatives import (
    brute_force_softmax,
    brute_force_topk,
    exclusion_matrix,
    mine,
    mine_negatives,
    positive_ceiling,
)
from dualforge.mining.stores import FlatStore, StoreParams, TreeStore, load_store, make_store
from tests.mining.helpers import chi_square_p, clustered, near, softmax


def _planted(n: int = 400, d: int = 16, q: int = 6, copies: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    """Targets where each query's positive has ``copies`` near-exact unlabelled copies."""
    x = clustered(n, d, clusters=8, seed=seed)
    queries = near(x, q, noise=0.1, seed=seed + 1)
    pos = np.argmax(queries @ x.T, axis=1)  # each query's positive: its best target
    rng = np.random.default_rng(seed)
    planted = []
    for p in pos:
        dup = x[p] + 1e-3 * rng.normal(size=(copies, d))
        planted.append(dup / np.linalg.norm(dup, axis=1, keepdims=True))
    all_x = np.concatenate([x, *planted]).astype(np.float32)
    copy_ids = [list(range(n + i * copies, n + (i + 1) * copies)) for i in range(len(pos))]
    return all_x, queries, pos, copy_ids


def _ceiling(x: np.ndarray, q: np.ndarray, pos: np.ndarray, rule: str, m: float) -> torch.Tensor:
    s = torch.from_numpy(np.einsum("qd,qd->q", q, x[pos]))
    return positive_ceiling(s, rule, m)


def test_ceilings_are_sign_safe() -> None:
    s = torch.tensor([0.8, -0.4, 0.0])
    assert torch.allclose(
        positive_ceiling(s, "absolute", 0.1), torch.tensor([0.7, -0.5, -0.1]).double()
    )
    relative = positive_ceiling(s, "relative", 0.05)
    # a negative positive score must give a LOWER ceiling, never a higher one
    assert torch.allclose(relative, torch.tensor([0.76, -0.42, 0.0]).double())
    assert bool((relative <= s.double()).all())
    assert bool(torch.isinf(positive_ceiling(s, "none", 0.3)).all())
    with pytest.raises(ValueError, match="filter rule"):
        positive_ceiling(s, "percent", 0.1)


@pytest.mark.parametrize(
    ("store_name", "backend"), [("tree", "torch"), ("tree", "numba"), ("flat", "torch")]
)
@pytest.mark.parametrize("rule", ["absolute", "relative"])
def test_filtered_draws_follow_the_restricted_softmax(
    store_name: str, backend: str, rule: str
) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    x, q, pos, copies = _planted()
    ceiling = _ceiling(x, q, pos, rule, 0.05)
    exclude = [[int(p)] for p in pos]
    params = StoreParams(leaf_size=8, budget=500, backend=backend)
    store = make_store(store_name, torch.from_numpy(x), params)
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    mined = mine(
        store, q, n, mode="softmax", exclude=exclusion_matrix(exclude), ceiling=ceiling,
        temperature=0.05, generator=gen,
    )  # fmt: skip
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    for i in range(len(q)):
        removed = [int(j) for j in np.nonzero(scores[i] > ceiling[i].item())[0]]
        assert set(copies[i]) <= set(removed)  # every planted copy is above the ceiling
        target = softmax(q[i : i + 1], x, 0.05, [exclude[i] + removed])[0]
        counts = np.bincount(mined.ids[i], minlength=len(x))
        assert counts[removed].sum() == 0
        assert chi_square_p(counts, target) > 1e-4
        assert 0.5 * np.abs(counts / n - target).sum() < 0.05
    assert not mined.fallback.any()


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_the_filter_cuts_planted_copies_at_least_20x(backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    x, q, pos, copies = _planted(copies=5)
    exclude = exclusion_matrix([[int(p)] for p in pos])
    store = TreeStore.build(torch.from_numpy(x), StoreParams(leaf_size=8, backend=backend))
    planted = np.zeros((len(q), len(x)), bool)  # copies of each query's own positive
    for i, row in enumerate(copies):
        planted[i, row] = True

    def rate(ceiling: torch.Tensor | None) -> float:
        gen = torch.Generator().manual_seed(1)
        ids = mine(store, q, 4000, mode="softmax", exclude=exclude, ceiling=ceiling,
                   temperature=0.05, generator=gen).ids  # fmt: skip
        return float(np.take_along_axis(planted, ids, 1).mean())

    off, on = rate(None), rate(_ceiling(x, q, pos, "absolute", 0.02))
    assert off > 0.2  # unfiltered, the copies are the hardest "negatives" of all
    assert on * 20 <= off and on == 0.0


@pytest.mark.parametrize("skip", [0, 2])
def test_filtered_topk_is_the_top_kept_ranks(skip: int) -> None:
    x, q, pos, copies = _planted()
    ceiling = _ceiling(x, q, pos, "relative", 0.03)
    rows = exclusion_matrix([[int(p)] for p in pos])
    brute = brute_force_topk(q, x, 6, skip, rows, ceiling)
    for name in ("tree", "flat"):
        store = make_store(name, torch.from_numpy(x), StoreParams(leaf_size=8, budget=300))
        got = mine(store, q, 6, mode="topk", exclude=rows, ceiling=ceiling, skip_first=skip)
        np.testing.assert_array_equal(got.ids, brute)
    scores = q @ x.T
    for i in range(len(q)):
        kept = [j for j in np.argsort(-scores[i], kind="stable")
                if j != pos[i] and scores[i, j] <= ceiling[i].item()]  # fmt: skip
        assert brute[i].tolist() == kept[skip : skip + 6]
        assert not set(brute[i].tolist()) & set(copies[i])


def test_negative_positive_scores_filter_the_right_side() -> None:
    # queries whose positive scores below zero: the relative rule must still remove targets
    # scoring above s+ (and near it), not everything above s+ + |s+| p
    x = clustered(300, 8, seed=4)
    q = near(x, 4, seed=5)
    pos = np.argmin(np.abs(q @ x.T + 0.2), axis=1)  # a positive scoring about -0.2
    s = np.einsum("qd,qd->q", q, x[pos])
    assert (s < 0).all()
    ceiling = _ceiling(x, q, pos, "relative", 0.1)
    assert bool((ceiling < torch.from_numpy(s).double()).all())
    rows = exclusion_matrix([[int(p)] for p in pos])
    store = FlatStore(torch.from_numpy(x), StoreParams())
    ids = mine(store, q, 50, mode="softmax", exclude=rows, ceiling=ceiling,
               generator=torch.Generator().manual_seed(0)).ids  # fmt: skip
    got = np.einsum("qd,qkd->qk", q, x[ids])
    assert (got <= ceiling.numpy()[:, None] + 1e-6).all()


def test_too_few_kept_targets_fall_back_unfiltered() -> None:
    x = clustered(60, 8, seed=6)
    q = near(x, 3, seed=7)
    ceiling = torch.tensor([-10.0, math.inf, -10.0], dtype=torch.float64)  # rows 0, 2 keep nothing
    rows = exclusion_matrix([[0], [1], [2]])
    for name, backend in (("tree", "torch"), ("tree", "numba"), ("flat", "torch")):
        store = make_store(name, torch.from_numpy(x), StoreParams(leaf_size=4, backend=backend))
        for mode in ("softmax", "topk"):
            got = mine(store, q, 5, mode=mode, exclude=rows, ceiling=ceiling)
            assert got.fallback.tolist() == [True, False, True], (name, backend, mode)
            assert got.ids.shape == (3, 5) and (got.ids >= 0).all()
            assert not (got.ids == np.array([[0], [1], [2]])).any()  # exclusions still hold
    oracle = brute_force_softmax(q, x, 5, 0.05, rows, torch.Generator().manual_seed(0), ceiling)
    assert oracle.shape == (3, 5)


@pytest.mark.parametrize("mode", ["softmax", "topk"])
def test_flat_equals_tree_in_distribution_and_topk(mode: str) -> None:
    x = clustered(800, 16, seed=8)
    q = near(x, 5, seed=9)
    rows = exclusion_matrix([[i, i + 10] for i in range(5)])
    tree = TreeStore.build(torch.from_numpy(x), StoreParams(leaf_size=16))
    flat = FlatStore(torch.from_numpy(x), StoreParams(budget=1000))  # many chunks
    if mode == "topk":
        a = mine(tree, q, 9, mode="topk", exclude=rows).ids
        b = mine(flat, q, 9, mode="topk", exclude=rows).ids
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, brute_force_topk(q, x, 9, 0, rows))
        return
    n = 20_000
    target = softmax(q, x, 0.1, [[i, i + 10] for i in range(5)])
    for store in (tree, flat):
        ids = mine(store, q, n, mode="softmax", exclude=rows, temperature=0.1,
                   generator=torch.Generator().manual_seed(3)).ids  # fmt: skip
        for i in range(len(q)):
            counts = np.bincount(ids[i], minlength=len(x))
            assert chi_square_p(counts, target[i]) > 1e-4
            assert 0.5 * np.abs(counts / n - target[i]).sum() < 0.05


def test_stores_update_and_round_trip_their_state() -> None:
    x = clustered(200, 8, seed=10)
    for name in ("tree", "flat"):
        store = make_store(name, torch.from_numpy(x), StoreParams(leaf_size=8))
        new = torch.from_numpy(clustered(5, 8, seed=11))
        store.update(torch.tensor([3, 7, 11, 100, 150]), new)
        assert torch.allclose(store.vectors(torch.tensor([7, 150])), new[[1, 4]])
        again = load_store(name, store.state_dict(), StoreParams(leaf_size=8))
        assert torch.equal(again.vectors(), store.vectors())
        assert again.memory_bytes() >= x.nbytes
        store.replace(torch.from_numpy(x))
        assert torch.allclose(store.vectors(), torch.from_numpy(x))
    with pytest.raises(ValueError, match="unknown vector store"):
        make_store("hnsw", torch.from_numpy(x), StoreParams())
    with pytest.raises(ValueError, match="not a 'flat' store"):
        load_store("flat", {"index": {}}, StoreParams())


def test_mine_negatives_accepts_every_source() -> None:
    x = clustered(300, 8, seed=12)
    q = near(x, 3, seed=13)
    rows = exclusion_matrix([[0], [1], [2]])
    want = brute_force_topk(q, x, 4, 1, rows)
    for src in (x, TreeIndex.build(x, leaf_size=8), FlatStore(torch.from_numpy(x), StoreParams())):
        got = mine_negatives(src, q, 4, mode="topk", skip_first=1, exclude=rows)
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def planted_scifact(shared_data: Path) -> dict[str, Any]:
    """A SciFact cut (60 train queries, their positives and 240 other documents) with a copy of
    10% of the positives' texts under new ids, encoded by all-MiniLM-L6-v2."""
    from dualforge.data import load_beir
    from dualforge.modeling import load_model

    ds = load_beir(shared_data / "scifact", "train")
    pairs = [(q, d) for q, judged in ds.qrels.items() for d, s in judged.items() if s > 0]
    pairs = list({q: (q, d) for q, d in pairs if q in ds.queries}.values())[:60]
    positives = list(dict.fromkeys(d for _, d in pairs))
    others = [d for d in ds.corpus if d not in set(positives)][:240]
    texts = [ds.corpus[d].full_text for d in positives + others]
    copied = positives[:: len(positives) // max(1, round(0.1 * len(positives)))][:6]
    texts += [ds.corpus[d].full_text for d in copied]
    model = load_model("minilm")
    docs = model.embed(texts, "document", 32, max_length=128)
    queries = model.embed([ds.queries[q] for q, _ in pairs], "query", 32)
    row = {d: i for i, d in enumerate(positives + others)}
    copy_row = {d: len(positives) + len(others) + i for i, d in enumerate(copied)}
    return {"docs": docs, "queries": queries, "pos": [row[d] for _, d in pairs],
            "copy": [copy_row.get(d, -1) for _, d in pairs]}  # fmt: skip


@pytest.mark.parametrize("store_name", ["tree", "flat"])
def test_planted_copies_in_a_scifact_cut(planted_scifact: dict[str, Any], store_name: str) -> None:
    """Real text copies of positives: the filtered draws follow the brute-force filtered softmax
    and draw the planted copies at least 20x less often than unfiltered."""
    docs, q = planted_scifact["docs"], planted_scifact["queries"]
    pos, copy = np.array(planted_scifact["pos"]), np.array(planted_scifact["copy"])
    rows = np.nonzero(copy >= 0)[0]  # the queries whose positive has a planted copy
    assert len(rows) >= 5
    x, qq = docs.numpy(), q.numpy()[rows]
    exclude = exclusion_matrix([[int(pos[r])] for r in rows])
    ceiling = _ceiling(x, qq, pos[rows], "absolute", 0.05)
    store = make_store(store_name, docs, StoreParams(leaf_size=16))
    n = 10_000

    def draws(cap: torch.Tensor | None) -> np.ndarray:
        gen = torch.Generator().manual_seed(0)
        return mine(store, qq, n, mode="softmax", exclude=exclude, ceiling=cap, temperature=0.05,
                    generator=gen).ids  # fmt: skip

    off, on = draws(None), draws(ceiling)
    planted = copy[rows][:, None]
    rate_off, rate_on = float((off == planted).mean()), float((on == planted).mean())
    assert rate_off > 0.01 and rate_on * 20 <= rate_off
    scores = qq.astype(np.float64) @ x.astype(np.float64).T
    for i in range(len(rows)):
        removed = [int(j) for j in np.nonzero(scores[i] > ceiling[i].item())[0]]
        target = softmax(qq[i : i + 1], x, 0.05, [[int(pos[rows[i]]), *removed]])[0]
        counts = np.bincount(on[i], minlength=len(x))
        assert chi_square_p(counts, target) > 1e-4
        assert 0.5 * np.abs(counts / n - target).sum() < 0.06
