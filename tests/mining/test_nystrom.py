"""Nyström drift correction against the closed-form formula and on synthetic drift."""

from __future__ import annotations

import numpy as np
import pytest

from dualforge.mining import choose_landmarks, correct_drift, drift_error, fit_nystrom


@pytest.fixture(scope="module")
def drift() -> tuple[np.ndarray, np.ndarray]:
    """Y = X A + small noise, with A a random near-identity matrix."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 32)).astype(np.float32)
    a = np.eye(32) + 0.1 * rng.normal(size=(32, 32)) / np.sqrt(32)
    y = (x @ a + 0.01 * rng.normal(size=x.shape)).astype(np.float32)
    return x, y


def test_two_percent_landmarks_remove_most_drift(drift: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = drift
    landmarks = choose_landmarks(len(x), 100, seed=1)  # 2%
    estimate = correct_drift(x, landmarks, y[landmarks])
    stale, corrected = drift_error(x, y), drift_error(estimate, y)
    assert stale > 0.05
    assert corrected < 0.2 * stale


def test_linear_map_equals_nystrom_formula(drift: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = drift
    ids = choose_landmarks(len(x), 60, seed=2)
    xl, yl = x[ids].astype(np.float64), y[ids].astype(np.float64)
    gram = xl @ xl.T
    lam = 0.01 * np.trace(gram) / len(ids)
    expected = x[:300] @ xl.T @ np.linalg.solve(gram + lam * np.eye(len(ids)), yl)
    got = fit_nystrom(x[ids], y[ids], ridge=0.01).apply(x[:300], chunk_size=7)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", ["rbf", "poly"])
def test_kernel_maps_equal_formula_and_reduce_drift(kernel: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x @ (np.eye(16) + 0.1 * rng.normal(size=(16, 16)) / 4.0)
    y = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    ids = choose_landmarks(len(x), 600, seed=3)
    fitted = fit_nystrom(x[ids], y[ids], kernel=kernel, ridge=1e-3, rcond=0.0)
    kll = fitted.kernel_matrix(fitted.landmarks).numpy()
    lam = 1e-3 * np.trace(kll) / len(ids)
    knl = fitted.kernel_matrix(fitted.landmarks.new_tensor(x[:200])).numpy()
    expected = knl @ np.linalg.solve(kll + lam * np.eye(len(ids)), y[ids].astype(np.float64))
    np.testing.assert_allclose(fitted.apply(x[:200]), expected, rtol=1e-3, atol=1e-3)
    assert drift_error(fitted.apply(x), y) < 0.5 * drift_error(x, y)


def test_rank_truncation(drift: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = drift
    ids = choose_landmarks(len(x), 100, seed=4)
    assert fit_nystrom(x[ids], y[ids]).rank == 32
    low = fit_nystrom(x[ids], y[ids], rank=4)
    assert low.rank == 4
    assert drift_error(low.apply(x), y) > drift_error(fit_nystrom(x[ids], y[ids]).apply(x), y)


def test_landmarks() -> None:
    a = choose_landmarks(1000, 50, seed=5)
    assert np.array_equal(a, choose_landmarks(1000, 50, seed=5))
    assert not np.array_equal(a, choose_landmarks(1000, 50, seed=6))
    assert len(np.unique(a)) == 50 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 4)) + 10 * i for i in range(4)]).astype(np.float32)
    k = choose_landmarks(x, 8, method="kmeans", seed=1)
    assert len(np.unique(k)) == 8
    assert len(np.unique(k // 500)) == 4  # every blob gets landmarks


def test_drift_error_and_errors(drift: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = drift
    assert drift_error(1.1 * y, y) == pytest.approx(0.1, rel=1e-5)
    assert drift_error(y, y) == 0.0
    with pytest.raises(ValueError, match="must match"):
        drift_error(x[:10], y[:11])
    with pytest.raises(ValueError, match="all-zero row"):
        drift_error(x[:2], np.zeros((2, 32)))
    with pytest.raises(ValueError, match="kernel="):
        fit_nystrom(x[:10], y[:10], kernel="cosine")
    with pytest.raises(ValueError, match="as many"):
        fit_nystrom(x[:10], y[:9])
    with pytest.raises(ValueError, match="ridge"):
        fit_nystrom(x[:10], y[:10], ridge=-1.0)
    with pytest.raises(ValueError, match="landmark ids"):
        correct_drift(x, [len(x)], y[:1])
    with pytest.raises(ValueError, match="dimension 16"):
        fit_nystrom(x[:10], y[:10]).apply(x[:, :16])
    with pytest.raises(ValueError, match="m=0"):
        choose_landmarks(10, 0)
    with pytest.raises(ValueError, match="needs the vectors"):
        choose_landmarks(10, 2, method="kmeans")
    with pytest.raises(ValueError, match="method="):
        choose_landmarks(10, 2, method="random")
