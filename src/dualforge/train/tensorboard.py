"""TensorBoard event files beside ``metrics.jsonl``, and the set of logs a run writes to.

:class:`TensorBoardLog` takes the records :class:`~dualforge.train.metrics_log.MetricsLog` takes
(``write(event, **fields)``) and writes their numbers as TensorBoard scalars;
:class:`FanOutLog` hands each record to several logs, so the loop keeps one ``p.log``;
:func:`build_logs` builds that set from the names of ``run.loggers``.

Tag scheme (one scalar per number of a record, at the record's ``step``):

- ``{event}/{field}``: ``train/loss``, ``train/lr``, ``train/grad_norm``,
  ``train/examples_per_s``, ``train/epoch``, miner telemetry (``train/staleness_mean``,
  ``train/mining_seconds``, ...), ``mining/encode_seconds``, ``done/seconds``, ``select/score``.
- A mapping adds one level per key: ``train/loss_by_dim/64``.
- A record with a text ``split`` puts it after the event: ``eval/dev/...``, ``eval/test/...``.
- ``metrics`` (``{metric: value}``) is unwrapped: ``eval/test/ndcg@10``; ``metrics_by_dim``
  (``{dim: {metric: value}}``) is turned round to put each dim under its metric:
  ``eval/test/ndcg@10/128``, next to that metric's full-dim curve.
- ``step`` is the x-axis (a record without one, e.g. ``start``, takes the last step written,
  0 at first); ``time`` is left out (event files hold the wall time); text, booleans, lists and
  None are skipped, except a ``config`` mapping, written as a text summary ``{event}/config``
  (YAML).

Tags keep the record's names as they are (``ndcg@10``, ``recall@100``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from dualforge.errors import UserError
from dualforge.train.metrics_log import MetricsLog

JSONL_FILE = "metrics.jsonl"
"""The JSONL log's file name under the run folder."""
TENSORBOARD_DIR = "tensorboard"
"""The event files' folder under the run folder."""
INSTALL_HINT = "pip install 'dualforge[tensorboard]'"
SKIPPED_FIELDS = frozenset({"step", "time", "split", "config"})
"""Fields that never become scalars (the x-axis, the wall time, the tag prefix, the text)."""


class EventLog(Protocol):
    """What the loop asks of a log (:class:`MetricsLog`, :class:`TensorBoardLog`, a fan-out)."""

    @property
    def enabled(self) -> bool:
        """False on the processes that write nothing (all but rank 0)."""
        ...

    def write(self, event: str, **fields: Any) -> None:
        """Record one event."""
        ...

    def close(self) -> None:
        """Release what the log holds open."""
        ...


class TensorBoardMissingError(UserError, ImportError):
    """``tensorboard`` logging was asked for and the tensorboard package is not installed."""


def summary_writer_class() -> type[Any]:
    """``torch.utils.tensorboard.SummaryWriter`` (imported here: an optional dependency).

    Raises:
        TensorBoardMissingError: The tensorboard package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise TensorBoardMissingError(
            f"run.loggers names 'tensorboard' but the tensorboard package is not installed: "
            f"{INSTALL_HINT}"
        ) from err
    writer: type[Any] = SummaryWriter
    return writer


def scalar_tags(event: str, fields: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one record, by tag (the scheme of the module docstring).

    Args:
        event: The record's event name (``train``, ``eval``, ...).
        fields: Its fields, as given to ``write``.

    Returns:
        ``{tag: value}`` in field order; empty when the record holds no number.
    """
    split = fields.get("split")
    prefix = f"{event}/{split}" if isinstance(split, str) and split else event
    out: dict[str, float] = {}
    for name, value in fields.items():
        if name in SKIPPED_FIELDS:
            continue
        if name == "metrics" and isinstance(value, Mapping):
            _flatten(prefix, value, out)
        elif name == "metrics_by_dim" and isinstance(value, Mapping):
            _flatten(prefix, by_metric(value), out)
        else:
            _flatten(f"{prefix}/{name}", value, out)
    return out


def by_metric(by_dim: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """``{dim: {metric: value}}`` turned round to ``{metric: {dim: value}}`` (order kept)."""
    out: dict[str, dict[str, Any]] = {}
    for dim, metrics in by_dim.items():
        if isinstance(metrics, Mapping):
            for metric, value in metrics.items():
                out.setdefault(str(metric), {})[str(dim)] = value
    return out


def _flatten(tag: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{tag}/{key}", inner, out)
    elif is_number(value):
        out[tag] = float(value)


def is_number(value: Any) -> bool:
    """A real number that is not a boolean (NumPy scalars included; NaN and inf count)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def record_step(fields: Mapping[str, Any], last: int) -> int:
    """The record's ``step`` when it has an integer one, else ``last``."""
    step = fields.get("step")
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return int(step)
    return last


def config_markdown(config: Mapping[str, Any]) -> str:
    """A config as a Markdown code block (indented YAML), for a text summary."""
    text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    return "\n".join(f"    {line}" for line in text.splitlines())


class TensorBoardLog:
    """TensorBoard event files of training events; the interface of :class:`MetricsLog`.

    Every process checks that tensorboard is installed (so all of them fail alike); the enabled
    one creates the folder and its event file at the first write. Each record is flushed to disk
    as it is written (as the JSONL log's lines are), so a run that dies keeps what it logged.

    Args:
        path: Folder of the event files (e.g. ``run_dir / "tensorboard"``).
        enabled: False makes every write a no-op (the processes other than rank 0).

    Raises:
        TensorBoardMissingError: The tensorboard package is not installed.
    """

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._writer_class = summary_writer_class()
        self._writer: Any = None
        self._step = 0

    def write(self, event: str, **fields: Any) -> None:
        """Write the record's numbers as scalars (and a ``config`` mapping as text)."""
        if not self.enabled:
            return
        self._step = record_step(fields, self._step)
        writer = self._open()
        for tag, value in scalar_tags(event, fields).items():
            writer.add_scalar(tag, value, self._step)
        config = fields.get("config")
        if isinstance(config, Mapping):
            writer.add_text(f"{event}/config", config_markdown(config), self._step)
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file if it was opened."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.path))
        return self._writer


class FanOutLog:
    """Several logs behind one: each record goes to every log, in order.

    Args:
        logs: The logs (e.g. a :class:`MetricsLog` and a :class:`TensorBoardLog`).
    """

    def __init__(self, logs: Iterable[EventLog]) -> None:
        self.logs: tuple[EventLog, ...] = tuple(logs)

    @property
    def enabled(self) -> bool:
        """Whether any of the logs writes."""
        return any(log.enabled for log in self.logs)

    @property
    def path(self) -> Path | None:
        """The JSONL file (of the first :class:`MetricsLog`), None without one."""
        return next((log.path for log in self.logs if isinstance(log, MetricsLog)), None)

    def write(self, event: str, **fields: Any) -> None:
        """Hand the record to every log."""
        for log in self.logs:
            log.write(event, **fields)

    def close(self) -> None:
        """Close every log."""
        for log in self.logs:
            log.close()


def _jsonl(run_dir: Path, enabled: bool) -> EventLog:
    return MetricsLog(run_dir / JSONL_FILE, enabled=enabled)


def _tensorboard(run_dir: Path, enabled: bool) -> EventLog:
    return TensorBoardLog(run_dir / TENSORBOARD_DIR, enabled=enabled)


LOGGERS: dict[str, Callable[[Path, bool], EventLog]] = {
    "jsonl": _jsonl,
    "tensorboard": _tensorboard,
}
"""``run.loggers`` names: ``jsonl`` (``run_dir/metrics.jsonl``), ``tensorboard``
(``run_dir/tensorboard/``)."""


def build_logs(names: Sequence[str], run_dir: str | Path, enabled: bool) -> FanOutLog:
    """The logs named by ``run.loggers``, behind one :class:`FanOutLog`.

    Args:
        names: Keys of :data:`LOGGERS`, each once (empty: a log that keeps nothing).
        run_dir: The run folder.
        enabled: False on the processes that write nothing (all but rank 0).

    Raises:
        ValueError: A name is unknown (the message lists the choices) or given twice.
        TensorBoardMissingError: ``tensorboard`` is named and the package is not installed.
    """
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger {unknown[0]!r}: choose from {list(LOGGERS)}")
    twice = sorted({name for name in names if list(names).count(name) > 1})
    if twice:
        raise ValueError(f"logger {twice[0]!r} is named twice")
    return FanOutLog(LOGGERS[name](Path(run_dir), enabled) for name in names)
