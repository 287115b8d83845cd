"""A teacher that scores each query's candidates in the training loop (``loss.distill.teacher``).

The teacher is a model folder: a dualforge or sentence-transformers bi-encoder (dot products of
its embeddings, cosine when it normalises), a late-interaction folder (dualforge's or PyLate's:
MaxSim of its token vectors), or a cross-encoder (a ``...ForSequenceClassification`` folder with
one label: its logit). :class:`Teacher` scores every ``(query, candidate)`` pair of a batch, mined
negatives included, under ``no_grad`` on the training device, in batches; scores are cached per
pair (least recently used dropped past ``capacity``), so a pair seen again costs nothing. Under
several processes each rank scores its own rows and the scores are gathered, so every rank
holds the whole batch's, as collate needs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from dualforge.config import Config, ConfigError, DistillLossConfig
from dualforge.config.loss import QRELS_TEACHER
from dualforge.data import TEACHER_SCORES, Batch, Column
from dualforge.modeling.kinds import CROSS_ENCODER, PairScorer, kind_of_folder
from dualforge.modeling.names import ModelLoadError, check_model_name, resolve_model_path
from dualforge.train.collate import grouped_documents
from dualforge.train.distributed import ProcessInfo, gather_objects

CAPACITY = 1 << 20  # cached (query, candidate) scores


class Teacher:
    """Scores batches' candidates with a :data:`PairScorer`, caching each pair's score.

    Args:
        score: The teacher's scorer.
        kind: What the teacher is (``single_vector``, ``late_interaction``, ``cross_encoder``).
        capacity: Cached pairs at most.
        in_batch: Score every document of the batch for every query (``[pos_0, neg_0..,
            pos_1, ...]``), not only its own candidates.
    """

    def __init__(
        self, score: PairScorer, kind: str, capacity: int = CAPACITY, in_batch: bool = False
    ) -> None:
        self.score, self.kind, self.capacity, self.in_batch = score, kind, capacity, in_batch
        self.cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.last: dict[str, Any] = {}

    def annotate(self, batch: Batch, proc: ProcessInfo | None = None) -> Batch:
        """``batch`` with the :data:`~dualforge.data.TEACHER_SCORES` column of its candidates
        ``[positive] + negatives`` (this rank's rows scored, all ranks' gathered)."""
        tick = time.perf_counter()
        world, rank = (proc.world, proc.rank) if proc is not None else (1, 0)
        share = len(batch) // world
        mine = batch.take(slice(rank * share, (rank + 1) * share)) if world > 1 else batch
        every = grouped_documents(batch.positives, batch.negatives) if self.in_batch else None
        local, fresh = self._scores(mine, every)
        rows: list[list[float]] = local
        if world > 1 and proc is not None:
            rows = [r for part in gather_objects(local, proc) for r in part]
        self.last = {
            "teacher_seconds": time.perf_counter() - tick,
            "teacher_pairs": sum(len(r) for r in local),
            "teacher_scored": fresh,
        }
        return batch.with_column(TEACHER_SCORES, Column(rows, per_candidate=True))

    def _scores(
        self, batch: Batch, every: list[str] | None = None
    ) -> tuple[list[list[float]], int]:
        """Scores of ``batch``'s candidates (or of ``every`` document, for every query) and how
        many pairs were scored (not cached)."""
        own = [[p, *n] for p, n in zip(batch.positives, batch.negatives)]
        candidates = own if every is None else [every] * len(own)
        todo: dict[str, dict[str, None]] = {}  # query -> its unscored candidates, in order
        for query, docs in zip(batch.queries, candidates):
            for doc in docs:
                if (query, doc) not in self.cache:
                    todo.setdefault(query, {})[doc] = None
        fresh: dict[tuple[str, str], float] = {}
        if todo:
            with torch.inference_mode():
                scored = self.score(list(todo), [list(docs) for docs in todo.values()])
            for (query, wanted), values in zip(todo.items(), scored):
                fresh.update({(query, doc): float(v) for doc, v in zip(wanted, values)})
        out = [
            [fresh[(q, d)] if (q, d) in fresh else self._get((q, d)) for d in docs]
            for q, docs in zip(batch.queries, candidates)
        ]
        for key, value in fresh.items():
            self._put(key, value)
        return out, sum(len(v) for v in todo.values())

    def _get(self, key: tuple[str, str]) -> float:
        self.cache.move_to_end(key)
        return self.cache[key]

    def _put(self, key: tuple[str, str], value: float) -> None:
        self.cache[key] = value
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)


class BatchScorer(Protocol):
    """What the loop asks of a teacher: the batch with its candidates' scores, and the cost."""

    kind: str
    last: dict[str, Any]

    def annotate(self, batch: Batch, proc: ProcessInfo | None = None) -> Batch:
        """``batch`` with the :data:`~dualforge.data.TEACHER_SCORES` column."""
        ...


class QrelsTeacher:
    """Graded relevance as teacher scores (``loss.distill.teacher=qrels``): each candidate's
    training qrels grade, 0 for an unjudged document (mined negatives, mostly) or one without an
    id.

    Args:
        grades: Query id -> document id -> grade.
        in_batch: Grade every document of the batch for every query.
    """

    kind = QRELS_TEACHER

    def __init__(self, grades: Mapping[str, Mapping[str, int]], in_batch: bool = False) -> None:
        self.grades, self.in_batch = grades, in_batch
        self.last: dict[str, Any] = {}

    def annotate(self, batch: Batch, proc: ProcessInfo | None = None) -> Batch:
        """``batch`` with its candidates' grades (every rank looks them up: no model runs)."""
        every = grouped_documents(batch.positive_ids, batch.negative_ids)
        rows = []
        for qid, pid, nids in zip(batch.query_ids, batch.positive_ids, batch.negative_ids):
            judged = self.grades.get(qid, {}) if qid is not None else {}
            docs = every if self.in_batch else [pid, *nids]
            rows.append([float(judged.get(d, 0)) if d is not None else 0.0 for d in docs])
        self.last = {"teacher_pairs": sum(len(r) for r in rows)}
        return batch.with_column(TEACHER_SCORES, Column(rows, per_candidate=True))


def build_teacher(
    cfg: Config, device: torch.device, grades: Mapping[str, Mapping[str, int]] | None = None
) -> BatchScorer | None:
    """The in-loop teacher of ``loss.distill.teacher`` (None: none, or not a distillation);
    ``grades``: the training qrels, for ``qrels``."""
    loss = cfg.loss
    if not isinstance(loss, DistillLossConfig) or loss.distill.teacher is None:
        return None
    if loss.distill.teacher == QRELS_TEACHER:
        if grades is None:
            raise ConfigError("loss.distill.teacher='qrels' needs BEIR training data (data.format)")
        return QrelsTeacher(grades, loss.distill.in_batch)
    return load_teacher(
        loss.distill.teacher, device, loss.distill.teacher_batch_size, loss.distill.in_batch
    )


def load_teacher(
    name: str, device: torch.device, batch_size: int = 64, in_batch: bool = False
) -> Teacher:
    """The teacher in model folder ``name`` (its kind: :func:`~dualforge.modeling.kinds.
    kind_of_folder`), in eval mode on ``device``.

    Raises:
        ModelLoadError: No such folder, no weights, or a cross-encoder with several labels.
    """
    check_model_name(name)
    folder = resolve_model_path(name)
    kind = kind_of_folder(folder)
    if in_batch and kind is CROSS_ENCODER:
        raise ModelLoadError(
            name, "loss.distill.in_batch with a cross-encoder teacher would score B x B(1+K) "
            "pairs a step; use a bi-encoder or late-interaction teacher, or in_batch=false",
        )  # fmt: skip
    model = kind.load(folder).to(device).eval()
    return Teacher(kind.scorer(model, batch_size), kind.name, in_batch=in_batch)
