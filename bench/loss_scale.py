"""How large a contrastive batch fits: the loss phase alone, and one whole training step.

Part 1, the loss phase (``--sizes``): random unit representations (D=384), one hard negative per
query, Matryoshka dims 32/64/128/256/384 (renormalised prefixes), 2% of the documents carry a
duplicate id (masked as false negatives), temperature 0.05; forward + backward of the loss on
one batch. Arms, each in a fresh process (peak RSS = its VmHWM):

    dense   the loss as it was before tiling: the whole (B, B*n) score matrix, a dense mask,
            F.cross_entropy, one full loss per Matryoshka prefix (written out here)
    tiled   dualforge.losses.InfoNCE: online log-sum-exp over tiles, every dim in one pass
    dense-each  (worker only, ``--worker loss --arm dense-each``) dense, but each Matryoshka
            dim's loss built and backpropagated on its own: the same gradient in a fifth of the
            memory, the kindest dense baseline where the one-graph dense does not fit

``dense`` runs only where its matrices are predicted to fit in ``--dense-gib`` (four fp32
``(B, B*n)`` matrices per dim held for the backward). The mask-building step is timed
too: the Python double loop the old collate ran vs ``PositiveCodes.from_ids``.

Part 2, one training step end to end (``--e2e-sizes``): a tiny random BERT (2 layers, 64 hidden)
over synthetic pairs (queries 4-10 words, documents 15-40), one optimizer step:

    dualforge        ``dualforge train`` (CLI, JSONL data, chunk 2048, fp32, no evaluation)
    st-cached-mnrl   sentence-transformers CachedMultipleNegativesRankingLoss
                     (mini_batch_size 2048), the same model and texts, one optimizer step

Run (numbers in docs/benchmarks.md)::

    python bench/loss_scale.py                          # everything (~1 h on 2 cores)
    python bench/loss_scale.py --e2e-sizes              # loss phase only
    python bench/loss_scale.py --quick                  # smoke test (tests/bench)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import OUT, finish_report, parse_args, tiny_model

HERE = Path(__file__).resolve()
DIMS = (32, 64, 128, 256, 384)
TEMPERATURE = 0.05
DUPLICATES = 0.02


def rss_mib(key: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def synthetic_ids(batch: int, n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """Document ids (``DUPLICATES`` of them copies of another row's id) and each query's
    positive ids (its own positive's)."""
    rng = random.Random(seed)
    ids = [f"d{j}" for j in range(batch * n)]
    for j in rng.sample(range(batch * n), int(DUPLICATES * batch * n)):
        ids[j] = ids[rng.randrange(batch * n)]
    return ids, [[ids[i * n]] for i in range(batch)]


def loss_worker(
    arm: str, batch: int, dims: tuple[int, ...], budget: int | None, repeats: int
) -> dict[str, Any]:
    """Forward + backward of the loss phase, after a warm-up at an eighth of the batch (run in
    its own process); the median of ``repeats``."""
    import torch
    import torch.nn.functional as F

    from dualforge.losses import InfoNCE, LossInputs, Nesting, PositiveCodes

    torch.manual_seed(0)
    n, dim = 2, 384
    q = F.normalize(torch.randn(batch, dim), dim=-1).requires_grad_()
    d = F.normalize(torch.randn(batch * n, dim), dim=-1).requires_grad_()
    ids, positives = synthetic_ids(batch, n, seed=1)
    t0 = time.perf_counter()
    codes = PositiveCodes.from_ids(ids, positives)
    codes_s = time.perf_counter() - t0
    nesting = Nesting(dims, renormalize=True) if len(dims) > 1 else None
    loss_fn = InfoNCE(TEMPERATURE, nesting=nesting, **({"budget": budget} if budget else {}))

    def step(q: Any, d: Any, codes: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        if arm == "tiled":
            loss = loss_fn(q, d, LossInputs(positives=codes), slice(0, q.shape[0])).loss
        elif arm == "dense-each":  # one dim's graph at a time: the dense arm's memory / dims
            mask, loss = codes.dense(), q.new_zeros(())
            for m in dims:
                part = dense_loss(q, d, mask, (m,), renormalize=len(dims) > 1)
                part.backward()
                loss = loss + part.detach()
            return loss, time.perf_counter() - t0
        else:
            loss = dense_loss(q, d, codes.dense(), dims)
        loss.backward()
        return loss, time.perf_counter() - t0

    small = batch // 8 or 1  # warm-up: thread pools, kernels
    step(q[:small].detach().requires_grad_(), d[: small * n].detach().requires_grad_(),
         PositiveCodes.from_ids(ids[: small * n], positives[:small]))  # fmt: skip
    before = rss_mib("VmRSS")
    times = []
    for _ in range(repeats):
        q.grad = d.grad = None
        loss, seconds = step(q, d, codes)
        times.append(seconds)
    return {
        "arm": arm, "batch": batch, "dims": list(dims), "loss": float(loss.detach()),
        "seconds": sorted(times)[len(times) // 2], "times": times, "codes_s": codes_s,
        "peak_rss_mib": rss_mib(), "rss_before_loss_mib": before,
        "grad_norm_q": float(q.grad.norm()),  # type: ignore[union-attr]
    }  # fmt: skip


def dense_loss(
    q: Any, d: Any, mask: Any, dims: tuple[int, ...], renormalize: bool | None = None
) -> Any:
    """The pre-tiling loss: the whole score matrix at every prefix dim (nested prefixes
    renormalised, as the tiled arm's Nesting says, unless ``renormalize`` says otherwise)."""
    import torch
    import torch.nn.functional as F

    b, n = q.shape[0], d.shape[0] // q.shape[0]
    target = torch.arange(b) * n
    keep = mask.clone()
    keep[torch.arange(b), target] = False
    total = q.new_zeros(())
    for m in dims:
        qm, dm = q[:, :m], d[:, :m]
        if renormalize if renormalize is not None else len(dims) > 1:
            qm, dm = F.normalize(qm, dim=-1), F.normalize(dm, dim=-1)
        scores = (qm @ dm.T / TEMPERATURE).masked_fill(keep, float("-inf"))
        total = total + F.cross_entropy(scores, target)
    return total


def dense_gib(batch: int, dims: int, n: int = 2) -> float:
    """Predicted peak of the dense arm: four fp32 ``(B, B*n)`` matrices per dim."""
    return 4 * batch * batch * n * 4 * dims / 2**30


def mask_worker(batch: int) -> dict[str, Any]:
    """The old double-loop mask against ``PositiveCodes.from_ids`` on the same ids."""
    import torch

    from dualforge.losses import PositiveCodes

    ids, positives = synthetic_ids(batch, 2, seed=1)
    t0 = time.perf_counter()
    mask = torch.zeros(len(positives), len(ids), dtype=torch.bool)
    for i, pos in enumerate(positives):
        wanted = set(pos)
        for j, doc in enumerate(ids):
            if doc in wanted:
                mask[i, j] = True
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = PositiveCodes.from_ids(ids, positives)
    codes_s = time.perf_counter() - t0
    same = bool(torch.equal(codes.dense(), mask))
    return {"batch": batch, "loop_s": loop_s, "codes_s": codes_s, "same_mask": same}


def make_data(folder: Path, pairs: int) -> tuple[Path, Path]:
    """A tiny random BERT (sentence-transformers folder) and ``pairs`` synthetic JSONL pairs."""
    model = folder / "tiny-bert"
    data = folder / f"pairs-{pairs}.jsonl"
    if not model.is_dir():
        tiny_model(model, max_seq_length=32)
    if not data.is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        words = sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) > 3)[:5000]
        rng = random.Random(0)
        with data.open("w", encoding="utf-8") as f:
            for _ in range(pairs):
                query = " ".join(rng.choices(words, k=rng.randint(4, 10)))
                doc = " ".join(rng.choices(words, k=rng.randint(15, 40)))
                f.write(json.dumps({"query": query, "positive": doc}) + "\n")
    return model, data


def dualforge_step(folder: Path, batch: int, chunk: int) -> dict[str, Any]:
    """One ``dualforge train`` step through the CLI; peak RSS of that process."""
    model, data = make_data(folder, batch)
    run = folder / "runs"
    shutil.rmtree(run / f"step-{batch}", ignore_errors=True)  # a fresh run folder each time
    config = folder / "step.yaml"
    config.write_text("# every setting is an override of bench/loss_scale.py\n", encoding="utf-8")
    args = [
        "train", str(config), f"model.name={model}", "model.query_max_length=16",
        "model.doc_max_length=48", "data.format=jsonl", f"data.train_file={data}",
        "data.dev_fraction=0", "data.test_split=null", f"optim.batch_size={batch}",
        "optim.max_steps=1", f"gradcache.chunk_size={chunk}", "gradcache.precision=fp32",
        "eval.before=false", "run.save_every=0", f"run.output_dir={run}",
        f"run.name=step-{batch}", "run.progress=false",
    ]  # fmt: skip
    code = (
        "import sys, resource\n"
        "from dualforge.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"dualforge train failed:\n{done.stderr[-3000:]}")
    peak = next(int(x.split()[1]) for x in done.stdout.splitlines() if x.startswith("PEAK_KIB"))
    records = [json.loads(x) for x in (run / f"step-{batch}" / "metrics.jsonl").open()]
    train = next(r for r in records if r["event"] == "train")
    return {
        "arm": "dualforge", "batch": batch, "step_s": batch / train["examples_per_s"],
        "wall_s": wall,
        "peak_rss_mib": peak / 1024, "loss": train["loss"],
    }  # fmt: skip


def st_step(folder: Path, batch: int, chunk: int) -> dict[str, Any]:
    """One sentence-transformers CachedMNRL step on the same model and texts (own process)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
    )

    model_dir, data = make_data(folder, batch)
    rows = [json.loads(x) for x in data.open()]
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.train()
    loss_fn = CachedMultipleNegativesRankingLoss(
        model, scale=1 / TEMPERATURE, mini_batch_size=chunk, show_progress_bar=False
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    t0 = time.perf_counter()
    model.max_seq_length = 16
    queries = model.tokenize([r["query"] for r in rows])
    model.max_seq_length = 48
    docs = model.tokenize([r["positive"] for r in rows])
    loss = loss_fn([queries, docs], None)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - t0
    return {
        "arm": "st-cached-mnrl", "batch": batch, "step_s": seconds, "peak_rss_mib": rss_mib(),
        "loss": float(loss),
    }  # fmt: skip


def in_process(args: list[str]) -> dict[str, Any]:
    """Run ``loss_scale.py --worker ...`` in a fresh process and read its JSON line."""
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(HERE), *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def worker(args: argparse.Namespace) -> None:
    """The ``--worker`` entry: one measurement, printed as one JSON line."""
    if args.worker == "loss":
        dims = tuple(int(m) for m in args.dims.split(","))
        out = loss_worker(args.arm, args.batch, dims, args.budget, args.repeats)
    elif args.worker == "mask":
        out = mask_worker(args.batch)
    elif args.worker == "dualforge":
        out = dualforge_step(Path(args.folder), args.batch, args.chunk)
    else:
        out = st_step(Path(args.folder), args.batch, args.chunk)
    print(json.dumps(out))


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement the flags ask for, each in its own process."""
    dims = ",".join(str(m) for m in DIMS)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "loss": [],
                              "mask": [], "e2e": [], "cpu": _cpu()}  # fmt: skip
    for batch in args.mask_sizes:
        report["mask"].append(in_process(["--worker", "mask", "--batch", str(batch)]))
        print("mask", report["mask"][-1], flush=True)
    for dim_list in (dims, "384"):
        for batch in args.sizes:
            fits = dense_gib(batch, len(dim_list.split(","))) <= args.dense_gib
            arms = ["tiled"] + (["dense"] if fits else [])
            for arm in arms:
                repeats = "3" if batch <= 4096 else "1"  # the median of 3 where it is cheap
                flags = ["--worker", "loss", "--arm", arm, "--batch", str(batch),
                         "--dims", dim_list, "--repeats", repeats]  # fmt: skip
                report["loss"].append(in_process(flags))
                print("loss", report["loss"][-1], flush=True)
    folder = args.output.parent / "loss_scale_data"
    for batch in args.e2e_sizes:
        for arm in ("dualforge", "st"):
            flags = ["--worker", arm, "--batch", str(batch), "--chunk", str(args.chunk),
                     "--folder", str(folder)]  # fmt: skip
            report["e2e"].append(in_process(flags))
            print("e2e", report["e2e"][-1], flush=True)
    return report


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def print_report(report: dict[str, Any]) -> None:
    """The tables of docs/benchmarks.md."""
    print(f"\nCPU: {report['cpu']}")
    print("\nmask build (s): batch | old double loop | codes")
    for r in report["mask"]:
        print(
            f"  {r.get('batch')} | {r.get('loop_s', float('nan')):.2f} | {r.get('codes_s', float('nan')):.4f}"
        )
    print("\nloss phase: dims | batch | arm | seconds | peak RSS MiB | RSS before loss MiB")
    for r in report["loss"]:
        if "error" in r:
            print(f"  error: {r['error']}")
            continue
        print(f"  {len(r['dims'])} | {r['batch']} | {r['arm']} | {r['seconds']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {r['rss_before_loss_mib']:.0f}")  # fmt: skip
    print("\none training step: batch | arm | step s | peak RSS MiB")
    for r in report["e2e"]:
        if "error" in r:
            print(f"  error: {r['error']}")
            continue
        print(f"  {r['batch']} | {r['arm']} | {r['step_s']:.1f} | {r['peak_rss_mib']:.0f}")


def main(argv: list[str] | None = None) -> None:
    """Parse flags; run one worker, or every measurement and the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096, 16_384, 65_536])
    p.add_argument("--dense-gib", type=float, default=16.0)
    p.add_argument("--mask-sizes", type=int, nargs="*", default=[1024, 4096])
    p.add_argument("--e2e-sizes", type=int, nargs="*", default=[32_768, 131_072])
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--output", type=Path, default=OUT / "loss_scale.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--worker", choices=["loss", "mask", "dualforge", "st"], help=argparse.SUPPRESS)
    p.add_argument("--arm", default="tiled", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dims", default="384", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--folder", default="", help=argparse.SUPPRESS)
    quick = {"sizes": [256], "dense_gib": 1.0, "mask_sizes": [128], "e2e_sizes": [256],
             "chunk": 64}  # fmt: skip
    args = parse_args(p, quick, argv)
    if args.worker:
        worker(args)
        return
    finish_report(run_all(args), args.output, print_report)


if __name__ == "__main__":
    main()
