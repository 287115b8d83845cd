"""The budget mode: the cheapest cascade within a tolerance, its confidence rule, the default grid."""

from __future__ import annotations

import numpy as np
import pytest

from dualforge.eval.retrieval import (
    Stage,
    check_stages,
    choose_cascade,
    default_candidates,
    exact_search,
    format_funnel_spec,
    qrels_quality,
)
from dualforge.eval.retrieval.budget import CascadeTrial, _qualifies
from tests.eval.retrieval.helpers import PAPER


def budget_data() -> tuple[np.ndarray, np.ndarray]:
    """Dims 0-7 nearly useless, 8-15 carry the ranking, 16-31 zero in the documents."""
    rng = np.random.default_rng(3)
    d = rng.normal(size=(500, 32))
    d[:, :8] *= 0.01
    d[:, 16:] = 0.0
    q = rng.normal(size=(40, 32))
    return q.astype(np.float32), d.astype(np.float32)


def test_choose_cascade_picks_cheapest_within_tolerance() -> None:
    q, d = budget_data()
    _, exact_ids = exact_search(q, d, 10)
    qids, doc_ids = [f"q{i}" for i in range(40)], [f"d{j}" for j in range(500)]
    qrels = {qid: {doc_ids[j]: 1 for j in row} for qid, row in zip(qids, exact_ids.tolist())}
    quality = qrels_quality(qrels, qids, doc_ids, "recall@10")
    candidates = ["8:20,32:10", "16:20,32:10", "16:200,32:10", "8:400,32:10"]
    choice = choose_cascade(d, q, quality, candidates, tolerance=0.01)
    assert choice.reference.spec == "32:10" and choice.reference.quality == 1.0
    assert choice.reference.flops_per_query == 500 * 32
    assert choice.chosen.spec == "16:20,32:10"  # exact at 16 dims here; 8 dims is not
    assert choice.chosen.quality == 1.0 and choice.chosen.flops_per_query == 500 * 16 + 20 * 32
    trials = {t.spec: t for t in choice.trials}
    assert trials["8:20,32:10"].quality < 0.5
    assert "8:400,32:10" not in trials  # 4000 + 12800 >= 16000: never cheaper than exact
    flops = [t.flops_per_query for t in choice.trials]
    assert flops == sorted(flops)
    loose = choose_cascade(d, q, quality, candidates, tolerance=0.99)
    assert loose.chosen.spec == "8:20,32:10"


def test_qrels_quality_per_query_matches_the_mean() -> None:
    q, d = budget_data()
    _, exact_ids = exact_search(q, d, 10)
    qids, doc_ids = [f"q{i}" for i in range(40)], [f"d{j}" for j in range(500)]
    qrels = {qid: {doc_ids[j]: 1 for j in row[:3]} for qid, row in zip(qids, exact_ids.tolist())}
    qrels.pop("q7")  # an unjudged query is left out of the per-query values
    scores, ids = exact_search(q[:, :12], d[:, :12], 10)
    mean = qrels_quality(qrels, qids, doc_ids, "ndcg@10")(scores, ids)
    values = qrels_quality(qrels, qids, doc_ids, "ndcg@10", per_query=True)(scores, ids)
    assert isinstance(values, np.ndarray) and values.shape == (39,)
    assert float(values.mean()) == pytest.approx(mean)
    assert 0.0 < mean < 1.0


def _trial(quality: np.ndarray, spec: str = "c") -> CascadeTrial:
    return CascadeTrial(spec, 1.0, float(quality.mean()), 0.0, quality)


def test_confidence_rule_rejects_a_noisy_pass() -> None:
    reference = _trial(np.ones(100), "ref")
    steady = _trial(np.full(100, 0.99))  # mean loss 0.01, no spread
    noisy = _trial(np.r_[np.ones(90), np.full(10, 0.85)])  # mean loss 0.015, sd 0.0452
    for trial in (steady, noisy):
        assert _qualifies(trial, reference, 0.02, None)  # both pass on the mean
    # one-sided bounds of the noisy mean loss, 0.015 + z * 0.0452 / 10:
    assert _qualifies(noisy, reference, 0.02, 0.8)  # z = 0.8416: 0.0188
    assert not _qualifies(noisy, reference, 0.02, 0.9)  # z = 1.2816: 0.0208
    assert _qualifies(steady, reference, 0.02, 0.999)
    assert _qualifies(reference, reference, 0.0, 0.99)  # exact search always qualifies
    with pytest.raises(ValueError, match="per-query"):
        _qualifies(CascadeTrial("c", 1.0, 0.99, 0.0), reference, 0.02, 0.9)


def test_choose_cascade_with_confidence_is_never_cheaper() -> None:
    q, d = budget_data()
    _, exact_ids = exact_search(q, d, 10)
    qids, doc_ids = [f"q{i}" for i in range(40)], [f"d{j}" for j in range(500)]
    qrels = {qid: {doc_ids[j]: 1 for j in row} for qid, row in zip(qids, exact_ids.tolist())}
    per_query = qrels_quality(qrels, qids, doc_ids, "recall@10", per_query=True)
    candidates = ["8:20,32:10", "12:20,32:10", "12:60,32:10", "16:20,32:10"]
    plain = choose_cascade(d, q, per_query, candidates, tolerance=0.1)
    sure = choose_cascade(d, q, per_query, candidates, tolerance=0.1, confidence=0.99)
    assert sure.chosen.flops_per_query >= plain.chosen.flops_per_query
    loss = sure.reference.per_query - sure.chosen.per_query  # type: ignore[operator]
    assert loss.mean() + 2.3263 * loss.std(ddof=1) / np.sqrt(len(loss)) <= 0.1 + 1e-9
    with pytest.raises(ValueError, match="confidence must be in"):
        choose_cascade(d, q, per_query, candidates, confidence=1.0)
    mean_only = qrels_quality(qrels, qids, doc_ids, "recall@10")
    with pytest.raises(ValueError, match="per-query"):
        choose_cascade(d, q, mean_only, candidates, confidence=0.9)


def test_choose_cascade_default_grid_and_errors(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    q, d = clustered
    _, exact_ids = exact_search(q, d, 10, metric="cos")

    def overlap(scores: np.ndarray, ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) for a, b in zip(ids, exact_ids)]) / 10)

    choice = choose_cascade(d, q, overlap, tolerance=0.0, metric="cos")
    assert choice.chosen.quality == 1.0
    assert choice.chosen.flops_per_query <= choice.reference.flops_per_query
    with pytest.raises(ValueError, match="tolerance"):
        choose_cascade(d, q, overlap, tolerance=1.0)
    with pytest.raises(ValueError, match="dims must increase"):
        choose_cascade(d, q, overlap, ["16:50,8:10"])


def test_default_candidates() -> None:
    cands = default_candidates(384, 10_000, k=10)
    specs = [format_funnel_spec(c) for c in cands]
    assert PAPER in specs
    assert "32:200,384:10" in specs
    assert "32:400,128:100,384:10" in specs  # one intermediate rerank, shortlist / 4
    assert "16:800,256:100,384:10" in specs
    assert "32:50,128:6,384:10" not in specs  # intermediate keeps stay above k
    assert specs[-1] == "384:10"
    assert len(specs) == len(set(specs))
    for c in cands:
        check_stages(c, 384)
        assert c[-1] == Stage(384, 10)
    small = [format_funnel_spec(c) for c in default_candidates(64, 120, k=10)]
    assert small == [
        "16:50,64:10",
        "16:50,32:25,64:10",
        "16:50,32:12,64:10",
        "16:100,64:10",
        "16:100,32:50,64:10",
        "16:100,32:25,64:10",
        "16:100,32:12,64:10",
        "32:50,64:10",
        "32:100,64:10",
        "64:10",
    ]
