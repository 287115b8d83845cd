"""Dynamic-index negative mining (Monath et al. 2023): a tree over the target vectors with exact
top-k search, exact softmax sampling and in-place updates, and Nyström drift correction.

    index = TreeIndex.build(doc_vectors)                       # (N, d) float32
    scores, ids, stats = index.sample(q, 16, temperature=0.05, exclude=positives)
    index.update(changed_ids, new_vectors)                     # refresh radii, rebuild loose parts
    index.update_all(correct_drift(stale, landmarks, fresh))   # Nyström map of all targets
    ids = mine_negatives(index, q, 8, mode="topk", skip_first=2, exclude=exclusion_matrix(pos))
"""

from dualforge.mining._compiled import SamplerBackend, resolve_backend
from dualforge.mining.maintenance import UpdateStats
from dualforge.mining.negatives import exclusion_matrix, mine_negatives
from dualforge.mining.nystrom import (
    NystromKernel,
    NystromMap,
    choose_landmarks,
    correct_drift,
    drift_error,
    fit_nystrom,
)
from dualforge.mining.sampler import SampleStats
from dualforge.mining.tree import TreeIndex

__all__ = [
    "NystromKernel",
    "NystromMap",
    "SampleStats",
    "SamplerBackend",
    "TreeIndex",
    "UpdateStats",
    "choose_landmarks",
    "correct_drift",
    "drift_error",
    "exclusion_matrix",
    "fit_nystrom",
    "mine_negatives",
    "resolve_backend",
]
