"""Dynamic-index negative mining (Monath et al. 2023): a tree over the target vectors with exact
top-k search, exact softmax sampling and in-place updates, and Nyström drift correction.

    index = TreeIndex.build(doc_vectors)                       # (N, d) float32
    scores, ids, stats = index.sample(q, 16, temperature=0.05, exclude=positives)
    index.update(changed_ids, new_vectors)                     # refresh radii, rebuild loose parts
    index.update_all(correct_drift(stale, landmarks, fresh))   # Nyström map of all targets
"""

from dualforge.mining.maintenance import UpdateStats
from dualforge.mining.nystrom import (
    NystromMap,
    choose_landmarks,
    correct_drift,
    drift_error,
    fit_nystrom,
)
from dualforge.mining.sampler import SampleStats
from dualforge.mining.tree import TreeIndex

__all__ = [
    "NystromMap",
    "SampleStats",
    "TreeIndex",
    "UpdateStats",
    "choose_landmarks",
    "correct_drift",
    "drift_error",
    "fit_nystrom",
]
