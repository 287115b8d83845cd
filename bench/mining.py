"""Tree index sampler vs brute-force exact softmax: exactness, and cost per sample.

Synthetic targets: a mixture of Gaussians on the unit sphere (1000 clusters, random unit centres,
point = normalise(centre + spread * g / sqrt(d)), g ~ N(0, I)); queries are drawn near random
targets (normalise(target + spread/2 * g / sqrt(d))); temperature 0.05 as in contrastive training.

    (a) exactness   N = 10k, d = 64: 200k draws per query from the tree sampler, chi-square
                    p-value and total-variation distance to the exact softmax (brute force),
                    next to the TV of 200k draws of torch.multinomial from the exact softmax.
    (b) cost        N = 10k, 100k, 1M (and 10M with --ten-million), d = 64 and 384, for each
                    spread: a batch of 256 queries x 64 samples, tree sampler vs brute force
                    (full matmul + softmax + multinomial, 32 queries per matmul), one untimed
                    warm-up each, then --repeats timed rounds with the two methods interleaved;
                    median time per sample, ratio, vectors scored per sample, build time, memory.

--backend picks the sampler backend (auto: numba when it imports, else torch; both: torch and
numba side by side, all three methods interleaved). --threads applies to torch and numba alike.

Run (about 40 minutes on 2 shared cores; writes bench/out/mining.json):

    python bench/mining.py                  # (a) and (b) without 10M
    python bench/mining.py --quick          # a small smoke run
    python bench/mining.py --backend both --sizes 1000000 --skip-exactness
                                            # torch and numba backends at 1M only
    python bench/mining.py --ten-million    # adds N = 10M, d = 64
    python bench/mining.py --skip-exactness --sizes 0 --ten-million --spreads 0.1 --out ...
                                            # only N = 10M (--sizes 0 drops the others)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import OUT
from dualforge.mining import TreeIndex

TAU = 0.05
CLUSTERS = 1000
QUERIES = 256
SAMPLES = 64
TARGET_RATIO = 20.0  # tree must cost <= 1/20 of brute force per sample at N = 1M


def mixture(n: int, d: int, spread: float, seed: int) -> torch.Tensor:
    """``(n, d)`` float32 unit vectors from the Gaussian mixture, generated in chunks."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(CLUSTERS, d, generator=gen), dim=1)
    out = torch.empty(n, d)
    for lo in range(0, n, 1 << 20):
        m = min(n, lo + (1 << 20)) - lo
        label = torch.randint(0, CLUSTERS, (m,), generator=gen)
        noise = torch.randn(m, d, generator=gen) * (spread / math.sqrt(d))
        out[lo : lo + m] = torch.nn.functional.normalize(centres[label] + noise, dim=1)
    return out


def queries_near(x: torch.Tensor, q: int, spread: float, seed: int) -> torch.Tensor:
    """``(q, d)`` unit queries near random targets."""
    gen = torch.Generator().manual_seed(seed + 1)
    rows = x[torch.randint(0, x.shape[0], (q,), generator=gen)]
    noise = torch.randn(rows.shape, generator=gen) * (0.5 * spread / math.sqrt(x.shape[1]))
    return torch.nn.functional.normalize(rows + noise, dim=1)


def brute_sample(
    x: torch.Tensor, q: torch.Tensor, k: int, gen: torch.Generator, batch: int = 32
) -> torch.Tensor:
    """Exact softmax sampling by brute force: ``(Q, k)`` ids."""
    out = []
    with torch.inference_mode():
        for lo in range(0, q.shape[0], batch):
            logits = torch.mm(q[lo : lo + batch], x.T).div_(TAU)  # (b, N)
            probs = torch.softmax(logits, dim=1)
            out.append(torch.multinomial(probs, k, replacement=True, generator=gen))
    return torch.cat(out)


def chi_square(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson chi-square p-value, cells with expected count < 5 pooled."""
    expected = p * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    stat = float(((obs - exp) ** 2 / exp).sum())
    half = torch.tensor((len(obs) - 1) / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(half, torch.tensor(stat / 2.0, dtype=torch.float64)))


def exactness(
    n: int, d: int, spread: float, draws: int, n_queries: int, backend: str
) -> list[dict[str, Any]]:
    """Part (a): goodness of fit of the tree sampler's draws to the exact softmax."""
    x = mixture(n, d, spread, seed=0)
    q = queries_near(x, n_queries, spread, seed=0)
    index = TreeIndex.build(x)
    _, ids, stats = index.sample(q, draws, temperature=TAU, seed=0, backend=backend)
    p = torch.softmax((q.double() @ x.double().T) / TAU, dim=1).numpy()  # (Q, N)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n_queries):
        counts = np.bincount(ids[i], minlength=n)
        ref = torch.multinomial(torch.from_numpy(p[i]), draws, True, generator=gen).numpy()
        rows.append({
            "backend": backend, "query": i, "draws": draws, "chi2_p": chi_square(counts, p[i]),
            "tv": 0.5 * float(np.abs(counts / draws - p[i]).sum()),
            "tv_reference_multinomial": 0.5 * float(np.abs(np.bincount(ref, minlength=n) / draws - p[i]).sum()),
            "support_p_gt_1e-6": int((p[i] > 1e-6).sum()), "acceptance": stats.acceptance_rate,
        })  # fmt: skip
    return rows


@dataclass
class CostRow:
    """One configuration of part (b)."""

    n: int
    d: int
    spread: float
    backend: str
    build_s: float
    index_bytes: int
    vectors_bytes: int
    brute_us_per_sample: float
    tree_us_per_sample: float
    ratio: float  # brute / tree, ratio of medians
    ratio_paired: float  # median over rounds of brute / tree
    tree_scored_per_sample: float  # centres + leaf points + tested points
    tree_points_per_sample: float  # leaf points scored exactly
    brute_scored_per_sample: float  # N / samples per query
    acceptance: float
    rounds: int
    cut_nodes: int
    brute_s: list[float]
    tree_s: list[float]


def cost(n: int, d: int, spread: float, repeats: int, backends: list[str]) -> list[CostRow]:
    """Part (b) for one configuration: one row per backend, brute force measured alongside."""
    x = mixture(n, d, spread, seed=n + d)
    q = queries_near(x, QUERIES, spread, seed=n + d)
    start = time.perf_counter()
    index = TreeIndex.build(x)
    build_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    brute_sample(x, q, SAMPLES, gen)  # warm-up
    stats = {}
    for b in backends:  # warm-up (caches the cut; compiles or loads the numba kernels)
        stats[b] = index.sample(q, SAMPLES, temperature=TAU, seed=0, backend=b)[2]
    brute_s: list[float] = []
    tree_s: dict[str, list[float]] = {b: [] for b in backends}
    for r in range(repeats):
        start = time.perf_counter()
        brute_sample(x, q, SAMPLES, gen)
        brute_s.append(time.perf_counter() - start)
        for b in backends:
            start = time.perf_counter()
            stats[b] = index.sample(q, SAMPLES, temperature=TAU, seed=r + 1, backend=b)[2]
            tree_s[b].append(time.perf_counter() - start)
    samples = QUERIES * SAMPLES
    rows = []
    for b in backends:
        bm, tm, st = statistics.median(brute_s), statistics.median(tree_s[b]), stats[b]
        paired = statistics.median(bs / ts for bs, ts in zip(brute_s, tree_s[b]))
        rows.append(CostRow(
            n, d, spread, b, build_s, index.memory_bytes(), x.numel() * 4, 1e6 * bm / samples,
            1e6 * tm / samples, bm / tm, paired, st.scored_per_sample,
            st.points_scored / samples, n / SAMPLES, st.acceptance_rate, st.rounds,
            st.cut_nodes, brute_s, tree_s[b],
        ))  # fmt: skip
    return rows


def print_cost(rows: list[CostRow]) -> None:
    print(
        f"{'N':>10} {'d':>4} {'spread':>6} {'backend':>7} {'build s':>8} {'index MB':>9} {'brute us':>9} "
        f"{'tree us':>8} {'ratio':>6} {'paired':>6} {'scored/s':>9} {'pts/s':>7} {'acc':>5}"
    )
    for r in rows:
        print(
            f"{r.n:>10} {r.d:>4} {r.spread:>6} {r.backend:>7} {r.build_s:>8.1f} {r.index_bytes / 2**20:>9.0f} "
            f"{r.brute_us_per_sample:>9.1f} {r.tree_us_per_sample:>8.1f} {r.ratio:>6.1f} "
            f"{r.ratio_paired:>6.1f} {r.tree_scored_per_sample:>9.1f} "
            f"{r.tree_points_per_sample:>7.1f} {r.acceptance:>5.2f}"
        )


def verdict(rows: list[CostRow]) -> list[str]:
    """Whether the tree costs <= 1/20 of brute force per sample at N = 1M, per (d, spread)."""
    lines = []
    for r in rows:
        if r.n == 1_000_000:
            met = "MET" if r.ratio >= TARGET_RATIO else "NOT MET"
            lines.append(
                f"N=1M d={r.d} spread={r.spread} {r.backend}: brute/tree = {r.ratio:.1f} -> {met}"
            )
    return lines


def backend_list(choice: str, threads: int) -> list[str]:
    """The backends to time; sets numba's thread count when numba is used."""
    names = ["torch", "numba"] if choice == "both" else [choice]
    if choice == "auto":
        names = ["numba" if numba_version() else "torch"]
    if "numba" in names:
        import numba

        numba.set_num_threads(threads)
    return names


def numba_version() -> str | None:
    """numba's version, or None when it does not import."""
    try:
        import numba
    except ImportError:
        return None
    return str(numba.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--ten-million", action="store_true", help="add N = 10M, d = 64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spreads", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--sizes", type=int, nargs="+", help="N values (default 10k 100k 1M)")
    ap.add_argument("--dims", type=int, nargs="+", help="d values (default 64 384)")
    ap.add_argument("--skip-exactness", action="store_true", help="skip part (a)")
    ap.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    ap.add_argument(
        "--backend", choices=["auto", "torch", "numba", "both"], default="auto",
        help="sampler backend(s) to time (auto: numba when it imports)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=OUT / "mining.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backends = backend_list(args.backend, args.threads)
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    dims = args.dims or ([64] if args.quick else [64, 384])
    configs = [(n, d) for d in dims for n in sizes if n > 0]
    if args.ten_million:
        configs.append((10_000_000, 64))
    draws = 20_000 if args.quick else 200_000
    fit = []
    for b in [] if args.skip_exactness else backends:
        fit += exactness(10_000, 64, args.spreads[-1], draws, 4, b)
    for row in fit:
        print(f"(a) {row['backend']} query {row['query']}: chi2 p = {row['chi2_p']:.3f}, TV = {row['tv']:.4f} "
              f"(multinomial reference TV = {row['tv_reference_multinomial']:.4f})")  # fmt: skip
    rows = []
    for spread in args.spreads:
        for n, d in configs:
            rows += cost(n, d, spread, 1 if args.quick else args.repeats, backends)
            print_cost(rows[-len(backends) :])
    print_cost(rows)
    for line in verdict(rows):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "torch": torch.__version__, "threads": args.threads,
            "tau": TAU, "clusters": CLUSTERS, "queries": QUERIES, "samples": SAMPLES,
            "backends": backends, "numba": numba_version()}  # fmt: skip
    report = {"meta": meta, "exactness": fit, "cost": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
