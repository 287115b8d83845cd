"""The config sections: frozen dataclasses, one a part of a run (loading is in ``loading.py``).

Every section is a frozen dataclass that checks its own values in ``__post_init__``: choices are
``Literal`` types (each defined once, next to the code that uses it, or here when only the
training run uses it), numbers are checked against their domain, and cross-field rules hold.
Unknown keys, wrong types and bad values are :class:`ConfigError` s that name the key, e.g.
``loss.similarity='l2': must be one of ['dot', 'cos']``.
Classes of the library never see a config: the training loop reads it and passes plain values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dualforge.config.checks import ConfigError, _optional_at_least, _validate
from dualforge.config.loss import QRELS_TEACHER, DistillLossConfig, InfoNceConfig, LossConfig
from dualforge.config.mining import MiningConfig
from dualforge.config.model import ModelConfig
from dualforge.data.sampler import PositiveMode
from dualforge.hardware import Precision

DataFormat = Literal["beir", "jsonl", "tsv", "hf"]
DistStrategy = Literal["ddp", "fsdp"]
Logger = Literal["jsonl", "tensorboard"]  # train.tensorboard.LOGGERS builds them
SEED_LIMIT = 2**32  # NumPy seeds must lie in [0, 2**32)


@dataclass(frozen=True)
class ColumnsConfig:
    """Which columns of a Hugging Face dataset hold what (null: sentence-transformers' names are
    detected: ``anchor``/``query``/``question``, ``positive``, ``negative`` or
    ``negative_1..n``, and teacher scores ``scores`` / ``pos_scores`` / ``neg_scores``). Once
    ``query`` is set, detection is off: roles left null are not read. ``scores`` names a column
    of teacher scores aligned with ``[positive] + negatives`` (a sentence-transformers ``score``
    column, say: it is not detected, since ``score`` often holds a label or a margin)."""

    query: str | None = None
    positive: str | None = None
    negative: tuple[str, ...] = ()
    scores: str | None = None
    pos_scores: str | None = None
    neg_scores: str | None = None

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        named = (self.positive, self.scores, self.pos_scores, self.neg_scores)
        mapped = self.query is not None or any(c is not None for c in named) or bool(self.negative)
        complete = self.query is not None and self.positive is not None
        _validate(
            self,
            "data.columns",
            [(complete or not mapped, "query", "set with data.columns.positive (or neither)")],
        )

    def mapping(self) -> dict[str, str | list[str]] | None:
        """The ``columns=`` mapping of :func:`dualforge.data.load_hf_examples` (None: detect)."""
        if self.query is None or self.positive is None:
            return None
        out: dict[str, str | list[str]] = {"query": self.query, "positive": self.positive}
        if self.negative:
            out["negative"] = list(self.negative)
        for role in ("scores", "pos_scores", "neg_scores"):
            column = getattr(self, role)
            if column is not None:
                out[role] = column
        return out


@dataclass(frozen=True)
class DataConfig:
    """Training data: a BEIR folder, a JSONL / TSV file of training examples, or a Hugging Face
    dataset (``hf``).

    ``dev_fraction`` (when ``dev_split`` is null) holds out that fraction of the training queries
    as the dev set, 0 for none; ``dev_corpus_size`` 0 keeps the whole corpus for it.
    ``train_file`` (needed by ``jsonl`` / ``tsv`` / ``hf``) is checked with the paths, by
    :func:`dualforge.train.inputs.check_inputs`; for ``hf`` it is a ``save_to_disk`` folder (its
    ``train_split`` split when it holds several) or parquet / arrow / JSON / CSV files (a file, a
    folder or a glob), read with ``columns`` (:class:`ColumnsConfig`). ``streaming`` reads it
    without holding it (a shuffle buffer of ``buffer_size`` examples; ``positives: sample``).
    With ``jsonl``, ``tsv`` and ``hf``, ``path`` is the BEIR folder of the test split, if any,
    and ``corpus`` (a ``corpus.jsonl`` or a BEIR folder) the training corpus that mining draws
    from: JSONL ``positive_ids`` / ``negative_ids`` are looked up in it, and positives given as
    text are matched to its documents by exact text.
    """

    path: str = "../shared/data/scifact"
    format: DataFormat = "beir"
    train_file: str | None = None
    train_split: str = "train"
    dev_split: str | None = None
    dev_fraction: float = 0.1
    dev_corpus_size: int = 0
    test_split: str | None = "test"
    positives: PositiveMode = "sample"
    num_negatives: int = 0
    skip_bad: bool = False
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    streaming: bool = False
    buffer_size: int = 10_000
    corpus: str | None = None

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        hf = self.format == "hf"
        _validate(
            self,
            "data",
            [
                (0 <= self.dev_fraction < 1, "dev_fraction", "in [0, 1)"),
                (self.dev_corpus_size >= 0, "dev_corpus_size", ">= 0 (0: the whole corpus)"),
                (self.num_negatives >= 0, "num_negatives", ">= 0"),
                (self.buffer_size >= 1, "buffer_size", ">= 1"),
                (hf or not self.streaming, "streaming", "false unless data.format is 'hf'"),
                (
                    not self.streaming or self.positives == "sample",
                    "positives",
                    "'sample' with data.streaming",
                ),
            ],
        )


@dataclass(frozen=True)
class GradCacheConfig:
    """Gradient Cache settings (it is always on).

    ``keep_graphs``: the last K chunks of each tower keep their phase-1 graphs instead of being
    re-encoded (exact; 0 replays every chunk; more costs memory, saves forwards).
    ``precision``: autocast dtype of the encoders; ``auto`` is bf16 where the device runs it
    natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32 (:mod:`dualforge.hardware`).
    ``checkpointing``: non-reentrant activation checkpointing inside each transformer layer, so a
    replayed chunk holds one layer's activations instead of all (exact: the recomputation replays
    the RNG; costs one more forward per chunk).
    """

    chunk_size: int | None = 16
    token_budget: int | None = None
    sort_by_length: bool = True
    keep_graphs: int = 1
    precision: Precision = "auto"
    checkpointing: bool = False

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        bounded = self.chunk_size is not None or self.token_budget is not None
        _validate(
            self,
            "gradcache",
            [
                (_optional_at_least(self.chunk_size, 1), "chunk_size", ">= 1 or null"),
                (_optional_at_least(self.token_budget, 1), "token_budget", ">= 1 or null"),
                (bounded, "chunk_size", "set when gradcache.token_budget is null"),
                (self.keep_graphs >= 0, "keep_graphs", ">= 0 (0: replay every chunk)"),
            ],
        )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and decay; ``max_grad_norm`` 0 clips nothing, ``max_steps`` null
    runs ``epochs`` epochs."""

    batch_size: int = 128
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        _validate(
            self,
            "optim",
            [
                (self.batch_size >= 1, "batch_size", ">= 1"),
                (self.lr > 0, "lr", "> 0"),
                (self.weight_decay >= 0, "weight_decay", ">= 0"),
                (0 <= self.warmup_ratio <= 1, "warmup_ratio", "in [0, 1]"),
                (self.max_grad_norm >= 0, "max_grad_norm", ">= 0 (0: no clipping)"),
                (self.epochs >= 1, "epochs", ">= 1"),
                (_optional_at_least(self.max_steps, 1), "max_steps", ">= 1 or null"),
            ],
        )


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval evaluation settings.

    ``metrics`` are names like ``ndcg@10`` (:mod:`dualforge.eval.metrics`); ``select_metric``, one
    of them, picks the best dev checkpoint; ``every`` 0 evaluates the dev set only at the end.
    """

    metrics: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")
    select_metric: str = "ndcg@10"
    k: int = 100
    batch_size: int = 32
    dims: tuple[int, ...] = ()
    before: bool = True
    every: int = 0

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        _check_metric_names(self.metrics)
        listed = self.select_metric in self.metrics
        _validate(
            self,
            "eval",
            [
                (listed, "select_metric", f"one of eval.metrics {list(self.metrics)}"),
                (self.k >= 1, "k", ">= 1"),
                (self.batch_size >= 1, "batch_size", ">= 1"),
                (all(d >= 1 for d in self.dims), "dims", "positive prefix sizes"),
                (self.every >= 0, "every", ">= 0 (0: at the end only)"),
            ],
        )


def _device_name(spec: str) -> bool:
    """Whether ``spec`` names a device kind ``run.device`` accepts (availability is checked when
    the run starts)."""
    if spec in ("auto", "cpu", "cuda"):
        return True
    kind, _, index = spec.partition(":")
    return kind == "cuda" and index.isdigit()


def _check_metric_names(metrics: Sequence[str]) -> None:
    """Raise naming ``eval.metrics[i]`` unless every name parses (and there is one at least)."""
    from dualforge.eval.metrics import MetricName  # dualforge.eval loads the retrieval stack

    if not metrics:
        raise ConfigError("eval.metrics=[]: must name at least one metric")
    for i, name in enumerate(metrics):
        try:
            MetricName.parse(name)
        except ValueError as err:
            raise ConfigError(f"eval.metrics[{i}]={name!r}: {err}") from None


@dataclass(frozen=True)
class RunConfig:
    """Run bookkeeping: name, folder, seed, checkpoints, logging, device.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; under
    torchrun each process takes ``cuda:LOCAL_RANK``. ``threads`` 0: the machine's cores, split
    between the processes that share it. ``strategy``: how several processes train one model
    (``ddp``: replicated weights, one gradient all-reduce per step; ``fsdp``: FSDP2 shards of
    weights, gradients and optimizer state; chunks are all replayed, ``gradcache.keep_graphs`` is
    not used). ``loggers``: where rank 0 logs the run's events: ``jsonl`` (metrics.jsonl) and
    ``tensorboard`` (event files under tensorboard/, the ``tensorboard`` extra). A run folder
    (``output_dir/name``) that holds an earlier run's checkpoints, final/, best/ or report is
    refused unless ``resume`` (continue from its newest whole checkpoint) or ``overwrite``
    (delete that run's outputs first) is set.
    """

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 42
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    threads: int = 0
    device: str = "auto"
    strategy: DistStrategy = "ddp"
    loggers: tuple[Logger, ...] = ("jsonl",)

    def __post_init__(self) -> None:
        """Check values; errors name the key."""
        _validate(
            self,
            "run",
            [
                (bool(self.name), "name", "a folder name"),
                (0 <= self.seed < SEED_LIMIT, "seed", f"in [0, {SEED_LIMIT})"),
                (self.save_every >= 0, "save_every", ">= 0 (0: no checkpoints)"),
                (self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1"),
                (self.log_every >= 1, "log_every", ">= 1"),
                (self.threads >= 0, "threads", ">= 0 (0: all cores, shared between processes)"),
                (_device_name(self.device), "device", "auto, cpu, cuda or cuda:N"),
                (len(set(self.loggers)) == len(self.loggers), "loggers", "each logger once"),
                (not (self.resume and self.overwrite), "overwrite", "false with run.resume=true"),
            ],
        )


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=InfoNceConfig)
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
        if self.data.streaming and self.model.projection == "pca":
            raise ConfigError(
                "model.projection='pca' fits the rotation on held training documents; not with "
                "data.streaming (fit it first: dualforge rotate, or use 'identity')"
            )
        if self.mining.active and self.data.format != "beir" and self.data.corpus is None:
            raise ConfigError(
                f"mining.strategy={self.mining.strategy!r} needs a corpus to mine from: "
                f"data.format='beir', or data.corpus (a corpus.jsonl or BEIR folder) with "
                f"data.format={self.data.format!r}"
            )
        if isinstance(self.loss, DistillLossConfig):
            _check_distillation(self, self.loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly)."""
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out


def _check_distillation(cfg: Config, loss: DistillLossConfig) -> None:
    """A distillation loss reads teacher scores stored with each example's candidates.

    Raises:
        ConfigError: The data cannot carry them (BEIR qrels, mined negatives) or no negatives.
    """
    name = f"loss.name={loss.name!r}"
    teacher = loss.distill.teacher is not None
    if cfg.data.format == "beir" and not teacher:
        raise ConfigError(
            f"{name} needs teacher scores and data.format='beir' has none: give JSONL or a "
            "Hugging Face dataset with 'scores' (or 'pos_scores' / 'neg_scores'), or a "
            "teacher model (loss.distill.teacher)"
        )
    if cfg.mining.active and not teacher:
        raise ConfigError(
            f"{name} reads the teacher scores stored with each example's negatives; "
            f"mining.strategy={cfg.mining.strategy!r} replaces them by unscored ones (set "
            "loss.distill.teacher to score them in the loop)"
        )
    if loss.distill.teacher == QRELS_TEACHER and cfg.data.format != "beir":
        raise ConfigError(
            f"loss.distill.teacher='qrels' scores candidates by their qrels grades: data.format "
            f"must be 'beir', got {cfg.data.format!r}"
        )
    if loss.distill.in_batch and (not teacher or loss.name == "margin_mse"):
        raise ConfigError(
            "loss.distill.in_batch: the teacher scores every document of the batch in the loop; "
            "it needs loss.distill.teacher and loss.name='kl' (stored scores cover each "
            "example's own candidates)"
        )
    if cfg.data.num_negatives < 1 and not cfg.mining.active:
        raise ConfigError(
            f"{name} compares each query's candidates: set data.num_negatives >= 1 (the "
            "scored negatives drawn per query)"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
