"""The training loop: one explicit function, read top to bottom.

load data -> build model, loss, engine, optimizer, miner -> (resume) -> evaluate before ->
for each step: batch, mine, collate, GradCache step, clip, optimizer step, log,
evaluate/checkpoint, your hooks -> evaluate after -> export model, report.json, summary.md.

You can drive it yourself: ``p = build_parts(cfg)``, ``state = resume_or_start(p)``, then
``train_steps(p, state, stop=..., hooks=[...])`` with your own stop condition (a wall-time
budget, say) and per-step hooks, or call :func:`training_step` and :func:`optimizer_step` from a
loop of your own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dualforge.config import Config, save_config
from dualforge.data import Batch, BatchSampler, EvalSet
from dualforge.eval import RetrievalReport
from dualforge.gradcache import StepResult
from dualforge.modeling import Model
from dualforge.train.cards import write_cards
from dualforge.train.checkpoint import TrainerState
from dualforge.train.collate import collate
from dualforge.train.distributed import barrier, broadcast_object, teardown
from dualforge.train.faults import InterruptedRunError, NonFiniteLossError, reported_faults
from dualforge.train.kinds import reload
from dualforge.train.losses import LossRegistry
from dualforge.train.parts import (
    Parts,
    StepInfo,
    build_parts,
    mining_encoder,
    seed_everything,
)
from dualforge.train.report import write_report
from dualforge.train.run_folder import own_run_folder
from dualforge.train.saving import checkpoint, export, resume_or_start, say

__all__ = [
    "NonFiniteLossError", "Parts", "RunResult", "StepHook", "StepInfo", "StopCondition",
    "batches", "build_parts", "mining_encoder", "optimizer_step", "resume_or_start",
    "seed_everything", "train", "train_steps", "training_step",
]  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced (every rank gets the same metrics)."""

    run_dir: Path
    steps: int
    seconds: float
    before: dict[str, Any] | None
    after: dict[str, Any]


StopCondition = Callable[[TrainerState], bool]
StepHook = Callable[[Parts, TrainerState, StepInfo], None]


def train(
    cfg: Config, *, hooks: Sequence[StepHook] = (), losses: LossRegistry | None = None
) -> RunResult:
    """Run the whole job described by ``cfg``; see the module docstring.

    Args:
        cfg: The run's config.
        hooks: Called after every step (after its logging, evaluation and checkpoint) with the
            parts, the new state and the step's :class:`StepInfo`.
        losses: The losses ``loss.name`` may name (default: dualforge's own).
    """
    started = time.perf_counter()
    p = build_parts(cfg, losses)
    try:
        with (
            own_run_folder(p.run_dir, cfg.run.resume, cfg.run.overwrite, p.proc),
            reported_faults(p.run_dir),
        ):
            return run_job(p, hooks, started)
    finally:
        if p.owns_group:
            teardown()


def run_job(p: Parts, hooks: Sequence[StepHook], started: float) -> RunResult:
    """:func:`train` after the parts are built: evaluate before, train, finish, report."""
    cfg = p.cfg
    if p.proc.main:
        # how this invocation treated the folder is not part of the run: its config resumes
        flags_off = replace(cfg.run, resume=False, overwrite=False)
        save_config(replace(cfg, run=flags_off), p.run_dir / "config.yaml")
    p.log.write(
        "start", steps=p.steps, examples=p.data.size, config=cfg.to_dict(),
        **p.resolved(),
    )  # fmt: skip
    for line in p.teacher.warnings if p.teacher is not None else ():
        say(p, f"warning: {line}")
    state = resume_or_start(p)
    before = None
    if cfg.eval.before and state.step == 0 and p.data.test is not None:
        before = evaluate(p, p.model, p.data.test).to_dict()
        p.log.write(
            "eval", step=0, split="test", metrics=before["metrics"],
            metrics_by_dim=before["metrics_by_dim"],
        )  # fmt: skip
    state = train_steps(p, state, hooks=hooks)
    after = finish(p, state)
    seconds = time.perf_counter() - started
    if p.proc.main:
        write_report(p.run_dir, cfg, before, after, state.step, seconds, p.resolved())
        write_cards(p, state, before, after)
    p.log.write("done", step=state.step, seconds=seconds)
    p.log.close()
    barrier()
    return RunResult(p.run_dir, state.step, seconds, before, after)


def batches(sampler: BatchSampler) -> Iterator[Batch]:
    """Endless batches, moving to the next epoch when one ends."""
    while True:
        yield from sampler
        sampler.set_epoch(sampler.epoch + 1)


def train_steps(
    p: Parts,
    state: TrainerState,
    *,
    stop: StopCondition | None = None,
    hooks: Sequence[StepHook] = (),
) -> TrainerState:
    """The step loop proper: from ``state.step`` until ``stop(state)`` is true.

    Args:
        p: The run's parts.
        state: Where training stands.
        stop: Checked before the first step and after each; default: ``p.steps`` steps done.
            The step at which it turns true is the last: it is logged, evaluated on dev and
            checkpointed as the run's last step.
        hooks: Called after each step's bookkeeping with ``(p, state, info)``.
    """
    done = stop or (lambda s: s.step >= p.steps)
    if done(state):
        return state
    show = p.cfg.run.progress and p.proc.main
    bar = tqdm(total=p.steps, initial=state.step, desc="train", disable=not show)
    try:
        return _steps(p, state, batches(p.sampler), bar, done, hooks)
    finally:
        bar.close()


def _steps(
    p: Parts, state: TrainerState, stream: Iterator[Batch], bar: Any, done: StopCondition,
    hooks: Sequence[StepHook],
) -> TrainerState:  # fmt: skip
    """The body of :func:`train_steps`: the steps until ``done``, each with its bookkeeping
    and hooks; Ctrl-C names the last step whose optimizer step was taken."""
    last = False
    try:
        while not last:
            state, info = _advance(p, state, stream, bar)
            last = done(state)
            state = bookkeeping(p, state, info, last)
            for hook in hooks:
                hook(p, state, info)
    except KeyboardInterrupt:
        raise InterruptedRunError(f"interrupted at step {state.step}") from None
    return state


def _advance(
    p: Parts, state: TrainerState, stream: Iterator[Batch], bar: Any
) -> tuple[TrainerState, StepInfo]:
    """One training step up to and including the optimizer step: the new state and the info."""
    tick = time.perf_counter()
    batch, mining_seconds = mine(p, next(stream), state.step + 1)
    if p.teacher_model is not None:
        batch = p.teacher_model.annotate(batch, p.proc)
    result = training_step(p, batch, state.step + 1)
    lr = float(p.scheduler.get_last_lr()[0])  # the rate this step trains at
    grad_norm = optimizer_step(p)
    state = replace(state, step=state.step + 1)
    info = step_info(p, state.step, result, grad_norm, lr, batch, tick, mining_seconds)
    if p.teacher_model is not None:
        info = replace(info, teacher=p.teacher_model.last)
    bar.set_postfix(loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}")
    bar.update(1)
    return state, info


def mine(p: Parts, batch: Batch, step: int) -> tuple[Batch, float]:
    """The batch with mined negatives (unchanged without a miner), and the seconds it took;
    a refresh of the miner's index is logged as a ``mining`` event."""
    if p.mine_batch is None:
        return batch, 0.0
    tick = time.perf_counter()
    batch, report = p.mine_batch(batch, step)
    if report is not None:
        p.log.write("mining", strategy=p.cfg.mining.strategy, **report.record())
    return batch, time.perf_counter() - tick


def step_info(
    p: Parts, step: int, result: StepResult, grad_norm: float, lr: float, batch: Batch,
    tick: float, mining_seconds: float,
) -> StepInfo:  # fmt: skip
    """What the step did, with the miner's telemetry and the run clock updated."""
    seconds = time.perf_counter() - tick
    mining: dict[str, Any] = {}
    if p.miner is not None:
        p.clock.add(seconds, mining_seconds)
        mining = {**p.clock.fields(), **p.miner.telemetry(step)}
    examples = len(batch.queries)
    return StepInfo(
        step, float(result.loss), result.parts, grad_norm, lr, examples, seconds, mining, batch
    )


def bookkeeping(p: Parts, state: TrainerState, info: StepInfo, last: bool) -> TrainerState:
    """Log the step, evaluate on dev and checkpoint when due (always on the last step)."""
    cfg = p.cfg
    if state.step % cfg.run.log_every == 0 or last:
        p.log.write("train", **info.record(p.sampler.epoch))
    if cfg.eval.every and p.data.dev is not None and (state.step % cfg.eval.every == 0 or last):
        state = dev_eval(p, state)
    if cfg.run.save_every and (state.step % cfg.run.save_every == 0 or last):
        checkpoint(p, state)
    return state


def training_step(p: Parts, batch: Batch, step: int) -> StepResult:
    """Collate and run one GradCache step (gradients left in ``.grad``); stop on a non-finite
    loss.

    Raises:
        NonFiniteLossError: The loss is NaN or infinite (logged as an ``error`` event).
    """
    cfg = p.cfg
    inputs = collate(
        p.model,
        batch,
        cfg.model.query_max_length,
        cfg.model.doc_max_length,
        p.data.known_positives,
        cfg.loss.mask_false_negatives,
        shard=(p.proc.rank, p.proc.world),
        step=step,
    ).to(p.device)
    result = p.gc.step(inputs.queries, inputs.documents, inputs.loss)
    loss = float(result.loss)
    if not math.isfinite(loss):
        p.log.write("error", step=step, loss=loss)
        raise NonFiniteLossError(
            f"the loss is {loss} at step {step}: training stopped (a lower optim.lr, or "
            "gradcache.precision=fp32, often helps)"
        )
    return result


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


def evaluate(p: Parts, model: Model, split: EvalSet) -> RetrievalReport:
    """``model`` on ``split``, encoded by every process (sharded), progress on rank 0 only."""
    report: RetrievalReport = p.kind.evaluate(
        model, split, p.cfg.eval, p.cfg.run.progress and p.proc.main, p.proc
    )
    return report


def dev_eval(p: Parts, state: TrainerState) -> TrainerState:
    """Evaluate on dev (every process, sharded); rank 0 saves the model as ``best/`` when the
    selection metric improves. Every rank leaves with rank 0's state."""
    if p.data.dev is None:
        return state
    report = evaluate(p, p.model, p.data.dev)
    p.model.train()
    p.log.write(
        "eval", step=state.step, split="dev", metrics=report.metrics,
        metrics_by_dim=report.metrics_by_dim,
    )  # fmt: skip
    score = report.metrics[p.cfg.eval.select_metric]
    if state.best_score is None or score > state.best_score:
        export(p, p.run_dir / "best")
        state = replace(state, best_score=score, best_step=state.step)
    state = broadcast_object(state, p.proc)
    barrier()
    return state


def finish(p: Parts, state: TrainerState) -> dict[str, Any]:
    """Export the final model (rank 0), reload the best one if dev selection ran, evaluate on
    test (every process, sharded)."""
    export(p, p.run_dir / "final")
    barrier()
    model = p.model
    if state.best_step is not None and (p.run_dir / "best").is_dir():
        model = reload(p.kind, p.run_dir / "best").to(p.device)
        p.log.write(
            "select", step=state.best_step, metric=p.cfg.eval.select_metric, score=state.best_score
        )
    if p.data.test is None:
        return {}
    after = evaluate(p, model, p.data.test).to_dict()
    p.log.write(
        "eval", step=state.step, split="test", metrics=after["metrics"],
        metrics_by_dim=after["metrics_by_dim"],
    )  # fmt: skip
    return after
