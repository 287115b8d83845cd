"""Matryoshka costs on CPU: training step time vs single-dim, funnel vs full-dim search.

Part ``step``: one Gradient Cache step of all-MiniLM-L6-v2 (train mode, chunk 16) on SciFact
train (query, title + abstract) pairs, with plain InfoNCE at the full 384 dims vs the Matryoshka
sum over 32, 64, 128, 256, 384. The encoder work is identical (the prefixes are sliced from the
cached representations), so the difference is the loss on the (B, D) representations. Reported:
median step time of each (interleaved, after a warm-up) and their ratio, plus the loss phase alone
(forward + backward of the loss on detached representations, median of 50) as the part that
differs.

Part ``funnel`` (see ``--funnel-model``): funnel vs full-dim exact search on SciFact test with a
Matryoshka model, and on a synthetic corpus of >= 1M Matryoshka-like vectors.

Run:

    python bench/matryoshka.py --part step            # ~5 min on 2 cores
    python bench/matryoshka.py --part funnel --funnel-model runs/scifact-minilm-mrl/final
    python bench/matryoshka.py --quick --output /tmp/mrl.json  # smoke test, every part, tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import OUT, SCIFACT, load_pairs, parse_args, quick_scifact

DIMS = (32, 64, 128, 256, 384)
TEMPERATURE = 0.05


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loss_phase_time(loss: Callable[..., Any], batch: int, dim: int) -> float:
    """Median time of the loss forward + backward on detached ``(batch, dim)`` representations."""
    from dualforge.losses import LossInputs

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1)

    def run() -> None:
        leaves = [q.clone().requires_grad_(), d.clone().requires_grad_()]
        torch.autograd.backward(loss(*leaves, LossInputs(), slice(0, batch)).loss)

    run()
    return median_time(run, 50)


def step_part(batch: int, max_length: int, repeats: int) -> dict[str, Any]:
    """Time a single-dim and a Matryoshka Gradient Cache step, interleaved."""
    from dualforge import GradCache
    from dualforge.losses import InfoNCE, Nesting
    from dualforge.modeling import load_model

    model = load_model("minilm")
    model.train()
    queries, docs = load_pairs(batch)
    q = model.tokenize(queries, "query", max_length=max_length)
    d = model.tokenize(docs, "document", max_length=max_length)
    single = InfoNCE(temperature=TEMPERATURE)
    mrl = InfoNCE(temperature=TEMPERATURE, nesting=Nesting(DIMS, renormalize=True))
    towers = [model.query_encoder, model.doc_encoder]
    engines = {"single": GradCache(towers, single, 16), "matryoshka": GradCache(towers, mrl, 16)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for gc in engines.values():  # warm-up
        gc.step(q, d)
        model.zero_grad(set_to_none=True)
    for i in range(repeats):
        for name in list(engines)[i % 2 :] + list(engines)[: i % 2]:
            t0 = time.perf_counter()
            engines[name].step(q, d)
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        print(
            f"  step {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
        )
    median = {k: statistics.median(v) for k, v in times.items()}
    loss_s = {
        "single": loss_phase_time(single, batch, 384),
        "matryoshka": loss_phase_time(mrl, batch, 384),
    }
    return {
        "batch": batch,
        "max_length": max_length,
        "dims": DIMS,
        "repeats": repeats,
        "times_s": times,
        "median_s": median,
        "ratio": median["matryoshka"] / median["single"],
        "paired_ratio": statistics.median(
            a / b for a, b in zip(times["matryoshka"], times["single"])
        ),
        "loss_phase_s": loss_s,
        "ratio_from_loss_phase": (median["single"] + loss_s["matryoshka"] - loss_s["single"])
        / median["single"],
    }


FUNNELS = (
    "32:200,64:100,128:50,256:25,384:10",  # the paper's funnel
    "64:200,128:50,384:10",
    "32:400,128:100,384:10",
    "64:100,384:10",
    "32:200,128:50,384:10",  # <= 1/8 of exact FLOPs at 5k documents
    "32:300,128:75,384:10",
)


# Approximate first stages: each runs these funnels plus the same index over the full embeddings
# (the control row, which separates what the index saves from what the short prefix saves).
APPROX_FUNNELS = ("32:200,128:50,384:10", "64:200,384:10", "64:200,128:50,384:10", "128:100,384:10")


def _row(
    search: str, quality: float, flops: float, seconds: float, base: dict[str, Any]
) -> dict[str, Any]:
    return {
        "search": search,
        "quality": quality,
        "flops": flops,
        "flops_ratio": flops / base["flops"],
        "seconds": seconds,
        "time_ratio": seconds / base["seconds"],
        "quality_ratio": quality / base["quality"] if base["quality"] else float("nan"),
    }


def funnel_rows(
    docs: Any,
    queries: Any,
    quality: Callable[[Any, Any], Any],
    metric: str,
    repeats: int,
    approx: tuple[tuple[str, str], ...] = (),
) -> list[dict[str, Any]]:
    """Quality, FLOPs and wall time of exact full-dim search and of each funnel.

    ``FUNNELS`` run with an exact first stage; for each ``(factory, params)`` in ``approx`` the
    ``APPROX_FUNNELS`` and the control ``D:10`` run with that first-stage index. FLOPs are the
    scoring multiply-adds the search measured (an approximate index counts what it scored).
    """
    from dualforge.eval.retrieval import Funnel, build_index, exact_flops

    n, dim = docs.shape
    index = build_index(docs, "Flat", metric)
    index.search(queries[:8], 10)  # warm-up
    exact_s = median_time(lambda: index.search(queries, 10), repeats)
    scores, ids = index.search(queries, 10)
    base = {"flops": exact_flops(n, dim), "seconds": exact_s, "quality": quality(scores, ids)}
    rows = [_row(f"exact {dim}", base["quality"], base["flops"], exact_s, base)]
    runs: list[tuple[str, str, str | None]] = [(spec, "Flat", None) for spec in FUNNELS]
    for first, probe in approx:
        runs += [(spec, first, probe) for spec in (*APPROX_FUNNELS, f"{dim}:10")]
    firsts: dict[tuple[int, str, str | None], Any] = {}
    for spec, factory, params in runs:
        d0 = int(spec.split(":")[0])
        key = (d0, factory, params)
        funnel = Funnel(
            docs, spec, metric=metric, factory=factory, params=params, first_index=firsts.get(key)
        )
        firsts[key] = funnel.index
        funnel.search(queries[:8])
        seconds = median_time(lambda f=funnel: f.search(queries), repeats)  # type: ignore[misc]
        result = funnel.search(queries)
        name = spec if factory == "Flat" else f"{factory} ({params}) | {spec}"
        rows.append(
            _row(name, quality(result.scores, result.ids), result.flops_per_query, seconds, base)
        )
    for r in rows:
        print(
            f"  {r['search']:<58} quality {r['quality']:.4f} ({r['quality_ratio']:.3f}x)  "
            f"FLOPs/query {r['flops']:>13,.0f} ({r['flops_ratio']:.4f}x)  "
            f"{r['seconds']:.3f}s ({r['time_ratio']:.3f}x)",
            flush=True,
        )
    return rows


def budget_cv(
    docs: Any,
    queries: Any,
    qids: list[str],
    doc_ids: list[str],
    qrels: Any,
    metric: str,
    n_folds: int = 2,
    confidence: float | None = None,
) -> dict[str, Any]:
    """Budget mode without a dev split: ``cross_validate_cascade`` over the test queries
    (choose on all folds but one, default grid, tolerance 1%; score on the held-out fold)."""
    from dualforge.eval.retrieval import cross_validate_cascade

    cv = cross_validate_cascade(
        docs, queries, qrels, qids, doc_ids, folds=n_folds, tolerance=0.01,
        confidence=confidence, metric=metric,
    )  # fmt: skip
    for f in cv.folds:
        print(
            f"  budget fold: chose {f.spec} ({f.flops_ratio:.4f}x FLOPs); held-out nDCG@10 "
            f"{f.quality:.4f} vs exact {f.exact_quality:.4f} ({f.quality / f.exact_quality:.3f}x)",
            flush=True,
        )
    ratio = cv.quality / cv.exact_quality
    print(
        f"  budget {n_folds}-fold (confidence {confidence}) pooled held-out: {cv.quality:.4f} vs "
        f"exact {cv.exact_quality:.4f} ({ratio:.3f}x) at {cv.flops_ratio:.4f}x FLOPs on average",
        flush=True,
    )
    return {
        "n_folds": n_folds,
        "confidence": confidence,
        "folds": [vars(f) for f in cv.folds],
        "pooled": {
            "quality": cv.quality,
            "exact": cv.exact_quality,
            "ratio": ratio,
            "flops_ratio": cv.flops_ratio,
        },
    }


def scifact_funnel(model_path: str, folder: Path, cache_dir: Path) -> dict[str, Any]:
    """Funnels over a BEIR folder's test split (SciFact) with a (Matryoshka) model, quality =
    nDCG@10; the encodings are cached under ``cache_dir``."""
    from dualforge.data import load_eval_set
    from dualforge.eval.retrieval import qrels_quality
    from dualforge.modeling import load_model

    data = load_eval_set(folder, "test", skip_bad=False)
    model = load_model(model_path)
    qids = [q for q in data.queries if q in data.qrels]
    doc_ids = list(data.corpus)
    name = "-".join(Path(model_path).resolve().parts[-2:])
    cache = cache_dir / (f"{folder.name}-test-{name}.npz")
    if cache.is_file():  # the encodings of an earlier run with this model
        saved = np.load(cache)
        docs, queries = saved["docs"], saved["queries"]
    else:
        docs = model.encode([data.corpus[i] for i in doc_ids], "document", 32, show_progress=True)
        queries = model.encode([data.queries[q] for q in qids], "query", 32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, docs=docs, queries=queries)
    metric = "cos" if model.query_encoder.normalize else "ip"
    quality = qrels_quality(data.qrels, qids, doc_ids, "ndcg@10")
    approx = (("IVF64,Flat", "nprobe=8"), ("IVF64,Flat", "nprobe=16"))
    rows = funnel_rows(docs, queries, quality, metric, repeats=5, approx=approx)
    cv = {
        f"{k}-fold" + ("" if c is None else f"-confidence-{c:g}"): budget_cv(
            docs, queries, qids, doc_ids, data.qrels, metric, k, c
        )
        for c in (None, 0.9)
        for k in (2, 5)
    }
    return {"rows": rows, "budget_cv": cv}


def synthetic_funnel(
    n: int, n_queries: int, dim: int = 384, noise: float = 1.0
) -> list[dict[str, Any]]:
    """Funnels over ``n`` synthetic Matryoshka-like unit vectors; quality = Recall@10 of the source.

    Coordinate ``j`` has scale ``(1 + j) ** -0.25``, so early dims carry more of each vector (as in
    a Matryoshka embedding) and a prefix is a coarser version of the whole. Each query is a noisy
    copy of one document, its only relevant target.
    """
    g = torch.Generator().manual_seed(0)
    scale = (1.0 + torch.arange(dim, dtype=torch.float32)) ** -0.25  # (D,)
    docs = torch.empty(n, dim)
    for start in range(0, n, 100_000):
        block = torch.randn(min(100_000, n - start), dim, generator=g) * scale
        docs[start : start + len(block)] = torch.nn.functional.normalize(block, dim=-1)
    source = torch.randint(0, n, (n_queries,), generator=g)  # (Q,)
    eps = torch.randn(n_queries, dim, generator=g) * scale / scale.norm()  # (Q, D), norm ~1
    raw = docs[source] + noise * eps  # (Q, D)
    queries = torch.nn.functional.normalize(raw, dim=-1).numpy()
    docs_np = docs.numpy()
    del docs

    def recall(scores: Any, ids: Any) -> float:
        return float((torch.as_tensor(ids) == source[:, None]).any(dim=1).float().mean())

    # No approximate first stage here: these vectors have no cluster structure for IVF to use.
    return funnel_rows(docs_np, queries, recall, "ip", repeats=3)


# Smoke-test sizes (--quick): a few seconds per part on 2 cores, the packaged MiniLM on a cut of
# SciFact for the funnel part (no trained Matryoshka model needed).
QUICK = {
    "batch": 16, "max_length": 32, "repeats": 1, "funnel_model": "minilm",
    "synthetic_n": 20_000, "synthetic_queries": 64,
}  # fmt: skip


def arguments() -> argparse.Namespace:
    """The command line (``--quick`` defaults: :data:`QUICK`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("step", "funnel", "synthetic", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, SciFact cut")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--funnel-model", default="runs/scifact-minilm-mrl/final")
    parser.add_argument("--funnel-compare", nargs="*", default=[], help="more models to funnel")
    parser.add_argument("--synthetic-n", type=int, default=1_000_000)
    parser.add_argument("--synthetic-queries", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=OUT / "matryoshka.json")
    return parse_args(parser, QUICK)


def print_step(step: dict[str, Any]) -> None:
    """The step part's summary line."""
    print(
        f"median step: single {step['median_s']['single']:.2f}s, matryoshka "
        f"{step['median_s']['matryoshka']:.2f}s, ratio {step['ratio']:.3f} (paired "
        f"{step['paired_ratio']:.3f}); loss phase {step['loss_phase_s']['single'] * 1e3:.2f} ms "
        f"vs {step['loss_phase_s']['matryoshka'] * 1e3:.2f} ms -> ratio "
        f"{step['ratio_from_loss_phase']:.4f} (target <= 1.03)"
    )


def funnel_part(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Funnels on SciFact test (``--quick``: on the SciFact cut) for each model."""
    cache_dir = args.output.parent
    folder = quick_scifact(cache_dir) if args.quick else SCIFACT
    print(f"== funnel vs exact search, SciFact test, {args.funnel_model} ==", flush=True)
    funnel = scifact_funnel(args.funnel_model, folder, cache_dir)
    report["funnel_scifact"] = {"model": args.funnel_model} | funnel
    for model in args.funnel_compare:
        print(f"== funnel vs exact search, SciFact test, {model} ==", flush=True)
        funnel = scifact_funnel(model, folder, cache_dir)
        report.setdefault("funnel_scifact_compare", {})[model] = funnel


def main() -> None:
    """Run the chosen parts; merge their results into ``--output``."""
    args = arguments()
    torch.manual_seed(0)
    report: dict[str, Any] = {"command": " ".join(["python", "bench/matryoshka.py", *sys.argv[1:]])}
    if args.output.is_file():
        report = json.loads(args.output.read_text()) | report
    if args.part in ("step", "all"):
        print("== Matryoshka vs single-dim training step ==", flush=True)
        report["step"] = step_part(args.batch, args.max_length, args.repeats)
        print_step(report["step"])
    if args.part in ("funnel", "all"):
        funnel_part(args, report)
    if args.part in ("synthetic", "all"):
        print(f"== funnel vs exact search, {args.synthetic_n:,} synthetic vectors ==", flush=True)
        report["funnel_synthetic"] = {
            "n": args.synthetic_n,
            "queries": args.synthetic_queries,
            "rows": synthetic_funnel(args.synthetic_n, args.synthetic_queries),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
