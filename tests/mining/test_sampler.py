"""The sampler's draws fit the exact softmax (chi-square and total variation against brute force)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge.mining import TreeIndex
from tests.mining.helpers import check_sampler, chi_square_p, clustered, near, softmax

N_DRAWS = 200_000


@pytest.fixture(params=["torch", "numba"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every sampler test runs on both backends (numba's is skipped when numba is missing)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    return str(request.param)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, TreeIndex]:
    x = clustered(4000, 16, clusters=20, spread=0.3)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    return x, near(x, 3), index


def test_goodness_of_fit_has_power(data: tuple[np.ndarray, np.ndarray, TreeIndex]) -> None:
    """The oracle accepts exact draws and rejects draws at a 5% different temperature."""
    x, q, _ = data
    gen = torch.Generator().manual_seed(0)
    p, p_off = softmax(q[:1], x, 0.1)[0], softmax(q[:1], x, 0.105)[0]
    exact = torch.multinomial(torch.from_numpy(p), N_DRAWS, True, generator=gen).numpy()
    assert chi_square_p(np.bincount(exact, minlength=len(x)), p) > 1e-4
    off = torch.multinomial(torch.from_numpy(p_off), N_DRAWS, True, generator=gen).numpy()
    assert chi_square_p(np.bincount(off, minlength=len(x)), p) < 1e-4


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_draws_fit_softmax(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], tau: float, backend: str
) -> None:
    x, q, index = data
    check_sampler(index, x, q, tau, N_DRAWS, backend=backend)


@pytest.mark.parametrize(("eta", "max_rounds"), [(0.9, 64), (0.1, 0), (0.5, 1)])
def test_exact_whatever_the_refinement(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], eta: float, max_rounds: int, backend: str
) -> None:
    """A coarse proposal (few rounds, loose eta) costs rejections but stays exact."""
    x, q, index = data
    kw = {"eta": eta, "max_rounds": max_rounds, "backend": backend}
    check_sampler(index, x, q[:2], 0.1, N_DRAWS // 2, **kw)


def test_max_points_budget_stays_exact(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], backend: str
) -> None:
    x, q, index = data
    _, _, full = index.sample(q, 1000, temperature=0.05, seed=0, backend=backend)
    check_sampler(index, x, q[:2], 0.05, N_DRAWS // 4, max_points=150, backend=backend)
    _, _, capped = index.sample(q, 1000, temperature=0.05, seed=0, max_points=150, backend=backend)
    assert capped.points_scored < full.points_scored


def test_excluded_ids_never_drawn(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], backend: str
) -> None:
    """Excluding each query's 30 most likely targets (the known positives and their like)."""
    x, q, index = data
    top = np.argsort(-(q @ x.T), axis=1)[:, :30]
    exclude = [row.tolist() for row in top]
    exclude[1] = exclude[1] + [-1, -1]  # padding is ignored
    check_sampler(index, x, q, 0.05, N_DRAWS, exclude=exclude, backend=backend)
    _, ids, _ = index.sample(
        q, 5000, temperature=0.05, seed=1, exclude=np.array(top), backend=backend
    )
    assert not any(np.isin(ids[i], top[i]).any() for i in range(len(q)))


def test_low_temperature_is_argmax(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], backend: str
) -> None:
    x, q, index = data
    tau = 1e-3
    p = softmax(q, x, tau)
    scores, ids, _ = index.sample(q, 2000, temperature=tau, seed=0, backend=backend)
    best = np.argmax(q @ x.T, axis=1)
    for i in range(len(q)):
        assert (ids[i] == best[i]).mean() >= p[i, best[i]] - 0.05
        assert chi_square_p(np.bincount(ids[i], minlength=len(x)), p[i]) > 1e-4
    assert np.all(scores <= (q @ x.T).max(1, keepdims=True) + 1e-6)


def test_high_temperature_is_near_uniform(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], backend: str
) -> None:
    x, q, index = data
    check_sampler(index, x, q[:1], 100.0, N_DRAWS, backend=backend)
    _, _, stats = index.sample(q, 1000, temperature=100.0, seed=0, backend=backend)
    assert stats.points_scored == 0  # the cut's bounds are already tight enough
    assert stats.acceptance_rate > 0.9


def test_stats_and_reproducibility(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], backend: str
) -> None:
    x, q, index = data
    a = index.sample(q, 100, temperature=0.05, seed=7, backend=backend)
    gen = torch.Generator().manual_seed(7)
    b = index.sample(torch.from_numpy(q), 100, temperature=0.05, generator=gen, backend=backend)
    np.testing.assert_array_equal(a[1], b[1])
    stats = a[2]
    assert stats.queries == 3 and stats.samples == 300
    assert stats.cut_nodes > 1 and stats.rounds >= 1
    assert 0 < stats.acceptance_rate <= 1 and stats.scored_per_sample > 0
    assert stats.points_scored < 3 * len(x)  # far from scoring everything


def test_unnormalised_vectors(backend: str) -> None:
    rng = np.random.default_rng(5)
    x = (clustered(2000, 8, seed=5) * rng.uniform(0.5, 2.0, (2000, 1))).astype(np.float32)
    q = (near(x, 2) * 3.0).astype(np.float32)
    index = TreeIndex.build(x, leaf_size=16, branching=4)
    check_sampler(index, x, q, 0.5, N_DRAWS // 2, backend=backend)


def test_sampling_after_updates_is_exact(backend: str) -> None:
    x = clustered(3000, 16, seed=6)
    index = TreeIndex.build(x, branching=4, leaf_size=16)
    rng = np.random.default_rng(6)
    ids = rng.choice(len(x), 600, replace=False)
    new = clustered(600, 16, seed=11)
    x[ids] = new
    stats = index.update(ids, new)
    assert stats.points_updated == 600
    q = near(x, 2, seed=4)
    check_sampler(index, x, q, 0.05, N_DRAWS, backend=backend)
    shifted = (x + 0.05 * rng.normal(size=x.shape)).astype(np.float32)
    index.update_all(shifted)
    check_sampler(index, shifted, q, 0.05, N_DRAWS, backend=backend)


@pytest.mark.slow
def test_draws_fit_softmax_at_scale(backend: str) -> None:
    """20k vectors in 64-d, 1M draws per query, with exclusions."""
    x = clustered(20_000, 64, clusters=100, spread=0.3, seed=9)
    index = TreeIndex.build(x)
    q = near(x, 3, seed=9)
    top = np.argsort(-(q @ x.T), axis=1)[:, :5]
    check_sampler(index, x, q, 0.05, 1_000_000, exclude=top.tolist(), backend=backend)
