"""Training examples from Hugging Face datasets: ``save_to_disk`` folders and data files.

``path`` is a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: one
split is read), or parquet / arrow / json / jsonl / csv files: one file, a glob, or a folder
holding them (its top-level files, of one kind), read with ``datasets.load_dataset``.

Columns follow sentence-transformers: the query is ``anchor``, ``query`` or ``question``; the
positive is ``positive`` (a string, or a list of strings: several positives); negatives are
``negative`` (a string or a list) or ``negative_1`` .. ``negative_n`` (in numeric order). The
aliases of dualforge's JSONL format (``positives``/``pos``, ``negatives``/``neg``) are read too,
so a JSONL file of examples reads the same either way. Optional id columns: ``query_id``,
``positive_id(s)`` and ``negative_id(s)`` (aligned with the texts). Teacher scores are read
from ``scores`` (aligned with ``[positive] + negatives``) or ``pos_scores`` / ``neg_scores``; other
columns (``label``, ``score``...) are ignored. ``columns={"query": ..., "positive": ...,
"negative": ..., "scores": ...}`` replaces the detection (``negative`` may name several columns).

``datasets`` is an optional extra (``pip install 'dualforge[hf]'``), imported on first use.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from dualforge.data.errors import BadRecordCounter, DataError, make_counter
from dualforge.data.examples import TrainingExample
from dualforge.data.hf_columns import (
    DETECTED,
    QUERY_COLUMNS,
    ROLES,
    ColumnMap,
    HfColumns,
    RowError,
    hf_columns,
    parse_row,
)

__all__ = [
    "BUILDERS",
    "DETECTED",
    "HF_HINT",
    "QUERY_COLUMNS",
    "ROLES",
    "ColumnMap",
    "HfColumns",
    "RowError",
    "hf_columns",
    "hf_num_rows",
    "iter_hf_examples",
    "load_hf_examples",
    "open_hf_dataset",
    "parse_row",
    "require_datasets",
]

HF_HINT = "pip install 'dualforge[hf]'"
BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
}
"""The ``datasets.load_dataset`` builder of each data file suffix."""
_READ_BATCH = 256  # rows decoded from arrow at a time


def require_datasets(path: str | Path) -> ModuleType:
    """The ``datasets`` module; a :class:`DataError` naming ``path`` and the extra if missing."""
    try:
        import datasets
    except ImportError as err:
        message = f"reading Hugging Face datasets needs the datasets package: {HF_HINT}"
        raise DataError(path, None, None, message) from err
    module: ModuleType = datasets
    return module


def _data_files(path: str) -> list[str]:
    """The data files ``path`` names: a file, a glob, or a folder's top-level files."""
    if Path(path).is_file():
        return [path]
    if Path(path).is_dir():
        files = sorted(str(f) for f in Path(path).iterdir() if f.suffix.lower() in BUILDERS)
        if not files:
            message = f"not a save_to_disk folder and no {sorted(BUILDERS)} files in it"
            raise DataError(path, None, None, message)
        return files
    if not any(c in path for c in "*?["):
        raise DataError(path, None, None, "not found")
    files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
    if not files:
        raise DataError(path, None, None, "no files match")
    return files


def _builder(path: str, files: list[str]) -> str:
    """The ``datasets`` builder for ``files`` (all of one kind)."""
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds:
        odd = next(f for f in files if Path(f).suffix.lower() not in BUILDERS)
        message = f"cannot read {Path(odd).name!r}: use one of {sorted(BUILDERS)}"
        raise DataError(path, None, None, message)
    if len(kinds) > 1:
        raise DataError(path, None, None, f"files of several kinds {sorted(map(str, kinds))}")
    return str(kinds.pop())


def _one_split(path: str, split: str) -> None:
    """Refuse a split other than ``"train"`` where there is one split only."""
    if split != "train":
        message = f"split={split!r}, but only a DatasetDict folder has splits (this has one)"
        raise DataError(path, None, None, message)


def _saved(path: str, split: str, datasets: ModuleType) -> Any:
    """The split of a ``save_to_disk`` folder (memory-mapped, not read into memory), or None."""
    folder = Path(path)
    whole = (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    if not whole and not (folder / "dataset_dict.json").is_file():
        return None
    with _read_errors(path, "save_to_disk folder"):
        saved = datasets.load_from_disk(path)
    if whole:
        _one_split(path, split)
        return saved
    if split not in saved:
        raise DataError(path, None, None, f"no split {split!r}; splits: {sorted(saved)}")
    return saved[split]


def open_hf_dataset(
    path: str | Path,
    *,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | Path | None = None,
) -> Any:
    """Open a saved folder or data files as a ``datasets.Dataset`` (or ``IterableDataset``).

    Arguments as :func:`iter_hf_examples`.

    Returns:
        The dataset (a saved folder is memory-mapped, streaming or not).

    Raises:
        DataError: ``datasets`` is missing, the path is not found, the split is not there, or
            the files cannot be read.
    """
    where = str(path)
    datasets = require_datasets(where)
    saved = _saved(where, split, datasets) if Path(where).is_dir() else None
    if saved is not None:
        return saved
    files = _data_files(where)
    builder = _builder(where, files)
    _one_split(where, split)
    cache = None if cache_dir is None else str(cache_dir)
    with _read_errors(where, builder):
        return datasets.load_dataset(
            builder, data_files=files, split="train", streaming=streaming, cache_dir=cache
        )


@contextmanager
def _read_errors(path: str, builder: str) -> Iterator[None]:
    """Turn a ``datasets`` / ``pyarrow`` read failure into a one-line :class:`DataError`."""
    try:
        yield
    except Exception as err:
        import pyarrow
        from datasets.exceptions import DatasetsError

        if not isinstance(err, (DatasetsError, pyarrow.ArrowException)):
            raise
        lines = str(err.__cause__ or err).splitlines() or [type(err).__name__]
        raise DataError(path, None, None, f"cannot read as {builder}: {lines[0]}") from err


def _rows(dataset: Any, cols: HfColumns, where: str) -> Iterator[dict[str, Any]]:
    """The rows of ``dataset`` (its ``cols`` columns only), decoded a batch at a time."""
    names = cols.names()
    with _read_errors(where, "arrow"):
        for batch in dataset.select_columns(names).iter(batch_size=_READ_BATCH):
            for i in range(len(batch[names[0]])):
                yield {c: batch[c][i] for c in names}


def iter_hf_examples(
    path: str | Path,
    *,
    split: str = "train",
    columns: ColumnMap | None = None,
    skip_bad: bool = False,
    streaming: bool = False,
    counter: BadRecordCounter | None = None,
    cache_dir: str | Path | None = None,
) -> Iterator[TrainingExample]:
    """Stream training examples from a Hugging Face dataset (format: the module docstring).

    Nothing is read until the first example is asked for. With ``streaming=True`` data files
    are read as an ``IterableDataset`` (for sets that do not fit in memory or on disk twice);
    a ``save_to_disk`` folder is memory-mapped either way.

    Args:
        path: A ``save_to_disk`` folder, or data files (a file, a glob, a folder of them).
        split: The split of a ``DatasetDict`` folder; anything else has one split, read
            only as ``"train"``.
        columns: Role -> column name, replacing detection (see :func:`hf_columns`).
        skip_bad: Skip and count bad rows instead of raising.
        streaming: Read data files without converting them to arrow first.
        counter: Optional counter to read the number skipped from.
        cache_dir: Where ``load_dataset`` caches converted files (default: the HF cache).

    Yields:
        One example per valid row, in dataset order.

    Raises:
        DataError: A missing extra, path, split or column (whole-dataset problems always
            raise), or on the first bad row (:class:`RowError`), unless ``skip_bad``.
    """
    where, counter = str(path), make_counter(skip_bad, counter)
    start = counter.count
    dataset = open_hf_dataset(where, split=split, streaming=streaming, cache_dir=cache_dir)
    cols = hf_columns(list(dataset.column_names or ()), columns, where)
    for n, row in enumerate(_rows(dataset, cols, where)):
        try:
            example = parse_row(row, cols, where, n)
        except DataError as err:
            counter.handle(err)
            continue
        yield example
    counter.report(f"rows in {where}", start)


def load_hf_examples(
    path: str | Path,
    *,
    split: str = "train",
    columns: ColumnMap | None = None,
    skip_bad: bool = False,
    counter: BadRecordCounter | None = None,
    cache_dir: str | Path | None = None,
) -> list[TrainingExample]:
    """Load all examples of a Hugging Face dataset (format: :func:`iter_hf_examples`).

    Arguments as :func:`iter_hf_examples` (which this reads with ``streaming=False``).

    Returns:
        The examples, in dataset order.

    Raises:
        DataError: As :func:`iter_hf_examples`.
    """
    return list(
        iter_hf_examples(
            path, split=split, columns=columns, skip_bad=skip_bad, counter=counter,
            cache_dir=cache_dir,
        )
    )  # fmt: skip


def hf_num_rows(path: str | Path, *, split: str = "train") -> int | None:
    """The number of rows, when it is known without reading them: a ``save_to_disk`` folder
    or parquet files (their footers); None for json / csv / arrow files.

    Rows, not examples: with ``skip_bad`` the bad ones are dropped later.

    Args:
        path: As :func:`iter_hf_examples`.
        split: The split of a ``DatasetDict`` folder.

    Returns:
        The row count, or None.

    Raises:
        DataError: As :func:`open_hf_dataset`.
    """
    where = str(path)
    datasets = require_datasets(where)
    saved = _saved(where, split, datasets) if Path(where).is_dir() else None
    if saved is not None:
        return int(saved.num_rows)
    files = _data_files(where)
    builder = _builder(where, files)
    _one_split(where, split)
    if builder != "parquet":
        return None
    import pyarrow.parquet

    with _read_errors(where, "parquet"):
        return sum(int(pyarrow.parquet.ParquetFile(f).metadata.num_rows) for f in files)
