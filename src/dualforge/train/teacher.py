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

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dualforge.config import Config, DistillLossConfig
from dualforge.data import TEACHER_SCORES, Batch, Column
from dualforge.modeling import DualEncoder, LateInteractionModel, load_model
from dualforge.modeling.late_io import is_late_folder, load_late_model
from dualforge.modeling.names import ModelLoadError, check_model_name, resolve_model_path
from dualforge.train.distributed import ProcessInfo, gather_objects

PairScorer = Callable[[Sequence[str], Sequence[Sequence[str]]], list[list[float]]]
"""``score(queries, candidates) -> scores``: one list of scores per query, aligned with its
candidates."""
CAPACITY = 1 << 20  # cached (query, candidate) scores


class Teacher:
    """Scores batches' candidates with a :data:`PairScorer`, caching each pair's score.

    Args:
        score: The teacher's scorer.
        kind: What the teacher is (``bi_encoder``, ``late_interaction``, ``cross_encoder``).
        capacity: Cached pairs at most.
    """

    def __init__(self, score: PairScorer, kind: str, capacity: int = CAPACITY) -> None:
        self.score, self.kind, self.capacity = score, kind, capacity
        self.cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.last: dict[str, Any] = {}

    def annotate(self, batch: Batch, proc: ProcessInfo | None = None) -> Batch:
        """``batch`` with the :data:`~dualforge.data.TEACHER_SCORES` column of its candidates
        ``[positive] + negatives`` (this rank's rows scored, all ranks' gathered)."""
        tick = time.perf_counter()
        world, rank = (proc.world, proc.rank) if proc is not None else (1, 0)
        share = len(batch) // world
        mine = batch.take(slice(rank * share, (rank + 1) * share)) if world > 1 else batch
        local, fresh = self._scores(mine)
        rows: list[list[float]] = local
        if world > 1 and proc is not None:
            rows = [r for part in gather_objects(local, proc) for r in part]
        self.last = {
            "teacher_seconds": time.perf_counter() - tick,
            "teacher_pairs": sum(len(r) for r in local),
            "teacher_scored": fresh,
        }
        return batch.with_column(TEACHER_SCORES, Column(rows, per_candidate=True))

    def _scores(self, batch: Batch) -> tuple[list[list[float]], int]:
        """Scores of ``batch``'s candidates and how many pairs were scored (not cached)."""
        candidates = [[p, *n] for p, n in zip(batch.positives, batch.negatives)]
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


def bi_encoder_scorer(model: DualEncoder, batch_size: int = 64) -> PairScorer:
    """Dot products of the model's query and document embeddings (cosine when it normalises)."""

    def score(queries: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        docs = list(dict.fromkeys(d for row in candidates for d in row))
        where = {d: i for i, d in enumerate(docs)}
        q = model.encode(list(queries), "query", batch_size)  # (Q, D)
        d = model.encode(docs, "document", batch_size)  # (N, D)
        return [[float(q[i] @ d[where[c]]) for c in row] for i, row in enumerate(candidates)]

    return score


def late_scorer(model: LateInteractionModel, batch_size: int = 32) -> PairScorer:
    """MaxSim of the model's query and document token vectors."""

    def score(queries: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        docs = list(dict.fromkeys(d for row in candidates for d in row))
        where = {d: i for i, d in enumerate(docs)}
        q = model.encode(list(queries), "query", batch_size)  # [(Tq, D)]
        d = model.encode(docs, "document", batch_size)  # [(Td, D)]
        return [
            [float((q[i] @ d[where[c]].T).max(axis=1).sum()) for c in row]
            for i, row in enumerate(candidates)
        ]

    return score


def cross_encoder_scorer(
    model: Any, tokenizer: Any, batch_size: int = 32, max_length: int = 512
) -> PairScorer:
    """The one-label logit of a sequence-classification model on each ``(query, candidate)``."""
    device = next(model.parameters()).device

    def score(queries: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        pairs = [(q, c) for q, row in zip(queries, candidates) for c in row]
        values: list[float] = []
        with torch.no_grad():
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True,
                                truncation=True, max_length=max_length, return_tensors="pt")  # fmt: skip
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits  # (b, 1)
                values.extend(logits[:, 0].float().cpu().tolist())
        it = iter(values)
        return [[next(it) for _ in row] for row in candidates]

    return score


def is_cross_encoder_folder(folder: str) -> bool:
    """Whether ``folder`` holds a sequence-classification transformer (a cross-encoder)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def build_teacher(cfg: Config, device: torch.device) -> Teacher | None:
    """The in-loop teacher of ``loss.distill.teacher`` (None: none, or not a distillation)."""
    loss = cfg.loss
    if not isinstance(loss, DistillLossConfig) or loss.distill.teacher is None:
        return None
    return load_teacher(loss.distill.teacher, device, loss.distill.teacher_batch_size)


def load_teacher(name: str, device: torch.device, batch_size: int = 64) -> Teacher:
    """The teacher in model folder ``name`` (see the module docstring), in eval mode on
    ``device``.

    Raises:
        ModelLoadError: No such folder, no weights, or a cross-encoder with several labels.
    """
    check_model_name(name)
    folder = resolve_model_path(name)
    if is_late_folder(folder):
        late = load_late_model(folder).to(device).eval()
        return Teacher(late_scorer(late, batch_size), "late_interaction")
    if is_cross_encoder_folder(folder):
        return Teacher(_cross_encoder(folder, device, batch_size), "cross_encoder")
    bi = load_model(folder).to(device).eval()
    return Teacher(bi_encoder_scorer(bi, batch_size), "bi_encoder")


def _cross_encoder(folder: str, device: torch.device, batch_size: int) -> PairScorer:
    """The scorer of a cross-encoder folder (transformers' sequence classification)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
    if model.config.num_labels != 1:
        raise ModelLoadError(
            folder,
            f"a cross-encoder teacher needs one label (a score), it has {model.config.num_labels}",
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    limit = min(512, getattr(tokenizer, "model_max_length", 512) or 512)
    return cross_encoder_scorer(model, tokenizer, batch_size, limit)
