"""The numba sampler backend: backend choice, reproducibility, blocking and threads, errors.

Goodness of fit of both backends is tested in ``test_sampler.py`` (parametrised over them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualforge.mining import TreeIndex, _compiled
from tests.mining.helpers import check_sampler, clustered, near

numba = pytest.importorskip("numba")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, TreeIndex]:
    x = clustered(3000, 16, clusters=20, spread=0.3, seed=3)
    return x, near(x, 5, seed=3), TreeIndex.build(x, branching=4, leaf_size=16)


def test_backend_names(data: tuple[np.ndarray, np.ndarray, TreeIndex]) -> None:
    _, q, index = data
    assert _compiled.resolve_backend("auto") == "numba"
    assert _compiled.resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        index.sample(q, 4, temperature=0.1, backend="cuda")


def test_missing_numba_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compiled, "_kernels", lambda: None)
    assert _compiled.resolve_backend("auto") == "torch"
    with pytest.raises(ImportError, match=r"pip install dualforge\[fast\]"):
        _compiled.resolve_backend("numba")


def test_only_a_missing_optional_package_falls_back(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A missing numba means "use torch"; a missing module of ours or an error inside the
    kernels module is a bug and propagates."""
    (tmp_path / "needs_extra.py").write_text("import not_installed_extra_pkg\n")
    (tmp_path / "typo_kernels.py").write_text("from math import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _compiled.import_optional("needs_extra", ("not_installed_extra_pkg",)) is None
    with pytest.raises(ModuleNotFoundError, match="not_installed_extra_pkg"):
        _compiled.import_optional("needs_extra", ("numba",))
    with pytest.raises(ModuleNotFoundError, match=r"dualforge\.mining\._no_such_kernels"):
        _compiled.import_optional("dualforge.mining._no_such_kernels", _compiled.NUMBA_PACKAGES)
    with pytest.raises(ImportError, match="no_such_name"):
        _compiled.import_optional("typo_kernels", _compiled.NUMBA_PACKAGES)


def test_backends_draw_different_negatives_for_one_seed(
    data: tuple[np.ndarray, np.ndarray, TreeIndex],
) -> None:
    """Both backends sample the exact softmax (test_sampler.py), from different random streams:
    one seed gives different draws, so a run logs which backend it resolved."""
    _, q, index = data
    draws = {
        b: index.sample(q, 64, temperature=0.1, generator=torch.Generator().manual_seed(5), backend=b)[1]
        for b in ("torch", "numba")
    }  # fmt: skip
    assert draws["torch"].shape == draws["numba"].shape
    assert not np.array_equal(draws["torch"], draws["numba"])


def test_reproducible_with_a_generator(data: tuple[np.ndarray, np.ndarray, TreeIndex]) -> None:
    """A fixed generator gives the same draws; the generator advances between calls."""
    _, q, index = data

    def draw(gen: torch.Generator) -> np.ndarray:
        return index.sample(q, 200, temperature=0.05, generator=gen, backend="numba")[1]

    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = draw(gen_a)
    np.testing.assert_array_equal(first, draw(gen_b))
    assert not np.array_equal(first, draw(gen_a))  # next call, next seed
    again = index.sample(q, 200, temperature=0.05, seed=11, backend="numba")[1]
    np.testing.assert_array_equal(again, index.sample(q, 200, temperature=0.05, seed=11)[1])


def test_blocks_and_threads_do_not_change_draws(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each query row has its own random stream: block size and thread count are invisible.
    The kernels run on torch's thread count and leave it as it was (numba's OpenMP layer
    resets it to every core otherwise)."""
    _, q, index = data
    kw = {"temperature": 0.05, "seed": 5, "backend": "numba"}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s1, i1, st1 = index.sample(q, 300, **kw)  # type: ignore[arg-type]
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(_compiled, "BLOCK_ENTRIES", 1)  # one query per block
        torch.set_num_threads(1)
        s2, i2, st2 = index.sample(q, 300, **kw)  # type: ignore[arg-type]
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    assert st1 == st2


def test_stats_are_filled(data: tuple[np.ndarray, np.ndarray, TreeIndex]) -> None:
    x, q, index = data
    _, _, st = index.sample(q, 100, temperature=0.05, seed=0, backend="numba")
    assert st.queries == 5 and st.samples == 500 and st.accepted == 500
    assert st.cut_nodes > 1 and st.rounds >= 1  # rounds: most heap expansions of one query
    assert st.centres_scored >= 5 * st.cut_nodes
    assert st.proposals >= st.accepted >= 0 and st.node_proposals <= st.proposals
    assert 0 < st.points_scored < 5 * len(x)


def test_exclusions_with_several_blocks(
    data: tuple[np.ndarray, np.ndarray, TreeIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each block gets its own slice of the exclusion lists."""
    x, q, index = data
    monkeypatch.setattr(_compiled, "BLOCK_ENTRIES", 2 * len(index._get_cut()))  # 2 rows a block
    top = np.argsort(-(q @ x.T), axis=1)[:, :20]
    exclude = [row[: 5 + 3 * i].tolist() for i, row in enumerate(top)]
    check_sampler(index, x, q, 0.05, 50_000, exclude=exclude, backend="numba")


def test_everything_excluded_raises(data: tuple[np.ndarray, np.ndarray, TreeIndex]) -> None:
    x, q, index = data
    exclude = [[], list(range(len(x))), [], [], []]
    with pytest.raises(ValueError, match="excludes all"):
        index.sample(q, 4, temperature=0.1, exclude=exclude, backend="numba")


def test_only_one_target_left(data: tuple[np.ndarray, np.ndarray, TreeIndex]) -> None:
    x, q, index = data
    exclude = [list(range(1, len(x)))] * len(q)
    _, ids, _ = index.sample(q, 50, temperature=0.05, exclude=exclude, seed=0, backend="numba")
    assert (ids == 0).all()
