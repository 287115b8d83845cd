"""What a run holds while it trains (:class:`Parts`) and how it is built from a config.

``build_parts(cfg)`` places the run on its hardware: the device (``run.device``), the precision
(``gradcache.precision=auto`` resolved for that device), the threads, and, under torchrun, the
process group, the DDP wrapper and the Gradient Cache exchange (``train/distributed.py``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from dualforge.config import Config, ConfigError, DistillLossConfig
from dualforge.data import (
    Batch,
    BatchSampler,
    EpochBatchSampler,
    StreamingBatchSampler,
    TooFewExamplesError,
)
from dualforge.errors import UserError
from dualforge.gradcache import GradCache
from dualforge.gradcache.exchange import ProcessGroupExchange
from dualforge.hardware import PrecisionChoice, native_bf16, resolve_precision, thread_share
from dualforge.mining.policies import RefreshReport
from dualforge.modeling import Model
from dualforge.modeling.adapters import enable_checkpointing
from dualforge.train.checkpoint import Stateful
from dualforge.train.components import build_gradcache, build_model, tower_encoders
from dualforge.train.distill import TeacherSummary, summarize_teacher
from dualforge.train.distributed import ProcessInfo, setup
from dualforge.train.kinds import KINDS, Kind, kind_of
from dualforge.train.losses import LossRegistry, build_loss, default_losses
from dualforge.train.negatives import (
    Encode,
    NegativeMiner,
    Side,
    Targets,
    build_miner,
    load_checks,
)
from dualforge.train.replicas import STRATEGIES, Replicas, Single
from dualforge.train.run_data import RunData, load_run_data
from dualforge.train.schedule import build_optimizer, build_scheduler
from dualforge.train.shared_mining import MiningProtocol
from dualforge.train.state import GlobalRng, RankedRng, ReplicaModel, ReplicaOptimizer, RunClock
from dualforge.train.teacher import BatchScorer, build_teacher
from dualforge.train.tensorboard import FanOutLog, build_logs

MineBatch = Callable[[Batch, int], tuple[Batch, RefreshReport | None]]


@dataclass
class Parts:
    """Everything a run holds while it trains.

    ``miner`` is the index holder (rank 0 only under several processes); ``mine_batch`` fills a
    batch with negatives on this rank (``train/shared_mining.py``). ``device`` is where model,
    batches and loss live; ``proc`` is this process's place in the
    job (one process without torchrun); ``replicas`` how the processes hold the model (one
    process, DDP or FSDP2); ``precision`` the resolved autocast choice.
    """

    cfg: Config
    run_dir: Path
    model: Model
    data: RunData
    sampler: BatchSampler
    gc: GradCache
    scaler: torch.amp.GradScaler | None
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    log: FanOutLog
    steps: int
    replicas: Replicas
    miner: NegativeMiner | None = None
    clock: RunClock = field(default_factory=RunClock)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    proc: ProcessInfo = field(default_factory=ProcessInfo)
    precision: PrecisionChoice = field(
        default_factory=lambda: PrecisionChoice("fp32", "as configured")
    )
    owns_group: bool = False
    mine_batch: MineBatch | None = None
    kind: Kind = field(default_factory=lambda: KINDS["single_vector"])
    teacher: TeacherSummary | None = None
    teacher_model: BatchScorer | None = None

    def resolved(self) -> dict[str, Any]:
        """Choices made from ``auto`` settings on this machine (logged and reported)."""
        out: dict[str, Any] = {
            "device": str(self.device),
            "precision": self.precision.precision,
            "precision_reason": self.precision.reason,
            "processes": self.proc.world,
            "strategy": self.cfg.run.strategy if self.proc.world > 1 else "single",
            "threads": torch.get_num_threads(),
        }
        if self.precision.warning:
            out["precision_warning"] = self.precision.warning
        if self.miner is not None:
            out["mining_backend"] = self.miner.backend
        if self.teacher is not None:
            out["teacher"] = self.teacher.record()
        if self.teacher_model is not None:
            out["teacher_model"] = self.teacher_model.kind
        return out

    def components(self, rng_states: list[dict[str, Any]] | None = None) -> dict[str, Stateful]:
        """What a checkpoint saves and a resume restores, by name (the RNG last).

        Args:
            rng_states: Every rank's RNG state (gathered) when saving under several processes.
        """
        parts: dict[str, Stateful] = {
            "model": ReplicaModel(self.replicas),
            "optimizer": ReplicaOptimizer(self.replicas, self.optimizer),
            "scheduler": self.scheduler,
            "sampler": self.sampler,
        }
        if self.miner is not None:
            parts.update(miner=self.miner, clock=self.clock)
        if self.proc.world == 1 and rng_states is None:
            parts["rng"] = GlobalRng()
        else:
            parts["rng"] = RankedRng(self.proc.rank, self.cfg.run.seed, rng_states)
        return parts

    def restore_components(self) -> dict[str, Stateful]:
        """What a resume restores (the RNG of this rank, whatever world size saved it)."""
        parts = self.components()
        parts["rng"] = RankedRng(self.proc.rank, self.cfg.run.seed)
        return parts


@dataclass(frozen=True)
class StepInfo:
    """One finished step, as hooks and the metrics log see it.

    Attributes:
        step: The step just run (1-based).
        loss: Its loss (the full global batch's).
        parts: The loss's named parts (e.g. ``{"loss_by_dim": {...}}``).
        grad_norm: Gradient norm before clipping.
        lr: Learning rate the step trained at.
        examples: Queries in the (global) batch.
        seconds: Wall time of the step, mining included.
        mining: Miner telemetry and the run's mining/training seconds (empty without a miner).
        batch: The global batch the step trained on (mined negatives filled in).
        teacher: The in-loop teacher's cost (seconds, pairs, pairs not cached), else empty.
    """

    step: int
    loss: float
    parts: dict[str, Any]
    grad_norm: float
    lr: float
    examples: int
    seconds: float
    mining: dict[str, Any]
    batch: Batch
    teacher: dict[str, Any] = field(default_factory=dict)

    def record(self, epoch: int) -> dict[str, Any]:
        """Fields of the step's ``train`` event."""
        return {
            "step": self.step, "epoch": epoch, "loss": self.loss, "lr": self.lr,
            "grad_norm": self.grad_norm, "examples_per_s": self.examples / self.seconds,
            **self.parts, **self.mining, **self.teacher,
        }  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mining_encoder(model: Model, cfg: Config, device: torch.device | None = None) -> Encode:
    """``encode(texts, side)`` for the miner, in this process: no grad, at the mining batch size
    and lengths (late-interaction models: their pooled token vectors,
    :meth:`~dualforge.modeling.kinds.TokenVectors.one_per_text`), as a float32 tensor on
    ``device`` (the training device; single-vector models never leave it). Under several
    processes the mining protocol deals the texts out and gathers the tensors
    (``train/shared_mining.py``)."""
    lengths = {
        "query": cfg.model.query_max_length,
        "document": cfg.mining.doc_max_length or cfg.model.doc_max_length,
    }
    kind = kind_of(cfg.model).model

    def encode(texts: list[str], side: Side) -> torch.Tensor:
        out = kind.embed(model, texts, side, cfg.mining.encode_batch_size, lengths[side])
        return out.to(device or out.device)

    return encode


def place(cfg: Config) -> tuple[ProcessInfo, torch.device, bool]:
    """This process's place in the job and its device; threads set; seeds set (the run's seed:
    :func:`seed_ranks` makes them per rank once the model is built).

    Returns:
        The process info, the device, and whether this call started the process group.
    """
    proc = ProcessInfo.from_env()
    started = proc.world > 1 and not torch.distributed.is_initialized()
    device = setup(cfg.run.device, proc)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    elif proc.local_world > 1 and device.type == "cpu":
        torch.set_num_threads(thread_share(proc.local_world))
    seed_everything(cfg.run.seed)  # the same on every rank: the model's random parts agree
    return proc, device, started


def seed_ranks(cfg: Config, proc: ProcessInfo) -> None:
    """Under several processes, a torch seed per rank (once the model is built): dropout masks
    differ between ranks."""
    if proc.world > 1:
        torch.manual_seed(cfg.run.seed + proc.rank)


def choose_precision(cfg: Config, device: torch.device, proc: ProcessInfo) -> PrecisionChoice:
    """Resolve ``gradcache.precision`` for ``device``; print its warning once (rank 0)."""
    choice = resolve_precision(cfg.gradcache.precision, device.type, native_bf16(device))
    if choice.warning and proc.main:
        print(f"warning: {choice.warning}", file=sys.stderr)
    return choice


def check_eval_dims(cfg: Config, model_dim: int) -> None:
    """``eval.dims`` are prefixes of the model's vectors (token vectors for late interaction).

    Raises:
        ConfigError: A dim exceeds ``model_dim``.
    """
    if cfg.eval.dims and max(cfg.eval.dims) > model_dim:
        raise ConfigError(
            f"eval.dims={list(cfg.eval.dims)}: {max(cfg.eval.dims)} exceeds the model dim "
            f"{model_dim} (its embeddings have {model_dim} dims)"
        )


def build_sampler(cfg: Config, data: RunData) -> BatchSampler:
    """The batches of the run: over the examples held, or over the stream read per epoch.

    Raises:
        UserError: A stream of unknown length (JSON / CSV / arrow files) without
            ``optim.max_steps``.
    """
    common: dict[str, Any] = {
        "batch_size": cfg.optim.batch_size, "seed": cfg.run.seed,
        "positives": cfg.data.positives, "num_negatives": cfg.data.num_negatives,
        "require_negatives": cfg.data.num_negatives > 0,
    }  # fmt: skip
    try:
        return _sampler(cfg, data, common)
    except TooFewExamplesError as err:
        raise UserError(too_few_message(cfg, err)) from err


def too_few_message(cfg: Config, err: TooFewExamplesError) -> str:
    """What a user reads when the training data cannot fill one batch: how many there are,
    where they come from, and what to lower."""
    source = (
        f"{cfg.data.path}/qrels/{cfg.data.train_split}.tsv (rows with score > 0)"
        if cfg.data.format == "beir"
        else str(cfg.data.train_file)
    )
    if err.count == 0:
        return f"data: no training examples in {source}"
    lower = (
        f"lower optim.batch_size to at most {err.count}" if err.count else "lower optim.batch_size"
    )
    return (
        f"data: {err} (optim.batch_size={err.batch_size}) from {source}: {lower}, or add examples"
    )


def _sampler(cfg: Config, data: RunData, common: dict[str, Any]) -> BatchSampler:
    if data.stream is None:
        return EpochBatchSampler(data.examples, **common)
    if data.num_examples is None and cfg.optim.max_steps is None:
        raise UserError(
            f"data.streaming: the number of rows of {cfg.data.train_file} is not known before "
            "reading it (only saved datasets and parquet files tell): set optim.max_steps"
        )
    return StreamingBatchSampler(
        data.stream, **common, buffer_size=cfg.data.buffer_size, num_examples=data.num_examples
    )


def build_parts(cfg: Config, losses: LossRegistry | None = None) -> Parts:
    """Load data and model, place them on the run's device (and processes), and build sampler,
    loss (``loss.name`` looked up in ``losses``, default :func:`default_losses`), engine,
    optimizer and schedule (trains nothing)."""
    proc, device, started = place(cfg)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    data = load_run_data(cfg.data, cfg.run.seed)
    teacher = teacher_of(cfg, data)
    model = build_model(cfg.model).to(device)
    check_eval_dims(cfg, model.dim)
    seed_ranks(cfg, proc)
    if cfg.gradcache.checkpointing:
        enable_checkpointing(model)
    model.train()
    sampler = build_sampler(cfg, data)
    steps = cfg.optim.max_steps or cfg.optim.epochs * len(sampler)
    kind = kind_of(cfg.model)
    loss = build_loss(
        cfg.loss, losses or default_losses(), model_dim=model.dim,
        normalized=model.query_encoder.normalize, seed=cfg.run.seed, tokens=kind.tokens,
        device=device,
    )  # fmt: skip
    precision = choose_precision(cfg, device, proc)
    several = proc.world > 1
    if several and cfg.run.strategy == "fsdp" and cfg.model.projection == "pca":
        raise UserError(
            "model.projection='pca' with run.strategy='fsdp': the rotation is fitted on a full "
            "model; fit it first (dualforge rotate) and train the rotated folder, or use ddp"
        )
    replicas = STRATEGIES[cfg.run.strategy](model, device) if several else Single(model)
    # after the strategy: FSDP2 replaces the parameters by their shards
    optimizer = build_optimizer(model.named_parameters(), cfg.optim.lr, cfg.optim.weight_decay)
    scheduler = build_scheduler(optimizer, int(cfg.optim.warmup_ratio * steps), steps)
    gc, scaler = build_gradcache(
        tower_encoders(replicas.module), loss, cfg.gradcache, precision.precision, device,
        no_sync=replicas.no_sync if several else None,
        exchange=ProcessGroupExchange() if several else None,
        keep_graphs=0 if replicas.gathers_per_forward else None,
    )  # fmt: skip
    log = build_logs(cfg.run.loggers, run_dir, enabled=proc.main)
    miner, mine_batch = build_mining(cfg, model, data, proc, device)
    return Parts(
        cfg, run_dir, model, data, sampler, gc, scaler, optimizer, scheduler, log, steps,
        replicas, miner, device=device, proc=proc, precision=precision, owns_group=started,
        mine_batch=mine_batch, kind=kind, teacher=teacher,
        teacher_model=build_teacher(cfg, device, data.grades),
    )  # fmt: skip


def teacher_of(cfg: Config, data: RunData) -> TeacherSummary | None:
    """The teacher scores of a distillation run, checked (None for other losses, and for a
    stream, whose examples are checked as they come)."""
    if not isinstance(cfg.loss, DistillLossConfig) or data.stream is not None:
        return None
    if cfg.loss.distill.teacher is not None:  # scored in the loop
        return None
    return summarize_teacher(cfg.loss, data.examples, cfg.data.num_negatives)


def build_mining(
    cfg: Config, model: Model, data: RunData, proc: ProcessInfo, device: torch.device
) -> tuple[NegativeMiner | None, MineBatch | None]:
    """The miner (None without mining, and on every rank but 0 under several processes: the
    store is held once per job) and what fills a batch with negatives on this rank."""
    if not cfg.mining.active:
        return None, None
    encode = mining_encoder(model, cfg, device)
    checks = load_checks(cfg.mining.check_qrels)
    miner = None
    if proc.main:
        miner = build_miner(
            cfg.mining, encode, data.corpus, data.known_positives, cfg.run.seed,
            model.doc_encoder.normalize, str(device), checks,
        )  # fmt: skip
    if proc.world == 1:
        return miner, None if miner is None else miner.prepare
    targets = miner.corpus if miner is not None else Targets(data.corpus or {})
    protocol = MiningProtocol(
        proc, encode, targets, miner, cfg.mining.num_negatives, cfg.mining.timeout
    )
    return miner, protocol.prepare
