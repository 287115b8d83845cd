"""Positive-aware filtering of mined negatives, and the two vector stores (CPU).

Parts (``--part``, any of ``rates scale train``):

* ``rates``: SciFact with planted duplicates (a copy of 10% of the train positives' texts under a
  new id, listed in ``planted.tsv``), the corpus encoded once by all-MiniLM-L6-v2 into a static
  store. For every batch of 64 train queries, 3 softmax negatives (τ = 0.05) with the filter off,
  ``absolute`` and ``relative``: the fraction of negatives that are a planted copy of the query's
  own positive, and the time of the draw (filtered / unfiltered, median over batches), on the
  ``tree`` and the ``flat`` store.
* ``scale``: ``flat`` vs ``tree`` cost of one draw (64 queries x 3 negatives, with and without
  a filter) over 100k and 1M clustered unit vectors of dimension 384.
* ``train``: ``configs/scifact-minilm-dynamic.yaml`` on the planted corpus with
  ``mining.check_qrels``, filter off / absolute / relative, same seed and steps: test nDCG@10 and
  the planted rate the run logged.

    python bench/mining_filter.py --part rates scale          # ~15 min on 2 cores
    python bench/mining_filter.py --part train                # ~25 min per run
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import CONFIGS, OUT, ROOT, SCIFACT, finish_report

RULES = {"none": 0.0, "absolute": 0.05, "relative": 0.05}


def planted_folder(out: Path, fraction: float = 0.1, seed: int = 0) -> Path:
    """SciFact plus an unlabelled copy of ``fraction`` of the train positives (``planted.tsv``
    names each copied query's copy); written once under ``out``."""
    folder = out / "scifact-planted"
    if (folder / "planted.tsv").is_file():
        return folder
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        (folder / name).write_text((SCIFACT / name).read_text(encoding="utf-8"), encoding="utf-8")
    corpus = (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    docs = {json.loads(line)["_id"]: json.loads(line) for line in corpus}
    pairs = [
        line.split("\t")[:2] for line in (SCIFACT / "qrels/train.tsv").read_text().splitlines()[1:]
    ]
    positives = sorted({d for _, d in pairs if d in docs})
    chosen = set(random.Random(seed).sample(positives, round(fraction * len(positives))))
    copies = [{**docs[d], "_id": f"planted-{d}"} for d in sorted(chosen)]
    lines = corpus + [json.dumps(c) for c in copies]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [f"{q}\tplanted-{d}\t1" for q, d in pairs if d in chosen]
    (folder / "planted.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


def encoded(
    folder: Path,
) -> tuple[Any, list[str], torch.Tensor, list[tuple[str, str]], torch.Tensor, float]:
    """The planted corpus and one (query, positive) pair per train query, encoded by MiniLM
    (documents at 128 tokens), cached next to the folder."""
    from dualforge.data import load_beir
    from dualforge.modeling import load_model

    ds = load_beir(folder, "train")
    ids = list(ds.corpus)
    row = {d: i for i, d in enumerate(ids)}
    pairs = [
        (q, d) for q, judged in ds.qrels.items() for d, s in judged.items() if s > 0 and d in row
    ]
    pairs = list({q: (q, d) for q, d in pairs}.values())  # one positive per query
    cache = folder / "minilm.pt"
    if cache.is_file():
        saved = torch.load(cache)
        return ds, ids, saved["docs"], pairs, saved["queries"], saved["seconds"]
    model = load_model("minilm")
    tick = time.perf_counter()
    docs = model.embed([ds.corpus[d].full_text for d in ids], "document", 64, max_length=128)
    queries = model.embed([ds.queries[q] for q, _ in pairs], "query", 64)
    seconds = time.perf_counter() - tick
    torch.save({"docs": docs, "queries": queries, "seconds": seconds}, cache)
    return ds, ids, docs, pairs, queries, seconds


def part_rates(folder: Path, repeats: int) -> dict[str, Any]:
    """Planted-copy rates and draw time, filter off / absolute / relative, tree and flat.

    ``own_copy_rate``: negatives that are a copy of the query's own (batch) positive, the case
    the filter targets; ``planted_rate``: a copy of any of the query's positives (a copy of
    another, lower-scored positive may stay below the ceiling)."""
    from dualforge.data import load_qrels
    from dualforge.mining.negatives import exclusion_matrix, mine, positive_ceiling
    from dualforge.mining.stores import StoreParams, make_store

    ds, ids, docs, pairs, queries, encode_s = encoded(folder)
    row = {d: i for i, d in enumerate(ids)}
    planted = {
        q: {row[d] for d in docs_} for q, docs_ in load_qrels(folder / "planted.tsv").items()
    }
    known = {
        q: {row[d] for d, s in judged.items() if s > 0 and d in row}
        for q, judged in ds.qrels.items()
    }
    out: dict[str, Any] = {
        "targets": len(ids),
        "queries": len(pairs),
        "planted_queries": len(planted),
        "encode_seconds": encode_s,
        "stores": {},
    }
    for name in ("tree", "flat"):
        store = make_store(name, docs, StoreParams(backend="auto"))
        res: dict[str, Any] = {}
        for rule, margin in RULES.items():
            times, hits, own_hits, n_planted, fallbacks = [], 0, 0, 0, 0
            for rep in range(repeats):
                for lo in range(0, len(pairs), 64):
                    batch = pairs[lo : lo + 64]
                    q = queries[lo : lo + 64]
                    own = torch.tensor([row[d] for _, d in batch])
                    exclude = exclusion_matrix([sorted(known[qid] | {row[d]}) for qid, d in batch])
                    s_pos = (q * store.vectors(own)).sum(1)
                    ceiling = None if rule == "none" else positive_ceiling(s_pos, rule, margin)
                    gen = torch.Generator().manual_seed(rep * 100_003 + lo)
                    t0 = time.perf_counter()
                    mined = mine(store, q, 3, mode="softmax", exclude=exclude, ceiling=ceiling,
                                 temperature=0.05, generator=gen)  # fmt: skip
                    times.append(time.perf_counter() - t0)
                    fallbacks += int(mined.fallback.sum())
                    for (qid, d), got in zip(batch, mined.ids):
                        if qid in planted:
                            n_planted += len(got)
                            hits += sum(int(g) in planted[qid] for g in got)
                            own_hits += sum(ids[int(g)] == f"planted-{d}" for g in got)
            res[rule] = {
                "planted_rate": hits / max(1, n_planted),
                "own_copy_rate": own_hits / max(1, n_planted),
                "draw_seconds_median": statistics.median(times),
                "fallbacks": fallbacks,
            }
        for rule in ("absolute", "relative"):
            res[rule]["time_ratio"] = (
                res[rule]["draw_seconds_median"] / res["none"]["draw_seconds_median"]
            )
        out["stores"][name] = res
    return out


def mixture(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``(n, d)`` unit vectors around 1,000 random centres (spread 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(1000, d, generator=gen), dim=1)
    label = torch.randint(0, 1000, (n,), generator=gen)
    return torch.nn.functional.normalize(
        centres[label] + 0.2 / math.sqrt(d) * torch.randn(n, d, generator=gen), dim=1
    )


def part_scale(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Seconds per draw of 64 queries x 3 negatives, flat vs tree, filter off / absolute."""
    from dualforge.mining.negatives import exclusion_matrix, mine, positive_ceiling
    from dualforge.mining.stores import StoreParams, make_store

    rows = []
    for n in sizes:
        x = mixture(n, 384)
        gen = torch.Generator().manual_seed(1)
        pos = torch.randint(0, n, (64,), generator=gen)
        q = torch.nn.functional.normalize(
            x[pos] + 0.1 / math.sqrt(384) * torch.randn(64, 384, generator=gen), dim=1
        )
        exclude = exclusion_matrix([[int(p)] for p in pos])
        ceiling = positive_ceiling((q * x[pos]).sum(1), "absolute", 0.05)
        for name in ("flat", "tree"):
            t0 = time.perf_counter()
            store = make_store(name, x, StoreParams(backend="auto"))
            build = time.perf_counter() - t0
            for rule, c in (("none", None), ("absolute", ceiling)):
                times = []
                for rep in range(repeats):
                    t0 = time.perf_counter()
                    mine(store, q, 3, mode="softmax", exclude=exclude, ceiling=c, temperature=0.05,
                         generator=torch.Generator().manual_seed(rep))  # fmt: skip
                    times.append(time.perf_counter() - t0)
                rows.append({"targets": n, "store": name, "filter": rule, "build_seconds": build,
                             "draw_seconds_median": statistics.median(times)})  # fmt: skip
            del store
    return rows


def part_train(folder: Path, out: Path, rules: list[str], max_steps: int | None) -> dict[str, Any]:
    """The dynamic config on the planted corpus, one run per filter rule (same seed)."""
    res = {}
    for rule in rules:
        name = f"mining-filter-{rule}"
        args = [sys.executable, "-m", "dualforge", "train", str(CONFIGS / "scifact-minilm-dynamic.yaml"),
                f"data.path={folder}", f"mining.check_qrels={folder / 'planted.tsv'}",
                f"mining.filter={rule}", f"mining.margin={RULES[rule] or 0.05}",
                f"run.output_dir={out / 'runs'}", f"run.name={name}", "run.progress=false",
                "eval.before=false", "--overwrite"]  # fmt: skip
        if max_steps:
            args.insert(-1, f"optim.max_steps={max_steps}")  # overrides go before --overwrite
        tick = time.perf_counter()
        subprocess.run(args, check=True, cwd=ROOT)
        log = [
            json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()
        ]
        train = [r for r in log if r["event"] == "train"]
        final = [r for r in log if r["event"] == "eval" and r.get("split") == "test"][-1]
        res[rule] = {
            "steps": len(train), "seconds": time.perf_counter() - tick,
            "ndcg@10": final["metrics"]["ndcg@10"],
            "planted_rate_mean": statistics.mean(r.get("planted_rate", 0.0) for r in train),
            "filter_fallbacks": sum(r.get("filter_fallbacks", 0) for r in train),
            "mining_seconds": sum(r.get("mining_seconds", 0.0) for r in train[-1:]),
        }  # fmt: skip
    return res


def print_report(report: dict[str, Any]) -> None:
    rates = report.get("rates")
    if rates:
        print(
            f"\n{rates['targets']} targets, {rates['queries']} queries ({rates['planted_queries']} with a planted copy)"
        )
        print(
            f"{'store':6} {'filter':9} {'planted rate':>12} {'own copy':>9} {'draw s':>9} {'ratio':>6}"
        )
        for store, res in rates["stores"].items():
            for rule, r in res.items():
                ratio = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "1.00"
                print(
                    f"{store:6} {rule:9} {r['planted_rate']:12.4f} {r['own_copy_rate']:9.4f} {r['draw_seconds_median']:9.4f} {ratio:>6}"
                )
    for r in report.get("scale", []):
        print(
            f"N={r['targets']:>8} {r['store']:5} filter={r['filter']:8} build {r['build_seconds']:7.1f} s  draw {r['draw_seconds_median']:.4f} s"
        )
    for rule, r in report.get("train", {}).items():
        print(
            f"train filter={rule:8} steps {r['steps']} nDCG@10 {r['ndcg@10']:.4f} planted rate {r['planted_rate_mean']:.4f} ({r['seconds'] / 60:.1f} min)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--part", nargs="+", default=["rates", "scale"], choices=["rates", "scale", "train"]
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT / "mining_filter.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dualforge-mining-filter"))
    args = ap.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:],
                              "threads": torch.get_num_threads()}  # fmt: skip
    folder = planted_folder(args.work)
    if "rates" in args.part:
        report["rates"] = part_rates(folder, args.repeats)
    if "scale" in args.part:
        report["scale"] = part_scale(args.sizes, args.repeats)
    if "train" in args.part:
        report["train"] = part_train(folder, args.work, args.rules, args.max_steps)
    finish_report(report, args.out, print_report)


if __name__ == "__main__":
    main()
