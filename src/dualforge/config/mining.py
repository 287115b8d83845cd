"""The ``mining:`` section: mined hard negatives (read by ``train/negatives.build_miner`` only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dualforge.config.checks import _validate
from dualforge.mining import NystromKernel, SamplerBackend
from dualforge.mining.negatives import FilterRule, MiningMode
from dualforge.mining.stores import StoreName

Strategy = Literal["in_batch", "static", "refresh", "oracle", "dynamic"]
Correction = Literal["residual", "plain"]


@dataclass(frozen=True)
class MiningConfig:
    """Mined hard negatives (see docs/mining.md, "Training with mined negatives").

    ``strategy``: ``in_batch`` (no mining), ``static`` (index of the initial model's target
    embeddings, never refreshed), ``refresh`` (re-encode every target and rebuild the index every
    ``refresh_every`` steps), ``oracle`` (re-encode every target every step, brute force; at most
    ``oracle_max_targets`` targets), ``dynamic`` (tree index; every ``refresh_every`` steps
    re-encode ``landmarks`` targets, Nyström-correct all others, update the tree in place).
    ``mode``: ``softmax`` draws ``num_negatives`` per query from softmax(q·t / ``temperature``);
    ``topk`` takes ranks ``skip_first`` .. ``skip_first + num_negatives - 1``. Known positives
    (qrels) are never returned. ``landmarks`` below 1 is a fraction of the targets, otherwise a
    count. ``holdout`` non-landmark targets are re-encoded at each refresh to measure drift error
    (0: off); ``recent`` caps how many targets seen in batches since the last refresh are
    re-encoded with the landmarks (dynamic only). ``correction``: ``residual`` fits the linear
    Nyström map to the drift and adds it to the stale vectors (keeps the directions the
    landmarks do not span); ``plain`` maps the stale vectors themselves. ``kernel``: the Nyström
    kernel, ``rbf`` by default (the lowest drift error in the bench sweeps, docs/mining.md;
    ``rbf`` / ``poly`` cost O(m³ + N m d): a few thousand landmarks at most).
    ``ridge`` 0.1 (not ``fit_nystrom``'s 1e-3): with the landmark count near the dimension a
    lightly regularised linear fit extrapolates noise (docs/mining.md, bench sweep).
    ``backend``: the tree sampler, ``auto`` (numba when installed, else torch), ``torch`` or
    ``numba``; resolved once per run and logged (the two draw different negatives for one seed).
    ``index``: where the target vectors live: ``tree`` (the dynamic tree index, CPU) or
    ``flat`` (one tensor on the training device, exact brute force in chunks).
    ``filter``: positive-aware filtering against each query's current positive score ``s+``:
    ``none``, ``absolute`` (drop targets scoring above ``s+ - margin``) or ``relative`` (above
    ``s+ - |s+| * margin``, ``margin`` in [0, 1)). ``probe``: top ranks inspected per step for
    telemetry (the fractions the qrels and the filter remove; 0: off). ``check_qrels``: a
    BEIR qrels TSV of (query, document) pairs known to be unlabelled positives; the fraction
    of mined negatives among them is logged as ``planted_rate``. ``timeout``: seconds a rank
    waits for the others at each phase of the multi-process mining step.
    """

    strategy: Strategy = "in_batch"
    mode: MiningMode = "softmax"
    num_negatives: int = 4
    temperature: float = 0.05
    skip_first: int = 0
    refresh_every: int = 100
    landmarks: float = 0.05
    holdout: int = 256
    recent: int = 256
    oracle_max_targets: int = 20_000
    encode_batch_size: int = 64
    doc_max_length: int | None = None
    branching: int = 16
    leaf_size: int = 64
    looseness: float = 1.5
    eta: float = 0.25
    ridge: float = 0.1
    correction: Correction = "residual"
    kernel: NystromKernel = "rbf"
    backend: SamplerBackend = "auto"
    index: StoreName = "tree"
    filter: FilterRule = "none"
    margin: float = 0.05
    probe: int = 16
    check_qrels: str | None = None
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        checks = [
            (self.num_negatives >= 1, "num_negatives", ">= 1"),
            (self.temperature > 0, "temperature", "> 0"),
            (self.skip_first >= 0, "skip_first", ">= 0"),
            (self.refresh_every >= 1, "refresh_every", ">= 1"),
            (self.landmarks > 0, "landmarks", "> 0 (a fraction below 1, else a count)"),
            (self.holdout >= 0, "holdout", ">= 0"),
            (self.recent >= 0, "recent", ">= 0"),
            (self.oracle_max_targets >= 1, "oracle_max_targets", ">= 1"),
            (self.encode_batch_size >= 1, "encode_batch_size", ">= 1"),
            (self.doc_max_length is None or self.doc_max_length >= 1, "doc_max_length", ">= 1"),
            (self.branching >= 2, "branching", ">= 2"),
            (self.leaf_size >= 1, "leaf_size", ">= 1"),
            (self.looseness > 1, "looseness", "> 1"),
            (0 < self.eta < 1, "eta", "in (0, 1)"),
            (self.ridge >= 0, "ridge", ">= 0"),
            (self.margin >= 0, "margin", ">= 0"),
            (self.filter != "relative" or self.margin < 1, "margin", "< 1 with filter=relative"),
            (self.probe >= 0, "probe", ">= 0"),
            (self.timeout > 0, "timeout", "> 0"),
        ]
        _validate(self, "mining", checks)

    @property
    def active(self) -> bool:
        """Whether negatives are mined."""
        return self.strategy != "in_batch"
