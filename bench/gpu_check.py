"""GPU check (one CUDA device, at most ~8 minutes): exactness, speed and memory of the cached step.

Parts, each printed as soon as it is measured and written to the JSON output:

1. exactness on CUDA with dropout on (the replay restores the CUDA RNG state): cached vs plain
   over the same chunks (``check_gradients``), MiniLM, batch 64, chunk 8, in fp32 (tolerance
   1e-5 relative) and bf16 autocast (stated tolerance 5e-2: bf16 has an 8-bit mantissa);
2. MiniLM step time and peak GPU memory (``torch.cuda.max_memory_allocated``), plain full-batch vs
   GradCache (chunk 64), SciFact (query, title + abstract) pairs, documents cut at 256 tokens, bf16
   autocast: at batch 512, then doubling batches until each method runs out of memory (capped at
   16384 pairs);
3. the main job's steps per second: ``dualforge train configs/scifact-minilm.yaml`` for 20 steps
   (no evaluation), from its metrics.jsonl;
4. the loss phase alone at batch 1,048,576 (random unit representations, D=768, one positive per
   query, tiled InfoNCE at the automatic GPU tile budget, fp32): forward + backward time and
   ``torch.cuda.max_memory_allocated``; batch 131,072 first, and 1,048,576 only when 64x its time
   fits the time left (else the prediction is reported);
5. the ``flat`` mining store on CUDA at 1M targets: mined negatives per second, filter off and on,
   and the total variation of 20,000 draws against the exact softmax (issue 25).

Run on the GPU machine (the device tool; see bench/gpu_check.sh):

    bash bench/gpu_check.sh            # writes $OUT/gpu_check.json (or bench/out/gpu_check.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import OUT, ROOT, load_pairs

CAP = 16384


def exactness(report: dict[str, Any]) -> None:
    from dualforge.train.check_grad import check_gradients

    for name, dtype, tol in (("fp32", None, 1e-5), ("bf16", torch.bfloat16, 5e-2)):
        check = check_gradients("minilm", 64, 8, dropout=True, device="cuda", autocast_dtype=dtype)
        report[f"exactness_{name}"] = {
            "max_rel": check.diff.max_rel, "max_abs": check.diff.max_abs,
            "tolerance": tol, "passed": check.diff.max_rel <= tol,
        }  # fmt: skip
        print(f"exactness {name}: max_rel {check.diff.max_rel:.2e} (tolerance {tol:g})", flush=True)


def one_step(
    model: Any, method: str, batch: int, pairs: tuple[list[str], list[str]]
) -> dict[str, float]:
    """Time one training step (after a warm-up step) and its peak GPU memory."""
    from dualforge import GradCache
    from dualforge.losses import InfoNCE, info_nce

    queries, docs = pairs[0][:batch], pairs[1][:batch]
    q = {k: v.cuda() for k, v in model.tokenize(queries, "query", 64).items()}
    d = {k: v.cuda() for k, v in model.tokenize(docs, "document", 256).items()}
    gc = GradCache(
        [model.query_encoder, model.doc_encoder], InfoNCE(), 64, autocast_dtype=torch.bfloat16
    )

    def step() -> None:
        if method == "cached":
            gc.step(q, d)
        else:
            with torch.autocast("cuda", torch.bfloat16):
                qr, dr = model(q, "query"), model(d, "document")
            info_nce(qr.float(), dr.float()).backward()
        model.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - start,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def memory(report: dict[str, Any]) -> None:
    from dualforge.modeling import load_model

    pairs = load_pairs(809, seed=0)
    reps = max(1, -(-CAP // len(pairs[0])))
    pairs = (pairs[0] * reps, pairs[1] * reps)  # repeated pairs beyond 809 (timing only)
    model = load_model("minilm").cuda().train()
    rows: list[dict[str, Any]] = []
    for method in ("plain", "cached"):
        batch = 512
        while batch <= CAP:
            try:
                row = {"method": method, "batch": batch, **one_step(model, method, batch, pairs)}
            except torch.OutOfMemoryError:
                rows.append({"method": method, "batch": batch, "oom": True})
                print(f"{method} batch {batch}: out of memory", flush=True)
                break
            finally:
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            rows.append(row)
            print(
                f"{method} batch {batch}: {row['seconds']:.3f} s, {row['peak_gib']:.2f} GiB",
                flush=True,
            )
            batch *= 2
    report["memory"] = rows
    at512 = {r["method"]: r for r in rows if r["batch"] == 512 and "seconds" in r}
    if len(at512) == 2:
        report["cached_over_plain_at_512"] = at512["cached"]["seconds"] / at512["plain"]["seconds"]


def main_job(report: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dualforge", "train", str(ROOT / "configs" / "scifact-minilm.yaml"),
               "optim.max_steps=20", "eval.before=false", "data.test_split=null", "run.save_every=0",
               f"run.output_dir={tmp}", "run.name=gpu", "run.progress=false"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=300)
        log = [json.loads(line) for line in (Path(tmp) / "gpu" / "metrics.jsonl").open()]
    steps = [r for r in log if r["event"] == "train"]
    first = next(r for r in log if r["event"] == "start")
    seconds = steps[-1]["time"] - steps[0]["time"]
    report["main_job"] = {
        "steps_per_s": (len(steps) - 1) / seconds, "wall_s": time.perf_counter() - start,
        "device": first["device"], "precision": first["precision"],
    }  # fmt: skip
    print(f"main job: {report['main_job']}", flush=True)


def loss_phase(report: dict[str, Any], budget_s: float = 150.0) -> None:
    """Part 4: the tiled loss alone at a very large batch."""
    import torch.nn.functional as F

    from dualforge.losses import InfoNCE, LossInputs

    rows = []
    for batch in (131_072, 1_048_576):
        if rows and rows[-1]["seconds"] * (batch / rows[-1]["batch"]) ** 2 > budget_s:
            predicted = rows[-1]["seconds"] * (batch / rows[-1]["batch"]) ** 2
            rows.append({"batch": batch, "skipped": True, "predicted_s": predicted})
            print(f"loss phase batch {batch}: skipped, predicted {predicted:.0f} s", flush=True)
            break
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        q = F.normalize(torch.randn(batch, 768, device="cuda"), dim=-1).requires_grad_()
        d = F.normalize(torch.randn(batch, 768, device="cuda"), dim=-1).requires_grad_()
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = InfoNCE(temperature=0.05)(q, d, LossInputs(), slice(0, batch)).loss
        loss.backward()
        torch.cuda.synchronize()
        row = {
            "batch": batch, "seconds": time.perf_counter() - start, "loss": float(loss),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reps_and_grads_gib": 4 * q.numel() * 4 / 2**30,
        }  # fmt: skip
        rows.append(row)
        print(
            f"loss phase batch {batch}: {row['seconds']:.1f} s, {row['peak_gib']:.2f} GiB",
            flush=True,
        )
        del q, d, loss
    report["loss_phase"] = rows


def flat_mining(report: dict[str, Any], targets: int = 1_000_000, seconds: float = 20.0) -> None:
    """Part 5: the ``flat`` vector store on CUDA: mined negatives per second at 1M targets
    (d = 384, 64 queries x 3 softmax negatives per draw, filter off and absolute 0.05), and the
    distribution check of part (a) of docs/mining.md: draws vs the exact restricted softmax."""
    import math

    from dualforge.mining.negatives import exclusion_matrix, mine, positive_ceiling
    from dualforge.mining.stores import StoreParams, make_store

    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.nn.functional.normalize(
        torch.randn(targets, 384, device="cuda", generator=gen), dim=1
    )
    pos = torch.randint(0, targets, (64,), device="cuda", generator=gen)
    noise = 0.3 / math.sqrt(384) * torch.randn(64, 384, device="cuda", generator=gen)
    q = torch.nn.functional.normalize(x[pos] + noise, dim=1)
    store = make_store("flat", x, StoreParams(device="cuda"))
    exclude = exclusion_matrix([[int(p)] for p in pos.cpu()])
    rows = []
    for rule in ("none", "absolute"):
        ceiling = None if rule == "none" else positive_ceiling((q * x[pos]).sum(1), rule, 0.05)
        draws, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            mine(store, q, 3, mode="softmax", exclude=exclude, ceiling=ceiling, generator=gen)
            draws += 1
        torch.cuda.synchronize()
        rate = draws * 64 * 3 / (time.perf_counter() - start)
        rows.append({"targets": targets, "filter": rule, "negatives_per_s": rate, "draws": draws})
        print(
            f"flat mining on CUDA, {targets} targets, filter {rule}: {rate:.0f} negatives/s",
            flush=True,
        )
    got = mine(store, q[:2], 20_000, mode="softmax", exclude=exclude[:2], temperature=0.05,
               generator=gen).ids  # fmt: skip
    logits = (q[:2] @ x.T).double() / 0.05
    logits[torch.arange(2), pos[:2]] = -math.inf
    p = torch.softmax(logits, 1).cpu()
    freq = (
        torch.stack([torch.bincount(torch.from_numpy(g), minlength=targets) for g in got]) / 20_000
    )
    ref = torch.multinomial(p, 20_000, replacement=True)  # the same number of exact draws
    ref_freq = torch.stack([torch.bincount(r, minlength=targets) for r in ref]) / 20_000
    tv = [0.5 * float((f - pi).abs().sum()) for f, pi in zip(freq.double(), p)]
    tv_ref = [0.5 * float((f - pi).abs().sum()) for f, pi in zip(ref_freq.double(), p)]
    rows.append({"check": "total variation of 20,000 draws vs the exact softmax", "tv": tv,
                 "tv_multinomial_reference": tv_ref})  # fmt: skip
    print(f"flat mining on CUDA: total variation {tv} (multinomial reference {tv_ref})", flush=True)
    report["flat_mining"] = rows


PARTS = {
    "exactness": exactness, "loss_phase": loss_phase, "memory": memory, "main_job": main_job,
    "flat_mining": flat_mining,
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output", type=Path, default=Path(os.environ.get("OUT", OUT)) / "gpu_check.json"
    )
    parser.add_argument(
        "--parts", nargs="*", default=list(PARTS), choices=list(PARTS), help="parts to run"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: run bench/gpu_check.sh on the GPU machine")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name in args.parts:
        PARTS[name](report)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
