"""(d) offline: gradient error of K sampled negatives, by estimator and K, from saved encodings.

Reads the encodings that ``bench/mining_train.py --part cd --save-vectors V.npz`` saved (step-0,
fresh, last-refresh and dynamic-chain target vectors, the fresh training queries, their
positives and known positives at every measured step) and measures, for every strategy's target
vectors ``v`` (static, refresh, dynamic chains, oracle = fresh), the relative L2 error (Frobenius
over queries, mean over --draws draws) of a gradient estimated from K negatives per query against
the exact full-softmax InfoNCE gradient w.r.t. the query embeddings (all targets, fresh
embeddings, the query's other labelled positives masked).

Every estimator draws its negatives from the strategy's softmax ``softmax(q·v / τ)`` over the
targets that are not labelled positives of the query (what ``TreeIndex.sample`` draws with
``exclude``); the positive is always scored with its fresh vector (a training batch encodes it).

    is          sampled softmax with importance weights ``exp(q·t/τ) / (K q(t))`` on the fresh
                scores of the drawn negatives (as in mining_train.py). Consistent for any
                proposal: the index's staleness only costs variance.
    mc          Monte Carlo estimate of the softmax expectation from the index's own distribution:
                ``π t_pos + (1 - π) mean_k t_k``, ``π`` the positive's probability under the
                index softmax (its logit fresh). Its mean is the "expected, fresh positive"
                gradient of mining_train.py, so its bias is the index's staleness.
    strat       ``mc`` with the index's top-K/2 negatives taken exactly (weight ``p_v``) and K/2
                draws from the index softmax over the rest (weight: the rest's mass). Same mean
                as ``mc``, less sampling noise (the top of a τ = 0.05 softmax holds most mass).
    strat_is    top-K/2 by the index plus K/2 importance-weighted draws from the rest, all
                scored fresh. Consistent for any proposal; a stale top set leaves heavy targets
                in the sampled rest, which shows as variance.

The ``_mean`` entries are the error of the estimate averaged over the draws (its bias part).

    python bench/mining_grad.py --vectors V.npz --ks 64 256 1024 --out bench/out/mining_grad.json
    python bench/mining_grad.py --vectors V.npz --quick --out /tmp/grad.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import OUT, parse_args
from mining_train import estimate as is_estimate
from mining_train import exact_gradient, expected_fresh_positive, fresh_positive_logits

ESTIMATORS = ("is", "mc", "strat", "strat_is")
Tensor = torch.Tensor


class Proposal:
    """The index softmax of one strategy: the positive's share, the negatives, the top set."""

    def __init__(
        self, q: Tensor, v: Tensor, t: Tensor, pos: Tensor, known: Tensor, tau: float, top: int
    ) -> None:
        rows = torch.arange(len(pos))
        p = torch.softmax(fresh_positive_logits(q, v, t, pos, known, tau), dim=1)  # (Q, N)
        self.pi = p[rows, pos]  # (Q,) positive's probability
        p[rows, pos] = 0.0
        self.neg = p  # (Q, N) negatives' probabilities (known positives are 0)
        self.top = torch.topk(p, top, dim=1).indices  # (Q, top)
        self.rest = p.scatter(1, self.top, 0.0)  # (Q, N) the tail below the top set


def draw(weights: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """``(Q, k)`` ids drawn from ``weights`` row-normalised (with replacement)."""
    return torch.multinomial(weights, k, replacement=True, generator=gen)


def estimate(
    kind: str, prop: Proposal, q: Tensor, t: Tensor, pos: Tensor, k: int, tau: float,
    gen: torch.Generator,
) -> Tensor:  # fmt: skip
    """One ``(Q, d)`` gradient estimate of estimator ``kind`` from ``k`` negatives per query."""
    tp = t[pos]  # (Q, d)
    if kind in ("is", "mc"):
        neg = draw(prop.neg, k, gen)  # (Q, k)
        if kind == "mc":
            mean = prop.pi[:, None] * tp + (1 - prop.pi)[:, None] * t[neg].mean(1)
            return (mean - tp) / tau
        qn = prop.neg.gather(1, neg) / prop.neg.sum(1, keepdim=True)  # (Q, k) proposal probs
        return is_estimate(q, t, pos, neg, torch.log(qn), tau)
    top, m = prop.top, k - prop.top.shape[1]
    tail = draw(prop.rest, m, gen)  # (Q, m)
    if kind == "strat":
        p_top = prop.neg.gather(1, top)  # (Q, top)
        mass = prop.rest.sum(1, keepdim=True)  # (Q, 1)
        mean = prop.pi[:, None] * tp + torch.einsum("qk,qkd->qd", p_top, t[top])
        return (mean + mass * t[tail].mean(1) - tp) / tau
    # strat_is: exact fresh weights on positive + top set, importance-weighted tail
    s_pos = (q * tp).sum(1) / tau  # (Q,)
    qn = prop.rest.gather(1, tail) / prop.rest.sum(1, keepdim=True)  # (Q, m)
    s_top = torch.einsum("qd,qkd->qk", q, t[top]) / tau
    s_tail = torch.einsum("qd,qkd->qk", q, t[tail]) / tau - torch.log(qn * m)
    logits = torch.cat([s_pos[:, None], s_top, s_tail], dim=1)  # (Q, 1 + top + m)
    w = torch.softmax(logits, dim=1)
    ids = torch.cat([pos[:, None], top, tail], dim=1)
    return (torch.einsum("qk,qkd->qd", w, t[ids]) - tp) / tau


def errors(
    q: Tensor, t: Tensor, pos: Tensor, known: Tensor, g: Tensor, v: Tensor, k: int,
    args: argparse.Namespace,
) -> dict[str, float]:  # fmt: skip
    """Mean relative error of each estimator (and of its mean over the draws) against the exact
    gradient ``g``, for one strategy's vectors ``v``."""
    norm = torch.linalg.norm(g)
    prop = Proposal(q, v, t, pos, known, args.tau, k // 2)
    expected = expected_fresh_positive(q, v, t, pos, known, args.tau)  # (Q, d) noise-free
    out = {"expected_fresh_pos": float(torch.linalg.norm(expected - g) / norm)}
    gen = torch.Generator().manual_seed(0)
    for kind in ESTIMATORS:
        errs, total = [], torch.zeros_like(g)
        for _ in range(args.draws):
            est = estimate(kind, prop, q, t, pos, k, args.tau, gen)
            total += est / args.draws
            errs.append(float(torch.linalg.norm(est - g) / norm))
        out[kind] = float(np.mean(errs))
        out[f"{kind}_mean"] = float(torch.linalg.norm(total - g) / norm)
    return out


def strategies(saved: Any, step: int) -> dict[str, np.ndarray]:
    """Each strategy's target vectors at ``step``."""
    out = {"static": saved["step0"], "refresh": saved[f"refresh_step{step}"]}
    for key in saved.files:
        m = re.fullmatch(rf"dynamic_(.+)_step{step}", key)
        if m:
            out[f"dynamic_{m.group(1)}"] = saved[key]
    out["oracle"] = saved[f"step{step}"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measured step, strategy, K and estimator."""
    saved = np.load(args.vectors)
    pos = torch.from_numpy(saved["positives"]).long()
    known = torch.from_numpy(saved["known"]).bool()
    steps = sorted(int(m.group(1)) for k in saved.files if (m := re.fullmatch(r"queries(\d+)", k)))
    points = []
    for step in steps:
        t = torch.from_numpy(saved[f"step{step}"]).double()
        q = torch.from_numpy(saved[f"queries{step}"]).double()
        g = exact_gradient(q, t, pos, known, args.tau)  # (Q, d)
        for k in args.ks:
            row: dict[str, Any] = {"step": step, "k": k}
            for name, v in strategies(saved, step).items():
                row[name] = errors(q, t, pos, known, g, torch.from_numpy(v).double(), k, args)
            points.append(row)
            print_row(row)
    return {"points": points, "targets": int(saved["step0"].shape[0]), "queries": len(pos)}


def print_row(row: dict[str, Any]) -> None:
    """One line per estimator: each strategy's error and its ratio to static."""
    names = [n for n in row if n not in ("step", "k")]
    for kind in ("expected_fresh_pos", *ESTIMATORS, *(f"{e}_mean" for e in ESTIMATORS)):
        base = row["static"][kind]
        cells = "  ".join(f"{n} {row[n][kind]:.4f} ({row[n][kind] / base:.2f}x)" for n in names)
        print(f"step {row['step']:3d} K {row['k']:5d} {kind:18s} {cells}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vectors", type=Path, required=True, help="npz of mining_train.py --part cd")
    ap.add_argument("--quick", action="store_true", help="smoke test: K 4 and 8, 2 draws")
    ap.add_argument("--ks", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=OUT / "mining_grad.json")
    args = parse_args(ap, {"ks": [4, 8], "draws": 2})
    result = run(args)
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
