"""A JSONL metrics log: one JSON object per line, flushed as it is written."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO


class MetricsLog:
    """Append-only JSONL log of training events (``{"event": ..., "step": ..., ...}``).

    Args:
        path: File to append to; it and its folder are created at the first write.
        enabled: False makes every write a no-op (the processes other than rank 0).
    """

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh: TextIO | None = None
        self._start = time.time()

    def write(self, event: str, **fields: Any) -> None:
        """Append one record; non-finite floats are written as strings (valid JSON)."""
        if not self.enabled:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        record = {"event": event, "time": round(time.time() - self._start, 3), **fields}
        self._fh.write(json.dumps(_finite(record)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file if it was opened."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics log."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
