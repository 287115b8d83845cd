"""Labelled JSONL text sets, a label vocabulary built from train, and a stratified held-out split.

A labelled file has one JSON object per line with a text field and a label field (names are
configurable: for TREC-QC ``label`` is the fine label, ``coarse`` the coarse one). Bad records raise
a :class:`~dualforge.data.DataError` naming ``file:line: field``, or, with ``skip_bad=True``, are
skipped and counted like every loader in :mod:`dualforge.data`.

Labels that the vocabulary (built from the training file) does not know are, by default, an
error naming the first such line. With ``unseen="count"`` they are kept with id ``-1``: no head
can predict them, so they count as errors in every accuracy, and their number is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dualforge.data.errors import BadRecordCounter, DataError, make_counter
from dualforge.data.lines import iter_jsonl, string_field

Unseen = Literal["error", "count"]
UNSEEN_ID = -1


@dataclass(frozen=True)
class LabelledSet:
    """Texts and their string labels, with the line each came from.

    Attributes:
        path: The file read.
        texts: One text per example.
        labels: One label per example.
        lines: The 1-based line number of each example (for errors).
        label_field: The JSON field the labels came from.
    """

    path: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    lines: tuple[int, ...]
    label_field: str = "label"

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.texts)


def load_labelled(
    path: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    skip_bad: bool = False,
    counter: BadRecordCounter | None = None,
) -> LabelledSet:
    """Read a labelled JSONL file.

    Args:
        path: The file, one ``{text_field: str, label_field: str, ...}`` object per line.
        text_field: The field holding the text.
        label_field: The field holding the label.
        skip_bad: Skip and count bad records instead of raising.
        counter: Your own counter, to read the number skipped afterwards.

    Returns:
        The examples in file order.

    Raises:
        DataError: The file is missing, a line is not a JSON object, or a field is missing,
            not a string or empty (unless ``skip_bad``); or no example is left.
    """
    file = Path(path)
    bad = make_counter(skip_bad, counter)
    since = bad.count
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    for n, obj in iter_jsonl(file, bad):
        try:
            text = _non_empty(obj, text_field, file, n)
            label = _non_empty(obj, label_field, file, n)
        except DataError as err:
            bad.handle(err)
            continue
        texts.append(text)
        labels.append(label)
        lines.append(n)
    bad.report(f"records in {file}", since)
    if not texts:
        raise DataError(file, None, None, "no labelled examples")
    return LabelledSet(str(file), tuple(texts), tuple(labels), tuple(lines), label_field)


def _non_empty(obj: dict[str, object], key: str, path: Path, n: int) -> str:
    value = string_field(obj, key, path, n)
    if not value.strip():
        raise DataError(path, n, key, "empty")
    return value


def build_vocab(labels: Sequence[str]) -> tuple[str, ...]:
    """The sorted distinct labels (class ``i`` is ``vocab[i]``).

    Args:
        labels: Training labels.

    Returns:
        Sorted unique labels.
    """
    return tuple(sorted(set(labels)))


def encode_labels(
    data: LabelledSet, vocab: Sequence[str], unseen: Unseen = "error"
) -> torch.Tensor:
    """Class ids of ``data``'s labels under ``vocab``.

    Args:
        data: The examples.
        vocab: The label vocabulary (from the training file).
        unseen: ``"error"`` raises on a label missing from ``vocab``; ``"count"`` gives it id
            ``-1`` (always wrong when scored).

    Returns:
        ``(N,)`` int64 ids.

    Raises:
        DataError: A label is not in ``vocab`` and ``unseen="error"``; names file, line, field.
        ValueError: ``unseen`` is not one of ``"error"``, ``"count"``.
    """
    if unseen not in ("error", "count"):
        raise ValueError(f"unseen must be 'error' or 'count', got {unseen!r}")
    index = {label: i for i, label in enumerate(vocab)}
    ids = [index.get(label, UNSEEN_ID) for label in data.labels]
    if unseen == "error" and UNSEEN_ID in ids:
        k = ids.index(UNSEEN_ID)
        missing = sorted({lab for lab, i in zip(data.labels, ids) if i == UNSEEN_ID})
        message = (
            f"label {data.labels[k]!r} was not in the training labels "
            f"({len(missing)} unseen: {', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}; "
            "count them as errors with unseen='count')"
        )
        raise DataError(data.path, data.lines[k], data.label_field, message)
    return torch.tensor(ids, dtype=torch.long)


def stratified_split(
    targets: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split example indices into (fit, held-out), keeping class proportions.

    Each class puts ``round(fraction * n_c)`` of its ``n_c`` examples (chosen by a seeded shuffle)
    into the held-out part, but always leaves at least one in the fit part.

    Args:
        targets: ``(N,)`` class ids.
        fraction: Held-out share, ``0 <= fraction < 1``.
        seed: Seed of the shuffle.

    Returns:
        Sorted ``(N_fit,)`` and ``(N_held,)`` int64 indices; together a partition of ``0..N-1``.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)`` or ``targets`` not 1-D.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    if targets.dim() != 1:
        raise ValueError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=gen)  # (N,) random order
    held: list[torch.Tensor] = []
    for cls in torch.unique(targets).tolist():
        members = order[targets[order] == cls]  # (n_c,) this class, shuffled
        take = min(_round_half_up(fraction * len(members)), len(members) - 1)
        held.append(members[:take])
    held_idx = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.long)
    mask = torch.ones(len(targets), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)
