"""Negative mining while training MiniLM on SciFact: drift, gradient error, end-to-end quality.

    (c) drift       Train (in-batch negatives) and, at a few steps, re-encode every target of a
                    corpus subset: mean relative error to the fresh embeddings of the step-0
                    (stale) embeddings, of their Nyström correction from 1% / 5% landmarks
                    re-encoded at that step (plain and residual map, error on non-landmarks),
                    and of the dynamic strategy's chained estimate (a residual Nyström update
                    every --dynamic-every steps).
    (d) gradient    At the same steps: gradient of the full-softmax InfoNCE loss w.r.t. fresh
                    query embeddings over all targets with fresh embeddings (exact; the query's
                    other labelled positives masked, as the training loss does), against
                    its estimate from K negatives per query drawn from softmax(q·v / τ) over
                    each strategy's target vectors v (static: step 0; refresh: last full
                    re-encode every --refresh-every steps; dynamic: chained Nyström; oracle:
                    fresh) or in-batch (the other K positives of a batch of K + 1 queries).
                    Scores of the drawn negatives use fresh embeddings (a training batch
                    re-encodes them). Two estimators: "is" (sampled softmax with importance
                    weights exp(s/τ) / (K·Q), consistent when Q is the true softmax) and
                    "plain" (InfoNCE over [pos, negatives], what training optimises).
                    Relative L2 (Frobenius over queries), mean over --draws draws ("is",
                    "plain"), and of the mean estimate over the draws ("is_mean",
                    "plain_mean"). Without sampling noise: "expected" is the full-softmax
                    gradient with the probabilities taken from the strategy's vectors (the
                    infinite-K limit of training on its negatives), "expected_fresh_pos" the
                    same with the positive's logit from its fresh vector (a training batch
                    encodes the positive; only the negatives come from the index), "tv" the
                    total variation between the strategy's softmax and the fresh one (mean over
                    queries). With --recent R, each dynamic chain also runs a "+recent" variant
                    that re-encodes up to R positives of the batches since its last update, as
                    the miner's mining.recent does.
    (e) end to end  SciFact test nDCG@10 after training each strategy for the same wall time
                    (--budget seconds, mining included; linear decay over 1000 steps, so the
                    learning rate is nearly constant), from configs/scifact-minilm-dynamic.yaml;
                    documents truncated to --doc-len tokens in training and evaluation, and to
                    --mine-len when encoded for the index.

Commands (writes bench/out/mining_train_cd.json and mining_train_e.json):

    nice -n 19 python bench/mining_train.py --part cd
    nice -n 19 python bench/mining_train.py --part e --budget 480
    python bench/mining_train.py --part sweep --vectors V.npz   # (c) offline, after cd --save-vectors V.npz
    python bench/mining_grad.py --vectors V.npz                 # (d) by estimator and K, offline
    python bench/mining_train.py --part cd --quick --workdir /tmp/q --out /tmp/q/cd.json  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import CONFIGS, OUT, parse_args, quick_scifact
from dualforge.config import load_config
from dualforge.mining import choose_landmarks, correct_drift, drift_error
from dualforge.mining.policies import DriftParams, DynamicPolicy, TargetVectors, refresh
from dualforge.mining.stores import StoreParams, StoreSpec
from dualforge.train.checkpoint import TrainerState
from dualforge.train.evaluation import evaluate_split
from dualforge.train.loop import StepInfo, build_parts, resume_or_start, train_steps

CONFIG = CONFIGS / "scifact-minilm-dynamic.yaml"
# Smoke-test sizes (--quick, on the SciFact cut of _common.quick_scifact): seconds per part.
QUICK = {
    "steps": 2, "measure": [2], "refresh_every": 2, "dynamic_every": 1, "landmarks": [0.05],
    "recent": 4, "corpus_size": 48, "queries": 16, "doc_len": 32, "mine_len": 32, "batch": 4,
    "k": 8, "k_train": 2, "draws": 2, "budget": 1.0, "strategies": ["in_batch", "dynamic"],
    "sweep_landmarks": [0.05, 0.2], "ridges": [0.1], "threads": 1,
}  # fmt: skip


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


# Kernel and ridge of the (c)/(d) Nyström maps (set from --kernel / --ridge in main).
FIT: dict[str, Any] = {"kernel": "linear", "ridge": 1e-3}


def nystrom(stale: np.ndarray, rows: np.ndarray, fresh: np.ndarray, residual: bool) -> np.ndarray:
    """Unit-normalised Nyström estimate of every target from re-encoded ``rows``."""
    return unit(correct_drift(stale, rows, fresh, residual=residual, **FIT))


# ---- (d) gradient estimators -----------------------------------------------------------------


def mask_other_positives(
    logits: torch.Tensor, pos: torch.Tensor, known: torch.Tensor
) -> torch.Tensor:
    """``(Q, N)`` logits with each query's known positives other than ``pos`` at ``-inf`` (as the
    training loss masks them)."""
    other = known.clone()
    other[torch.arange(len(pos)), pos] = False
    return logits.masked_fill(other, float("-inf"))


def softmax_gradient(
    logits: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, tau: float
) -> torch.Tensor:
    """``(Q, d)`` d/dq of the InfoNCE loss whose softmax over targets ``t`` has these logits."""
    return (torch.softmax(logits, dim=1) @ t - t[pos]) / tau


def exact_gradient(
    q: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, known: torch.Tensor, tau: float
) -> torch.Tensor:
    """``(Q, d)`` d/dq of ``-log softmax(q·t / τ)[pos]`` over all targets but the query's other
    known positives (masked, as in training)."""
    return softmax_gradient(mask_other_positives(q @ t.T / tau, pos, known), t, pos, tau)


def expected_gradient(
    q: torch.Tensor, v: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, known: torch.Tensor,
    tau: float,
) -> torch.Tensor:  # fmt: skip
    """The full-softmax gradient with probabilities from vectors ``v`` and fresh targets ``t``:
    what training follows in expectation when its negatives come from softmax(q·v / τ)."""
    return softmax_gradient(mask_other_positives(q @ v.T / tau, pos, known), t, pos, tau)


def estimate(
    q: torch.Tensor,
    t: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    logq: torch.Tensor | None,
    tau: float,
) -> torch.Tensor:
    """Gradient estimate from negatives ``neg`` (Q, K); ``logq`` (Q, K) log proposal (None: plain)."""
    tn = t[neg]  # (Q, K, d)
    s_pos = (q * t[pos]).sum(1, keepdim=True) / tau
    s_neg = torch.einsum("qd,qkd->qk", q, tn) / tau
    if logq is not None:
        s_neg = s_neg - logq - np.log(neg.shape[1])
    w = torch.softmax(torch.cat([s_pos, s_neg], dim=1), dim=1)  # (Q, 1 + K)
    mean = w[:, :1] * t[pos] + torch.einsum("qk,qkd->qd", w[:, 1:], tn)
    return (mean - t[pos]) / tau


def fresh_positive_logits(
    q: torch.Tensor, v: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, known: torch.Tensor,
    tau: float,
) -> torch.Tensor:  # fmt: skip
    """``(Q, N)`` logits ``q·v / τ``, except each query's own positive, scored with its fresh
    vector ``t[pos]``; the query's other known positives at ``-inf``."""
    logits = q @ v.T / tau
    logits[torch.arange(len(pos)), pos] = (q * t[pos]).sum(1) / tau
    return mask_other_positives(logits, pos, known)


def expected_fresh_positive(
    q: torch.Tensor, v: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, known: torch.Tensor,
    tau: float,
) -> torch.Tensor:  # fmt: skip
    """As :func:`expected_gradient`, but each query's own positive is scored with its fresh
    vector: a training batch encodes the positive with the current model, only the negatives
    come from ``v`` (other queries' positives among them)."""
    return softmax_gradient(fresh_positive_logits(q, v, t, pos, known, tau), t, pos, tau)


def proposal(q: torch.Tensor, v: torch.Tensor, known: torch.Tensor, tau: float) -> torch.Tensor:
    """``(Q, N)`` log softmax of ``q·v / τ`` with known positives removed."""
    logits = (q @ v.T / tau).masked_fill(known, float("-inf"))
    return torch.log_softmax(logits, dim=1)


def grad_errors(
    q: torch.Tensor, fresh: torch.Tensor, pos: torch.Tensor, known: torch.Tensor,
    vectors: dict[str, torch.Tensor], args: argparse.Namespace,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Relative L2 error of each strategy's gradient estimate, IS-weighted and plain."""
    tau, gen = args.tau, torch.Generator().manual_seed(0)
    g = exact_gradient(q, fresh, pos, known, tau)
    out: dict[str, dict[str, float]] = {}
    exact = proposal(q, fresh, known, tau).exp()
    for name, v in vectors.items():
        logq = proposal(q, v, known, tau)
        limit = expected_gradient(q, v, fresh, pos, known, tau)
        errs: dict[str, list[float]] = {"is": [], "plain": []}
        sums = {"is": torch.zeros_like(g), "plain": torch.zeros_like(g)}
        for _ in range(args.draws):
            neg = torch.multinomial(logq.exp(), args.k, replacement=True, generator=gen)
            for kind, lq in (("is", logq.gather(1, neg)), ("plain", None)):
                est = estimate(q, fresh, pos, neg, lq, tau)
                sums[kind] += est / args.draws
                errs[kind].append(float(torch.linalg.norm(est - g) / torch.linalg.norm(g)))
        out[name] = {k: float(np.mean(e)) for k, e in errs.items()}
        for k, mean in sums.items():  # error of the mean over draws: the bias part
            out[name][f"{k}_mean"] = float(torch.linalg.norm(mean - g) / torch.linalg.norm(g))
        out[name]["expected"] = float(torch.linalg.norm(limit - g) / torch.linalg.norm(g))
        limit = expected_fresh_positive(q, v, fresh, pos, known, tau)
        out[name]["expected_fresh_pos"] = float(torch.linalg.norm(limit - g) / torch.linalg.norm(g))
        out[name]["tv"] = float(0.5 * (logq.exp() - exact).abs().sum(1).mean())
    out["in_batch"] = in_batch_errors(q, fresh, pos, known, g, args)
    return out


def in_batch_errors(
    q: torch.Tensor, fresh: torch.Tensor, pos: torch.Tensor, known: torch.Tensor, g: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, float]:  # fmt: skip
    """In-batch negatives: the other positives of random batches of ``K + 1`` queries."""
    rng = np.random.default_rng(0)
    n, size = fresh.shape[0], args.k + 1
    errs: dict[str, list[float]] = {"is": [], "plain": []}
    for _ in range(args.draws):
        order = torch.as_tensor(rng.permutation(q.shape[0]))
        est = {"is": torch.zeros_like(g), "plain": torch.zeros_like(g)}
        for lo in range(0, q.shape[0] - size + 1, size):
            b = order[lo : lo + size]
            others = pos[b].repeat(len(b), 1)  # (B, B): row i lists every positive of the batch
            keep = ~torch.eye(len(b), dtype=torch.bool)
            neg = others[keep].view(len(b), len(b) - 1)
            n_free = n - known[b].sum(1, keepdim=True)
            logq = -torch.log(n_free.double()).expand_as(neg)
            for kind, lq in (("is", logq), ("plain", None)):
                est[kind][b] = estimate(q[b], fresh, pos[b], neg, lq, args.tau)
        done = order[: q.shape[0] // size * size]  # queries in full batches
        for kind in errs:
            diff = torch.linalg.norm(est[kind][done] - g[done]) / torch.linalg.norm(g[done])
            errs[kind].append(float(diff))
    return {k: float(np.mean(e)) for k, e in errs.items()}


# ---- (c) + (d): one training run with measurements ---------------------------------------------


def subset(corpus: dict[str, str], judged: set[str], size: int, seed: int) -> list[str]:
    """All judged documents plus seeded random others, ``size`` in all (sorted ids)."""
    others = sorted(set(corpus) - judged)
    random.Random(seed).shuffle(others)
    return sorted(judged & set(corpus)) + others[: max(0, size - len(judged))]


class Chain:
    """One dynamic chain, run by the library's :class:`DynamicPolicy` as the miner runs it: every
    ``--dynamic-every`` steps re-encode the landmarks (and, for a ``+recent`` chain, up to
    ``--recent`` positives of the batches since its last update), residual-Nyström-correct the
    other targets, write the re-encoded ones exactly (no held-out rows: the bench measures on
    every target)."""

    def __init__(self, v0: np.ndarray, fraction: float, recent: int, every: int) -> None:
        drift = DriftParams(landmarks=fraction, holdout=0, recent=recent, **FIT)
        self.policy = DynamicPolicy(every, drift, seed=0)
        self.targets = TargetVectors.empty(len(v0), StoreSpec("tree", StoreParams(16, 64, 0)))
        refresh(self.policy, 0, self.targets, lambda rows: torch.from_numpy(v0[rows]))

    def update(self, step: int, encode: Any) -> None:
        """One Nyström update at ``step`` (``encode(rows)``: their fresh vectors)."""
        refresh(self.policy, step, self.targets, lambda rows: torch.as_tensor(encode(rows)))

    def vectors(self) -> np.ndarray:
        """The chain's current estimate of every target."""
        out = self.targets.current()
        assert out is not None
        return out

    def last_rows(self) -> np.ndarray:
        """Rows re-encoded at the last update (exact there, so left out of the error)."""
        if self.targets.last_refresh == 0:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.targets.last_encoded == self.targets.last_refresh)


@dataclass
class CdRun:
    """What part (c)/(d) measures against, and what it has measured so far."""

    args: argparse.Namespace
    p: Any
    row: dict[str, int]
    encode: Any
    v0: np.ndarray
    exs: list[Any]
    pos: torch.Tensor
    known: torch.Tensor
    chains: dict[str, Chain]
    tick: float
    refresh: np.ndarray | None = None  # the last full re-encode, every --refresh-every steps
    results: list[dict[str, Any]] = field(default_factory=list)
    saved: dict[str, Any] = field(default_factory=dict)

    def after_step(self, _: Any, state: TrainerState, info: StepInfo) -> None:
        """A training-loop hook: feed the chains, re-encode and measure when due."""
        args, step = self.args, state.step
        seen = np.array([self.row[d] for d in info.batch.positive_ids if d in self.row], np.int64)
        for chain in self.chains.values():
            chain.policy.observe(seen)
        if step % 5 == 0:
            print(f"step {step} loss {info.loss:.4f} at {time.perf_counter() - self.tick:.0f} s", flush=True)  # fmt: skip
        due = step in args.measure or step % args.refresh_every == 0
        fresh = self.encode() if due else None
        if step % args.dynamic_every == 0:
            for chain in self.chains.values():
                chain.update(step, lambda rows: fresh[rows] if fresh is not None else self.encode(rows))  # fmt: skip
        if step in args.measure:
            assert fresh is not None
            self.record(step, info.loss, fresh)
        if fresh is not None and step % args.refresh_every == 0:
            self.refresh = fresh

    def record(self, step: int, loss: float, fresh: np.ndarray) -> None:
        """Measure drift and gradient errors at ``step``; keep vectors when saving."""
        dyn = {k: c.vectors() for k, c in self.chains.items()}
        last_rows = {k: c.last_rows() for k, c in self.chains.items()}
        refresh = self.v0 if self.refresh is None else self.refresh
        point = measure(step, loss, self.v0, refresh, dyn, last_rows, fresh, self.p, self.exs, self.pos, self.known, self.args)  # fmt: skip
        queries = point.pop("queries")
        if self.args.save_vectors:
            self.saved.update({f"step{step}": fresh, f"refresh_step{step}": refresh, f"queries{step}": queries})  # fmt: skip
            self.saved.update({f"dynamic_{k}_step{step}": v for k, v in dyn.items()})
        self.results.append(point)
        print(json.dumps(point), flush=True)


def part_cd(args: argparse.Namespace) -> dict[str, Any]:
    """Train with in-batch negatives (the library loop); measure drift and gradient error at
    ``args.measure`` from a hook."""
    overrides = [
        "mining.strategy=in_batch", f"optim.batch_size={args.batch}", f"optim.lr={args.lr}",
        f"optim.max_steps={args.steps}", f"model.doc_max_length={args.doc_len}",
        "gradcache.precision=fp32", f"run.output_dir={args.workdir}", "run.name=bench-cd",
        "run.progress=false", f"run.threads={args.threads}", "run.save_every=0", *args.set,
    ]  # fmt: skip
    p = build_parts(load_config(CONFIG, overrides))
    assert p.data.corpus is not None
    judged = {d for docs in p.data.known_positives.values() for d in docs}
    ids = subset(dict(p.data.corpus), judged, args.corpus_size, 0)
    row = {d: i for i, d in enumerate(ids)}
    texts = [p.data.corpus[d] for d in ids]
    exs = [ex for ex in p.data.examples if ex.positive_ids and ex.positive_ids[0] in row]
    exs = exs[: args.queries]
    pos = torch.tensor([row[ex.positive_ids[0]] for ex in exs])
    known = torch.zeros(len(exs), len(ids), dtype=torch.bool)
    for i, ex in enumerate(exs):
        for d in p.data.known_positives.get(ex.query_id or "", ()):
            if d in row:
                known[i, row[d]] = True

    def encode(rows: np.ndarray | None = None) -> np.ndarray:
        chosen = texts if rows is None else [texts[int(r)] for r in rows]
        return p.model.encode(chosen, "document", 64, max_length=args.doc_len)

    tick = time.perf_counter()
    v0 = encode()
    print(f"full encode of {len(ids)} targets: {time.perf_counter() - tick:.1f} s", flush=True)
    chains = {f"{f:g}": Chain(v0, f, 0, args.dynamic_every) for f in args.landmarks}
    if args.recent:
        chains.update({f"{f:g}+recent": Chain(v0, f, args.recent, args.dynamic_every) for f in args.landmarks})  # fmt: skip
    run = CdRun(args, p, row, encode, v0, exs, pos, known, chains, tick, saved={"step0": v0})
    train_steps(p, resume_or_start(p), hooks=[run.after_step])
    p.log.close()
    if args.save_vectors:
        run.saved.update(positives=pos.numpy(), known=known.numpy())
        np.savez(args.save_vectors, **run.saved)
    return {"steps": args.steps, "targets": len(ids), "queries": len(exs), "points": run.results}


def measure(
    step: int, loss: float, v0: np.ndarray, refresh: np.ndarray, dyn: dict[str, np.ndarray],
    last_rows: dict[str, np.ndarray], fresh: np.ndarray, p: Any, exs: list[Any],
    pos: torch.Tensor, known: torch.Tensor, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """Drift and gradient errors at one step."""
    n = len(fresh)
    drift: dict[str, float] = {
        "stale": drift_error(v0, fresh),
        "refresh": drift_error(refresh, fresh),
    }
    for f in args.landmarks:
        rows = choose_landmarks(n, max(1, round(f * n)), seed=10_000 + step)
        rest = np.setdiff1d(np.arange(n), rows)
        for residual in (False, True):
            est = nystrom(v0, rows, fresh[rows], residual)
            drift[f"oneshot_{'residual' if residual else 'plain'}_{f:g}"] = drift_error(est[rest], fresh[rest])  # fmt: skip
        drift[f"stale_nonlandmark_{f:g}"] = drift_error(v0[rest], fresh[rest])
    for key, v in dyn.items():  # error on the targets the chain did not just re-encode
        rest = np.setdiff1d(np.arange(n), last_rows.get(key, np.zeros(0, np.int64)))
        drift[f"dynamic_{key}"] = drift_error(v[rest], fresh[rest])
    q = torch.from_numpy(p.model.encode([ex.query for ex in exs], "query", 64)).double()
    vectors = {
        "static": v0, "refresh": refresh, "oracle": fresh,
        **{f"dynamic_{key}": v for key, v in dyn.items()},
    }  # fmt: skip
    tens = {k: torch.from_numpy(v).double() for k, v in vectors.items()}
    grads = grad_errors(q, tens["oracle"], pos, known, tens, args)
    return {"step": step, "loss": loss, "drift": drift, "grad": grads, "queries": q.float().numpy()}


def part_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """(c) offline: one-shot residual Nyström error vs landmark fraction and ridge, from the
    encodings saved by ``--part cd --save-vectors``."""
    saved = np.load(args.vectors)
    v0, out = saved["step0"], {}
    n = len(v0)
    for key in sorted(k for k in saved.files if re.fullmatch(r"step\d+", k) and k != "step0"):
        fresh, rows_out = saved[key], []
        for frac in args.sweep_landmarks:
            rows = choose_landmarks(n, max(1, round(frac * n)), seed=1)
            rest = np.setdiff1d(np.arange(n), rows)
            stale = drift_error(v0[rest], fresh[rest])
            for kernel in args.kernels:
                for ridge in args.ridges:
                    est = correct_drift(v0, rows, fresh[rows], residual=True, ridge=ridge, kernel=kernel)  # fmt: skip
                    err = drift_error(unit(est)[rest], fresh[rest])
                    rows_out.append({"landmarks": frac, "kernel": kernel, "ridge": ridge, "stale": stale, "corrected": err})  # fmt: skip
                    print(f"(c) {key} landmarks {frac:g} {kernel} ridge {ridge:g}: {err:.4f} / {stale:.4f} = {err / stale:.2f}x")  # fmt: skip
        out[key] = rows_out
    return {"targets": n, "sweep": out}


# ---- (e) end to end ------------------------------------------------------------------------------


def train_for(p: Any, budget: float) -> tuple[int, dict[str, Any]]:
    """Drive the library loop for ``budget`` seconds (mining included); the steps run and the
    last step's miner telemetry."""
    fields: dict[str, Any] = {}

    def keep_telemetry(_: Any, __: TrainerState, info: StepInfo) -> None:
        fields.update(info.mining)

    start = time.perf_counter()
    state = train_steps(
        p, resume_or_start(p), stop=lambda _: time.perf_counter() - start >= budget,
        hooks=[keep_telemetry],
    )  # fmt: skip
    return state.step, fields


def part_e(args: argparse.Namespace) -> dict[str, Any]:
    """Train each strategy for ``args.budget`` seconds, then evaluate on SciFact test."""
    out: dict[str, Any] = {"budget_s": args.budget, "runs": {}}
    for strategy in args.strategies:
        overrides = [
            f"mining.strategy={strategy}", f"optim.batch_size={args.batch}", f"optim.lr={args.lr}",
            "optim.max_steps=1000", "optim.warmup_ratio=0.0", f"model.doc_max_length={args.doc_len}",
            f"mining.doc_max_length={args.mine_len}", f"mining.num_negatives={args.k_train}",
            f"mining.refresh_every={args.dynamic_every if strategy == 'dynamic' else args.refresh_every}",
            "gradcache.precision=fp32", "eval.dims=[]", f"run.output_dir={args.workdir}",
            f"run.name=bench-e-{strategy}", "run.progress=false", f"run.threads={args.threads}",
            "run.save_every=0", *args.set,
        ]  # fmt: skip
        p = build_parts(load_config(CONFIG, overrides))
        assert p.data.test is not None
        if args.before and not out.get("before"):
            p.model.max_seq_length = args.doc_len
            before = evaluate_split(p.model, p.data.test, p.cfg.eval, False).metrics
            out["before"] = before
            print("before", json.dumps(before), flush=True)
        start = time.perf_counter()
        step, fields = train_for(p, args.budget)
        seconds = time.perf_counter() - start
        p.model.max_seq_length = args.doc_len  # evaluate at the training truncation (CPU time)
        metrics = evaluate_split(p.model, p.data.test, p.cfg.eval, False).metrics
        out["runs"][strategy] = {"steps": step, "seconds": seconds, "metrics": metrics, **fields}
        print(strategy, json.dumps(out["runs"][strategy]), flush=True)
        p.log.close()
    return out


def main() -> None:
    """Parse arguments, run the part, print ratios, write JSON."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--part", choices=["cd", "e", "sweep"], required=True)
    ap.add_argument(
        "--quick", action="store_true",
        help="smoke test: tiny sizes on a SciFact cut written under --workdir",
    )  # fmt: skip
    ap.add_argument("--vectors", type=Path, help="(sweep): npz written by --save-vectors")
    ap.add_argument(
        "--sweep-landmarks", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2]
    )
    ap.add_argument("--ridges", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    ap.add_argument("--kernel", default="linear", help="(c)/(d): Nyström kernel")
    ap.add_argument("--ridge", type=float, default=1e-3, help="(c)/(d): Nyström ridge")
    ap.add_argument("--kernels", nargs="+", default=["linear", "rbf"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--measure", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--refresh-every", type=int, default=10)
    ap.add_argument("--dynamic-every", type=int, default=5)
    ap.add_argument("--landmarks", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument(
        "--recent", type=int, default=0,
        help="(c)/(d): also run each dynamic chain re-encoding up to this many positives of the "
        "batches since its last update (the miner's mining.recent); 0: off",
    )  # fmt: skip
    ap.add_argument("--corpus-size", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--doc-len", type=int, default=128)
    ap.add_argument("--mine-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--k", type=int, default=64, help="negatives per query in (d)")
    ap.add_argument("--k-train", type=int, default=2, help="mined negatives per query in (e)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--budget", type=float, default=480)
    ap.add_argument("--before", action="store_true", help="(e): also evaluate the initial model")
    ap.add_argument("--strategies", nargs="+", default=["in_batch", "static", "refresh", "dynamic"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/dualforge-bench-mining")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--save-vectors", type=Path, default=None, help="(c): npz of the encodings")
    ap.add_argument("--set", nargs="*", default=[], help="(cd, e): extra key.sub=value overrides")
    args = parse_args(ap, QUICK)
    if args.quick:
        args.set = [f"data.path={quick_scifact(Path(args.workdir))}", *args.set]
    FIT.update(kernel=args.kernel, ridge=args.ridge)
    torch.manual_seed(0)
    parts = {"cd": part_cd, "e": part_e, "sweep": part_sweep}
    result = parts[args.part](args)
    result.update(
        args={k: str(v) for k, v in vars(args).items()},
        host=platform.node(),
        torch=torch.__version__,
    )
    summarise(args.part, result)
    out = args.out or OUT / f"mining_train_{args.part}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def summarise(part: str, result: dict[str, Any]) -> None:
    """Print the ratios the issue's targets are about."""
    if part == "sweep":
        return
    if part == "e":
        base = result["runs"].get("in_batch", {}).get("metrics", {}).get("ndcg@10")
        for name, run in result["runs"].items():
            ndcg = run["metrics"]["ndcg@10"]
            ratio = f"{ndcg / base:.3f}x in_batch" if base else ""
            print(f"(e) {name:9s} steps {run['steps']:4d}  nDCG@10 {ndcg:.4f}  {ratio}")
        return
    for point in result["points"]:
        d, g, s = point["drift"], point["grad"], point["step"]
        for key in sorted(d):
            if key.startswith(("oneshot", "dynamic")):
                print(f"(c) step {s}: {key} {d[key]:.4f} / stale {d['stale']:.4f} = {d[key] / d['stale']:.2f}x")  # fmt: skip
        for name, e in g.items():
            line = "  ".join(
                f"{k} {v:.4f} ({v / g['static'][k]:.2f}x static)" for k, v in e.items()
            )
            print(f"(d) step {s}: {name:12s} {line}")


if __name__ == "__main__":
    main()
