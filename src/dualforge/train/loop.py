"""The training loop: one explicit function, read top to bottom.

load data -> build model, loss, engine, optimizer -> (resume) -> evaluate before ->
for each step: collate, GradCache step, clip, optimizer step, log, evaluate/checkpoint ->
evaluate after -> export model, report.json, summary.md.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from dualforge.config import Config, save_config
from dualforge.data import Batch, EpochBatchSampler
from dualforge.gradcache import GradCache
from dualforge.losses import MatryoshkaLoss
from dualforge.modeling import DualEncoder, load_model, save_model
from dualforge.modeling.rotation import rotate_model
from dualforge.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dualforge.train.collate import collate
from dualforge.train.components import (
    build_gradcache,
    build_loss,
    build_model,
    projection_texts,
)
from dualforge.train.evaluation import evaluate_split
from dualforge.train.metrics_log import MetricsLog
from dualforge.train.negatives import NegativeMiner, build_miner
from dualforge.train.report import write_report
from dualforge.train.run_data import RunData, load_run_data
from dualforge.train.schedule import build_optimizer, build_scheduler


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped, the last checkpoint is intact."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    seconds: float
    before: dict[str, Any] | None
    after: dict[str, Any]


@dataclass
class Parts:
    """Everything a run holds while it trains."""

    cfg: Config
    run_dir: Path
    model: DualEncoder
    data: RunData
    sampler: EpochBatchSampler
    gc: GradCache
    scaler: torch.amp.GradScaler | None
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    log: MetricsLog
    steps: int
    miner: NegativeMiner | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_parts(cfg: Config) -> Parts:
    """Load data and model and build sampler, engine, optimizer and schedule (trains nothing)."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    data = load_run_data(cfg.data, cfg.run.seed)
    model = build_model(cfg.model)
    model.train()
    sampler = EpochBatchSampler(
        data.examples,
        batch_size=cfg.optim.batch_size,
        seed=cfg.run.seed,
        positives=cfg.data.positives,
        num_negatives=cfg.data.num_negatives,
        require_negatives=cfg.data.num_negatives > 0,
    )
    steps = cfg.optim.max_steps or cfg.optim.epochs * len(sampler)
    optimizer = build_optimizer(model.named_parameters(), cfg.optim.lr, cfg.optim.weight_decay)
    scheduler = build_scheduler(optimizer, int(cfg.optim.warmup_ratio * steps), steps)
    normalized = model.query_encoder.normalize
    loss = build_loss(cfg.loss, model.dim, normalized, cfg.run.seed)
    gc, scaler = build_gradcache(model, loss, cfg.gradcache, model.device)
    log = MetricsLog(run_dir / "metrics.jsonl")
    lengths = (cfg.model.query_max_length, cfg.model.doc_max_length)
    miner = build_miner(
        cfg.mining, model, data.corpus, data.known_positives, lengths, cfg.run.seed, log
    )
    return Parts(
        cfg, run_dir, model, data, sampler, gc, scaler, optimizer, scheduler, log, steps, miner
    )


def train(cfg: Config) -> RunResult:
    """Run the whole job described by ``cfg``; see the module docstring."""
    started = time.perf_counter()
    p = build_parts(cfg)
    save_config(cfg, p.run_dir / "config.yaml")
    p.log.write("start", steps=p.steps, examples=len(p.data.examples), config=cfg.to_dict())
    state = resume_or_start(p)
    before = None
    if cfg.eval.before and state.step == 0 and p.data.test is not None:
        before = evaluate_split(p.model, p.data.test, cfg.eval, cfg.run.progress).to_dict()
        p.log.write("eval", step=0, split="test", metrics=before["metrics"])
    state = train_steps(p, state)
    after = finish(p, state)
    seconds = time.perf_counter() - started
    write_report(p.run_dir, cfg, before, after, state.step, seconds)
    p.log.write("done", step=state.step, seconds=seconds)
    p.log.close()
    return RunResult(p.run_dir, state.step, seconds, before, after)


def resume_or_start(p: Parts) -> TrainerState:
    """Load the newest checkpoint when ``run.resume`` is set and one exists."""
    latest = latest_checkpoint(p.run_dir / "checkpoints") if p.cfg.run.resume else None
    if latest is None:
        start_projection(p)
        return TrainerState(step=0, sampler=p.sampler.state_dict())
    state = load_checkpoint(latest, p.model, p.optimizer, p.scheduler)
    p.sampler.load_state_dict(state.sampler)
    if p.miner is not None:
        p.miner.load(latest, state.mining)
    p.log.write("resume", step=state.step, checkpoint=str(latest))
    return state


def start_projection(p: Parts) -> None:
    """Fit the ``model.projection=pca`` rotation on sampled documents (fresh runs only; a
    resumed run gets its projection from the checkpoint)."""
    cfg = p.cfg.model
    if cfg.projection != "pca":
        return
    texts = projection_texts(p.data.corpus, p.data.examples, cfg.projection_docs, p.cfg.run.seed)
    rotate_model(p.model, texts, max_length=cfg.doc_max_length, show_progress=p.cfg.run.progress)
    p.log.write("projection", kind="pca", documents=len(texts))


def batches(sampler: EpochBatchSampler) -> Any:
    """Endless batches, moving to the next epoch when one ends."""
    while True:
        yield from sampler
        sampler.set_epoch(sampler.epoch + 1)


def train_steps(p: Parts, state: TrainerState) -> TrainerState:
    """The step loop proper: from ``state.step`` to ``p.steps``."""
    cfg = p.cfg
    bar = tqdm(total=p.steps, initial=state.step, desc="train", disable=not cfg.run.progress)
    stream = batches(p.sampler)
    while state.step < p.steps:
        tick = time.perf_counter()
        batch: Batch = next(stream)
        if p.miner is not None:
            batch = p.miner.prepare(batch, state.step + 1)
        loss = training_step(p, batch, state.step + 1)
        grad_norm = optimizer_step(p)
        state = replace(state, step=state.step + 1, sampler=p.sampler.state_dict())
        mined = {} if p.miner is None else p.miner.telemetry(state.step, time.perf_counter() - tick)
        rate = len(batch.queries) / (time.perf_counter() - tick)
        lr = p.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.1f}")
        bar.update(1)
        last = state.step == p.steps
        if state.step % cfg.run.log_every == 0 or last:
            p.log.write(
                "train",
                step=state.step,
                epoch=p.sampler.epoch,
                loss=loss,
                lr=lr,
                grad_norm=grad_norm,
                examples_per_s=rate,
                **loss_parts(p.gc.loss_fn),
                **mined,
            )
        if cfg.eval.every and p.data.dev is not None and (state.step % cfg.eval.every == 0 or last):
            state = dev_eval(p, state)
        if cfg.run.save_every and (state.step % cfg.run.save_every == 0 or last):
            miner = p.miner
            if miner is not None:
                state = replace(state, mining=miner.state_dict())
            save_checkpoint(
                p.run_dir / "checkpoints",
                p.model,
                p.optimizer,
                p.scheduler,
                state,
                cfg.run.keep_checkpoints,
                add_files=None if miner is None else miner.save,
            )
    bar.close()
    return state


def training_step(p: Parts, batch: Batch, step: int) -> float:
    """Collate and run one GradCache step; stop on a non-finite loss."""
    cfg = p.cfg
    inputs = collate(
        p.model,
        batch,
        cfg.model.query_max_length,
        cfg.model.doc_max_length,
        p.data.known_positives,
        cfg.loss.mask_false_negatives,
    )
    kwargs = {} if inputs.false_negatives is None else {"false_negatives": inputs.false_negatives}
    if isinstance(p.gc.loss_fn, MatryoshkaLoss):
        p.gc.loss_fn.reseed(step)
    loss = float(p.gc.step(inputs.queries, inputs.documents, **kwargs))
    if not math.isfinite(loss):
        p.log.write("error", step=step, loss=loss)
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}; training stopped. The last good checkpoint is "
            f"kept under {p.run_dir / 'checkpoints'} (resume with run.resume=true after a fix)"
        )
    return loss


def loss_parts(loss_fn: object) -> dict[str, Any]:
    """Per-dim loss values of a Matryoshka loss's last call, for the metrics log."""
    if isinstance(loss_fn, MatryoshkaLoss):
        return {"loss_by_dim": {str(m): v for m, v in loss_fn.last.items()}}
    return {}


def optimizer_step(p: Parts) -> float:
    """Unscale (fp16), clip, step, schedule, zero grads; return the pre-clip gradient norm."""
    if p.scaler is not None:
        p.scaler.unscale_(p.optimizer)
    max_norm = p.cfg.optim.max_grad_norm if p.cfg.optim.max_grad_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), max_norm)
    if p.scaler is not None:
        p.scaler.step(p.optimizer)
        p.scaler.update()
    else:
        p.optimizer.step()
    p.scheduler.step()
    p.optimizer.zero_grad(set_to_none=True)
    return float(norm)


def dev_eval(p: Parts, state: TrainerState) -> TrainerState:
    """Evaluate on dev; save the model as ``best/`` when the selection metric improves."""
    if p.data.dev is None:
        return state
    report = evaluate_split(p.model, p.data.dev, p.cfg.eval, p.cfg.run.progress)
    score = report.metrics[p.cfg.eval.select_metric]
    p.log.write("eval", step=state.step, split="dev", metrics=report.metrics)
    p.model.train()
    if state.best_score is not None and score <= state.best_score:
        return state
    save_model(p.model, p.run_dir / "best")
    return replace(state, best_score=score, best_step=state.step)


def finish(p: Parts, state: TrainerState) -> dict[str, Any]:
    """Export the final model, reload the best one if dev selection ran, evaluate on test."""
    save_model(p.model, p.run_dir / "final")
    model = p.model
    if state.best_step is not None and (p.run_dir / "best").is_dir():
        model = load_model(str(p.run_dir / "best"))
        p.log.write(
            "select", step=state.best_step, metric=p.cfg.eval.select_metric, score=state.best_score
        )
    if p.data.test is None:
        return {}
    after = evaluate_split(model, p.data.test, p.cfg.eval, p.cfg.run.progress).to_dict()
    p.log.write("eval", step=state.step, split="test", metrics=after["metrics"])
    return after
