"""Frozen dataclass configs, loaded from YAML with ``key.sub=value`` overrides.

Every section is a frozen dataclass; unknown keys and wrong types are errors that name the key.
Classes of the library never see a config: the training loop reads it and passes plain values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """Which encoder to fine-tune and how it reads text.

    ``projection``: None keeps the model's own output map; ``"identity"`` adds a trainable
    ``(D, D)`` linear layer after pooling; ``"pca"`` adds it initialised to the principal axes of
    ``projection_docs`` sampled training documents (an orthogonal rotation: full-dim scores are
    unchanged at step 0, and the leading coordinates hold the most; the start Matryoshka wants).
    """

    name: str = "minilm"
    tied: bool = True
    pooling: str | None = None
    normalize: bool | None = None
    query_max_length: int = 64
    doc_max_length: int = 256
    query_prefix: str | None = None
    doc_prefix: str | None = None
    attention_dropout: float | None = None
    projection: str | None = None
    projection_docs: int = 2048


@dataclass(frozen=True)
class DataConfig:
    """Training data: a BEIR folder, or a JSONL / TSV file of training examples."""

    path: str = "../shared/data/scifact"
    format: str = "beir"
    train_file: str | None = None
    train_split: str = "train"
    dev_split: str | None = None
    dev_fraction: float = 0.1
    dev_corpus_size: int = 0
    test_split: str | None = "test"
    positives: str = "sample"
    num_negatives: int = 0
    skip_bad: bool = False


@dataclass(frozen=True)
class MatryoshkaConfig:
    """Matryoshka nesting over the loss: on when ``enabled`` or ``dims`` is given.

    ``dims`` empty means powers of two from 32 up to the model dim, plus the model dim.
    ``renormalize`` None means: renormalise prefixes when the model outputs unit vectors.
    ``sample_dims`` 0 uses every dim at every step.
    """

    enabled: bool = False
    dims: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    renormalize: bool | None = None
    sample_dims: int = 0

    @property
    def active(self) -> bool:
        """Whether the loss is wrapped."""
        return self.enabled or bool(self.dims)


@dataclass(frozen=True)
class LossConfig:
    """Contrastive loss settings."""

    name: str = "info_nce"
    temperature: float = 0.05
    symmetric: bool = False
    similarity: str = "dot"
    mask_false_negatives: bool = True
    matryoshka: MatryoshkaConfig = field(default_factory=MatryoshkaConfig)


@dataclass(frozen=True)
class GradCacheConfig:
    """Gradient Cache settings (it is always on)."""

    chunk_size: int | None = 16
    token_budget: int | None = None
    sort_by_length: bool = True
    keep_last_graph: bool = True
    precision: str = "fp32"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and decay."""

    batch_size: int = 128
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval evaluation settings."""

    metrics: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")
    select_metric: str = "ndcg@10"
    k: int = 100
    batch_size: int = 32
    dims: tuple[int, ...] = ()
    before: bool = True
    every: int = 0


@dataclass(frozen=True)
class RunConfig:
    """Run bookkeeping: name, folder, seed, checkpoints, logging."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 42
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    resume: bool = False
    progress: bool = True
    threads: int = 0


STRATEGIES = ("in_batch", "static", "refresh", "oracle", "dynamic")
MINING_MODES = ("softmax", "topk")


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
    """

    strategy: str = "in_batch"
    mode: str = "softmax"
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
    correction: str = "residual"
    kernel: str = "rbf"
    backend: str = "auto"

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        checks = [
            (self.strategy in STRATEGIES, "strategy", f"one of {list(STRATEGIES)}"),
            (self.mode in MINING_MODES, "mode", f"one of {list(MINING_MODES)}"),
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
            (self.correction in ("residual", "plain"), "correction", "'residual' or 'plain'"),
            (self.kernel in ("linear", "rbf", "poly"), "kernel", "'linear', 'rbf' or 'poly'"),
            (self.backend in ("auto", "torch", "numba"), "backend", "'auto', 'torch' or 'numba'"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ConfigError(f"mining.{key}={getattr(self, key)!r}: must be {want}")

    @property
    def active(self) -> bool:
        """Whether negatives are mined."""
        return self.strategy != "in_batch"


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gradcache: GradCacheConfig = field(default_factory=GradCacheConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)

    def __post_init__(self) -> None:
        """Cross-section checks."""
        if self.mining.active and self.data.num_negatives > 0:
            raise ConfigError(
                f"mining.strategy={self.mining.strategy!r} mines the hard negatives itself; "
                f"set data.num_negatives=0 (got {self.data.num_negatives})"
            )
        if self.mining.active and self.data.format != "beir":
            raise ConfigError(
                f"mining.strategy={self.mining.strategy!r} needs a corpus to mine from: "
                f"data.format must be 'beir', got {self.data.format!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly)."""
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or defaults when ``path`` is None) and apply ``key.sub=value`` overrides.

    Relative paths in the config are relative to the working directory.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        raw = loaded
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Config, raw, where=str(path or "config"))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b] = value`` for ``"a.b=value"`` (value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 3e-5 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint in (float, str) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal config."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
