"""End to end: ``torchrun -m dualforge train`` on 2 CPU processes (gloo) trains the model that one
process trains, and resumes from a checkpoint whatever the process count.

The global batch is the same for every world size, so a dropout-free tiny BERT must end within
1e-4 of the one-process weights (float reduction order is all that differs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dualforge.modeling import DualEncoder, Encoder, save_model
from dualforge.train.checkpoint import LATEST
from dualforge.train.metrics_log import read_metrics_log
from tests.conftest import make_tiny_bert
from tests.distributed.launch import ROOT, run_workers

TIMEOUT = 300


@pytest.fixture(scope="module")
def still_model(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A tiny random BERT without dropout, in sentence-transformers format."""
    folder = tmp_path_factory.mktemp("still-model")
    bert = make_tiny_bert(len(tokenizer), dropout=0.0)
    save_model(DualEncoder(tokenizer, Encoder(bert, "mean", True), max_seq_length=32), folder)
    return folder


def overrides(model: Path, data: Path, out: Path, name: str, steps: int = 3) -> list[str]:
    return [
        f"model.name={model}", "model.query_max_length=16", "model.doc_max_length=32",
        f"data.path={data}", "data.dev_fraction=0.0", "optim.batch_size=16", "optim.lr=1e-3",
        f"optim.max_steps={steps}", "optim.warmup_ratio=0.0", "gradcache.chunk_size=4",
        "gradcache.precision=fp32", "eval.before=true", "eval.batch_size=4",
        f"run.output_dir={out}", f"run.name={name}", "run.progress=false", "run.device=cpu",
        "run.save_every=1", "run.keep_checkpoints=10",
    ]  # fmt: skip


def launch(world: int, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=world -m dualforge train`` (killed on timeout)."""
    config = tmp / "empty.yaml"
    config.write_text("{}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world}", "-m", "dualforge", "train", str(config), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def weights(run: Path, folder: str = "final") -> dict[str, torch.Tensor]:
    """Every tensor of an exported model folder (``run/final`` by default)."""
    root = run / folder if folder else run
    files = sorted(root.rglob("*.safetensors"))
    assert files, f"no exported weights under {root}"
    return {f"{f.relative_to(root)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def rewind(run: Path, step: int) -> None:
    """Make ``run`` look killed right after its step-``step`` checkpoint: later checkpoints and
    the exported model removed, the latest-pointer set back."""
    root = run / "checkpoints"
    for folder in root.glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            subprocess.run(["rm", "-r", str(folder)], check=True)
    (root / LATEST).write_text(f"step-{step:07d}")
    subprocess.run(["rm", "-r", str(run / "final")], check=True)


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, still_model: Path, tiny_beir: Path
) -> dict[str, Path]:
    """One process (W=1) and two processes (W=2) of the same config, uninterrupted."""
    out = tmp_path_factory.mktemp("torchrun")
    for world in (1, 2):
        launch(world, overrides(still_model, tiny_beir, out, f"w{world}"), out)
    return {"w1": out / "w1", "w2": out / "w2", "out": out}


def test_two_processes_train_the_one_process_model(
    runs: dict[str, Path], still_model: Path
) -> None:
    w1, w2 = weights(runs["w1"]), weights(runs["w2"])
    assert max_diff(w1, w2) <= 1e-4
    assert max_diff(w1, weights(still_model, "")) > 1e-3  # 3 Adam steps moved them 10x more
    losses = {
        n: [r["loss"] for r in read_metrics_log(runs[n] / "metrics.jsonl") if r["event"] == "train"]
        for n in ("w1", "w2")
    }
    assert losses["w1"] == pytest.approx(losses["w2"], rel=1e-5)
    start_event = next(
        r for r in read_metrics_log(runs["w2"] / "metrics.jsonl") if r["event"] == "start"
    )
    assert start_event["processes"] == 2 and start_event["precision"] == "fp32"


@pytest.mark.parametrize("world", [2, 1])
def test_a_two_process_run_resumes_with_any_process_count(
    runs: dict[str, Path], still_model: Path, tiny_beir: Path, world: int
) -> None:
    """Resumed after step 1 with W processes, the W=2 run ends where it ended uninterrupted."""
    out = runs["out"] / f"resume-{world}"
    subprocess.run(["cp", "-r", str(runs["w2"]), str(out)], check=True)
    rewind(out, 1)
    launch(
        world,
        [*overrides(still_model, tiny_beir, runs["out"], out.name), "run.resume=true"],
        runs["out"],
    )
    assert max_diff(weights(out), weights(runs["w2"])) <= (0.0 if world == 2 else 1e-4)
    resumed = [r for r in read_metrics_log(out / "metrics.jsonl") if r["event"] == "resume"]
    assert resumed[-1]["step"] == 1 and resumed[-1]["processes"] == world


def test_sharded_evaluation_equals_one_process(runs: dict[str, Path]) -> None:
    """Both ranks encode half the test corpus each (gathered); the metrics of the same start model
    are the one-process metrics, and every rank got them (rank 0 wrote them)."""
    reports = {n: json.loads((runs[n] / "report.json").read_text()) for n in ("w1", "w2")}
    before = {n: r["before"] for n, r in reports.items()}
    assert before["w1"].keys() == before["w2"].keys() and before["w1"]
    for name, value in before["w1"].items():
        assert before["w2"][name] == pytest.approx(value, abs=1e-9), name
    for name, value in reports["w1"]["metrics"].items():
        assert reports["w2"]["metrics"][name] == pytest.approx(value, abs=1e-6), name


def test_distilling_from_a_teacher_in_the_loop_under_two_processes(
    tmp_path: Path, still_model: Path, tiny_beir: Path
) -> None:
    """Each rank's teacher scores its rows of the mined batch and the scores are gathered: the
    two-process run distils exactly as one process does."""
    distill = ["mining.strategy=static", "mining.num_negatives=2", "mining.backend=torch",
               "eval.before=false", "data.test_split=null", "loss.name=kl",
               f"loss.distill.teacher={still_model}", "loss.distill.normalize=zscore",
               "loss.distill.weight=0.5"]  # fmt: skip
    for world in (1, 2):
        args = [*overrides(still_model, tiny_beir, tmp_path, f"w{world}", steps=3), *distill]
        launch(world, args, tmp_path)
    logs = {w: read_metrics_log(tmp_path / f"w{w}" / "metrics.jsonl") for w in (1, 2)}
    steps = {w: [r for r in log if r["event"] == "train"] for w, log in logs.items()}
    assert [r["distill"] for r in steps[2]] == pytest.approx(
        [r["distill"] for r in steps[1]], rel=1e-5
    )
    assert [r["loss"] for r in steps[2]] == pytest.approx([r["loss"] for r in steps[1]], rel=1e-5)
    assert [r["teacher_pairs"] for r in steps[2]] == [8 * 3] * 3  # rank 0 scored its 8 rows
    assert max_diff(weights(tmp_path / "w1"), weights(tmp_path / "w2")) <= 1e-4


@pytest.mark.parametrize(("strategy", "holder"), [("refresh", "ddp"), ("dynamic", "fsdp")])
def test_mined_negatives_under_two_processes_are_the_one_process_ones(
    tmp_path: Path, still_model: Path, tiny_beir: Path, strategy: str, holder: str
) -> None:
    """Re-encoding is sharded and gathered, so rank 0's store holds the one-process vectors and
    draws the one-process negatives (filter on): same negatives, losses and weights."""
    mining = [f"mining.strategy={strategy}", "mining.num_negatives=2", "mining.refresh_every=2",
              "mining.landmarks=0.5", "mining.holdout=4", "mining.recent=4",
              "mining.backend=torch", "eval.before=false", "data.test_split=null",
              f"run.strategy={holder}", "mining.filter=absolute", "mining.margin=0.05"]  # fmt: skip
    for world in (1, 2):
        args = [*overrides(still_model, tiny_beir, tmp_path, f"w{world}", steps=4), *mining]
        launch(world, args, tmp_path)
    logs = {w: read_metrics_log(tmp_path / f"w{w}" / "metrics.jsonl") for w in (1, 2)}
    losses = {w: [r["loss"] for r in log if r["event"] == "train"] for w, log in logs.items()}
    assert len(losses[1]) == 4 and losses[2] == pytest.approx(losses[1], rel=1e-5)
    refreshes = {w: [r["step"] for r in log if r["event"] == "mining"] for w, log in logs.items()}
    assert refreshes[1] == refreshes[2] and refreshes[1]
    drawn = {
        w: [r["negatives_crc32"] for r in log if r["event"] == "train"] for w, log in logs.items()
    }
    assert drawn[1] == drawn[2] and len(set(drawn[1])) == 4  # the same negatives, every step
    assert max_diff(weights(tmp_path / "w1"), weights(tmp_path / "w2")) <= 1e-4


def test_fsdp2_trains_the_one_process_model_and_its_checkpoints_resume_anywhere(
    runs: dict[str, Path], still_model: Path, tiny_beir: Path
) -> None:
    """``run.strategy=fsdp``: FSDP2 shards on CPU/gloo, gradient reduce-scatter deferred across
    the replays; same weights as one process; a full-state checkpoint that W=1 resumes."""
    out = runs["out"]
    launch(2, [*overrides(still_model, tiny_beir, out, "fsdp"), "run.strategy=fsdp"], out)
    fsdp = out / "fsdp"
    assert max_diff(weights(fsdp), weights(runs["w1"])) <= 1e-4
    start = next(r for r in read_metrics_log(fsdp / "metrics.jsonl") if r["event"] == "start")
    assert start["strategy"] == "fsdp" and start["processes"] == 2
    again = out / "fsdp-resumed"
    subprocess.run(["cp", "-r", str(fsdp), str(again)], check=True)
    rewind(again, 1)
    launch(1, [*overrides(still_model, tiny_beir, out, again.name), "run.resume=true"], out)
    assert max_diff(weights(again), weights(fsdp)) <= 1e-4


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_a_killed_rank_is_restarted_by_torchrun_and_resumes(
    tmp_path: Path, still_model: Path, tiny_beir: Path
) -> None:
    """SIGKILL rank 1 after the 3rd checkpoint: ``torchrun --max-restarts=1`` restarts the job,
    ``run.resume=true`` continues from the newest checkpoint, and the run ends where an
    uninterrupted one does."""
    steps = 24
    base = [*overrides(still_model, tiny_beir, tmp_path, "plain", steps=steps), "eval.before=false"]
    launch(2, base, tmp_path)
    args = [*overrides(still_model, tiny_beir, tmp_path, "killed", steps=steps),
            "eval.before=false", "run.resume=true"]  # fmt: skip
    config = tmp_path / "empty.yaml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", "-m", "dualforge", "train", str(config), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # fmt: skip  # restarts: pytorch#135712
    job = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    third = tmp_path / "killed" / "checkpoints" / "step-0000003"
    deadline = time.monotonic() + TIMEOUT
    while not third.is_dir() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    agent_children = _children(job.pid)
    assert third.is_dir() and agent_children, "the run ended before it could be killed"
    os.kill(max(agent_children), signal.SIGKILL)  # the last-started worker: rank 1
    _, err = job.communicate(timeout=TIMEOUT)
    assert job.returncode == 0, err[-3000:]
    events = read_metrics_log(tmp_path / "killed" / "metrics.jsonl")
    resumed = [r["step"] for r in events if r["event"] == "resume"]
    assert len(resumed) == 1 and 3 <= resumed[0] < steps
    assert max_diff(weights(tmp_path / "killed"), weights(tmp_path / "plain")) == 0.0


def test_the_index_is_held_once_per_job(tmp_path: Path, still_model: Path, tiny_beir: Path) -> None:
    """Under 2 processes only rank 0 builds the miner; rank 1 encodes its share of what rank 0
    asks for and receives rank 0's mined batch."""
    args = [*overrides(still_model, tiny_beir, tmp_path, "parts"), "mining.strategy=dynamic",
            "mining.num_negatives=2", "mining.landmarks=0.5", "mining.backend=torch"]  # fmt: skip
    run_workers([json.dumps({"mode": "parts", "overrides": args}), str(tmp_path)], 2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["miner"] for r in ranks] == ["NegativeMiner", None]
    assert ranks[0]["negatives"] == ranks[1]["negatives"]
    assert all(len(n) == 2 for n in ranks[0]["negatives"])


def test_two_nodes_with_c10d_rendezvous_train_the_one_process_model(
    runs: dict[str, Path], still_model: Path, tiny_beir: Path
) -> None:
    """Two torchrun agents (two "nodes" on localhost, one process each) meet through c10d
    rendezvous, as on a cluster; they train what one process trains."""
    from tests.distributed.launch import free_port

    out = runs["out"]
    config = out / "empty.yaml"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=dualforge-test",
                "-m",
                "dualforge",
                "train",
                str(config),
                *overrides(still_model, tiny_beir, out, "nodes"),
                "run.threads=1",
            ],
            env=env,
            cwd=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [a.communicate(timeout=TIMEOUT)[1] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert max_diff(weights(out / "nodes"), weights(runs["w1"])) <= 1e-4
    start = next(
        r for r in read_metrics_log(out / "nodes" / "metrics.jsonl") if r["event"] == "start"
    )
    assert start["processes"] == 2


def test_late_interaction_under_two_processes_trains_the_one_process_model(
    tmp_path: Path, still_model: Path, tiny_beir: Path
) -> None:
    """Token representations of different lengths are gathered (padded to the longest of both
    ranks); the MaxSim shares sum to the full-batch loss; evaluation is sharded; DDP and FSDP2."""
    late = ["model.kind=late_interaction", "model.token_dim=16", "model.query_max_length=12",
            "eval.dims=[8,16]", "loss.matryoshka.dims=[8,16]"]  # fmt: skip
    for world in (1, 2):
        launch(world, [*overrides(still_model, tiny_beir, tmp_path, f"w{world}"), *late], tmp_path)
    assert max_diff(weights(tmp_path / "w1"), weights(tmp_path / "w2")) <= 1e-4
    fsdp = [*overrides(still_model, tiny_beir, tmp_path, "fsdp"), *late, "run.strategy=fsdp"]
    launch(2, fsdp, tmp_path)  # the token projection starts from one seed on both ranks
    assert max_diff(weights(tmp_path / "w1"), weights(tmp_path / "fsdp")) <= 1e-4
    reports = [json.loads((tmp_path / f"w{w}" / "report.json").read_text()) for w in (1, 2)]
    for name, value in reports[0]["before_by_dim"]["8"].items():
        assert reports[1]["before_by_dim"]["8"][name] == pytest.approx(value, abs=1e-9)


def test_a_lora_decoder_under_ddp_and_fsdp2_trains_the_one_process_model(
    tmp_path: Path, minilm_path: Path, tiny_beir: Path
) -> None:
    """LoRA (frozen base, adapter-only checkpoints) with activation checkpointing on a tiny
    decoder: DDP and FSDP2 over 2 processes end where one process ends."""
    from tests.conftest import decoder_tokenizer, make_tiny_decoder

    model = tmp_path / "decoder"
    tok = decoder_tokenizer(minilm_path)
    make_tiny_decoder(len(tok), dropout=0.0).save_pretrained(str(model))
    tok.save_pretrained(str(model))
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.dropout=0.0",
            "model.normalize=true", "gradcache.checkpointing=true", "eval.before=false"]  # fmt: skip
    for world, strategy in ((1, "ddp"), (2, "ddp"), (2, "fsdp")):
        args = [*overrides(model, tiny_beir, tmp_path, f"{strategy}{world}", 2), *lora]
        launch(world, [*args, f"run.strategy={strategy}"], tmp_path)
    ckpt = tmp_path / "fsdp2" / "checkpoints"
    saved = load_file(str(next(ckpt.rglob("model.safetensors"))))
    assert saved and all("lora_" in name for name in saved)
    one = weights(tmp_path / "ddp1")
    assert max_diff(weights(tmp_path / "ddp2"), one) <= 1e-4
    assert max_diff(weights(tmp_path / "fsdp2"), one) <= 1e-4
