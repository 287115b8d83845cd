"""Every bench script's ``--quick`` mode runs in a subprocess and writes finite results.

The ones that take 30 s or more are marked ``slow`` (``pytest -m slow`` runs them), so the
default run stays under 12 minutes on two cores.

Each run is bounded by ``TIMEOUT_S``, runs in a temporary folder with one thread, and writes its
outputs (JSON, the SciFact cut, run folders, saved vectors) under ``tmp_path`` only. Besides the
exit code and the output keys, each test checks a number that a broken library would change: the
cached and plain gradients agree, the tree sampler matches the exact softmax, the oracle
strategy's expected gradient is the exact one, retrieval metrics lie in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dualforge

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"
TIMEOUT_S = 300  # per script; each takes 5-60 s on a loaded 2-core machine


def run_bench(script: str, args: list[str], cwd: Path, shared_data: Path) -> None:
    """Run ``bench/<script> args`` with the library under test; fail with its output tail."""
    env = os.environ | {
        "PYTHONPATH": str(Path(dualforge.__file__).parents[1]),
        "DUALFORGE_SHARED_DATA": str(shared_data),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-4000:]}"


def numbers(value: Any) -> Iterator[float]:
    """Every int or float inside a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield float(value)


def read_finite(path: Path) -> dict[str, Any]:
    """The JSON at ``path``, checked to hold numbers and only finite ones."""
    assert path.is_file(), f"{path.name} not written"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    values = list(numbers(data))
    assert values and all(math.isfinite(v) for v in values), f"non-finite number in {path.name}"
    return data


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_gradcache_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "gradcache.json"
    run_bench("gradcache.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    report = read_finite(out)
    assert report["check"]["rel_grad_diff_dualforge_vs_plain"] < 1e-4  # dropout off: exact
    (timing,) = report["timing"]
    assert all(timing["median_s"][m] > 0 for m in ("plain", "dualforge", "st"))
    assert len(report["rss"]) == 2 and all(r["peak_mib"] > 0 for r in report["rss"])
    assert report["rss_ratio"] > 0


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_matryoshka_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "matryoshka.json"
    run_bench("matryoshka.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    report = read_finite(out)
    assert report["step"]["ratio"] > 0
    rows = report["funnel_scifact"]["rows"]
    assert rows[0]["search"] == "exact 384" and 0 < rows[0]["quality"] <= 1
    assert (
        all(r["flops_ratio"] > 0 for r in rows) and len(report["funnel_scifact"]["budget_cv"]) == 4
    )
    synthetic = report["funnel_synthetic"]["rows"]
    assert synthetic[0]["quality"] > 0.5 and all(0 <= r["quality"] <= 1 for r in synthetic)


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_batch_size_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "batch_size.json"
    run_bench("batch_size.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    results = read_finite(out)["results"]
    assert [r["arm"] for r in results] == ["plain-4", "accum-4x4", "gradcache-16"]
    assert all(0 < r["ndcg@10"] <= 1 for r in results)


def test_mining_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "mining.json"
    run_bench("mining.py", ["--quick", "--out", str(out)], tmp_path, shared_data)
    report = read_finite(out)
    assert len(report["exactness"]) == 4 and len(report["cost"]) == 3
    # 20k exact draws land within TV ~0.01 of the softmax; a biased sampler lands far off.
    assert all(r["tv"] < 0.05 for r in report["exactness"])
    assert all(r["tree_us_per_sample"] > 0 for r in report["cost"])


def test_mining_train_cd_then_sweep_and_grad(tmp_path: Path, shared_data: Path) -> None:
    """Part cd saves the vectors that the sweep and mining_grad.py read."""
    vectors, common = tmp_path / "v.npz", ["--quick", "--workdir", str(tmp_path)]
    cd, sweep, grad = tmp_path / "cd.json", tmp_path / "sweep.json", tmp_path / "grad.json"
    args = ["--part", "cd", *common, "--save-vectors", str(vectors), "--out", str(cd)]
    run_bench("mining_train.py", args, tmp_path, shared_data)
    (point,) = read_finite(cd)["points"]
    assert point["step"] == 2 and {"stale", "dynamic_0.05"} <= set(point["drift"])
    assert point["grad"]["oracle"]["expected"] < 1e-9  # fresh vectors give the exact gradient
    args = ["--part", "sweep", *common, "--vectors", str(vectors), "--out", str(sweep)]
    run_bench("mining_train.py", args, tmp_path, shared_data)
    assert len(read_finite(sweep)["sweep"]["step2"]) == 4  # 2 landmark fractions x 2 kernels
    args = ["--quick", "--vectors", str(vectors), "--out", str(grad)]
    run_bench("mining_grad.py", args, tmp_path, shared_data)
    points = read_finite(grad)["points"]
    assert [p["k"] for p in points] == [4, 8]
    assert all(p["oracle"]["expected_fresh_pos"] < 1e-9 for p in points)


def test_mining_train_e_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "e.json"
    args = ["--part", "e", "--quick", "--workdir", str(tmp_path), "--out", str(out)]
    run_bench("mining_train.py", args, tmp_path, shared_data)
    runs = read_finite(out)["runs"]
    assert set(runs) == {"in_batch", "dynamic"}
    assert all(r["steps"] >= 1 and 0 < r["metrics"]["ndcg@10"] <= 1 for r in runs.values())


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_hardware_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "hardware.json"
    run_bench("hardware.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    report = read_finite(out)
    assert report["cpu"]["lscpu_model_name"] or report["cpu"]["cores"] > 0
    envs = report["precision"]["environments"]
    assert set(envs) == {"native", "avx2"}
    for e in envs.values():
        assert e["fp32_s"] > 0 and e["bf16_s"] > 0 and e["ratio_bf16_fp32"] > 0
        assert e["auto"] in ("fp32", "bf16") and e["auto_s"] in (e["fp32_s"], e["bf16_s"])
    # The oneDNN cap hides native bf16, so auto must fall back to fp32 under emulation.
    assert envs["avx2"]["auto"] == "fp32" and not envs["avx2"]["environment"]["native_bf16"]
    rows = report["keep_graphs"]["rows"]
    assert [r["point"] for r in rows] == [
        "plain", "nograd", "gradcache K=0", "gradcache K=1", "gradcache K=2"
    ]  # fmt: skip
    assert all(r["median_s"] > 0 and r["peak_mib"] > 0 and r["ratio_vs_plain"] > 0 for r in rows)


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_distributed_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "distributed.json"
    run_bench("distributed.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    arms = read_finite(out)["arms"]
    assert [(a["processes"], a["threads_per_process"]) for a in arms] == [(1, 1), (1, 2), (2, 1)]
    assert [a["threads_seen"] for a in arms] == [[1], [2], [1, 1]]
    for a in arms:
        assert a["median_step_s"] > 0 and all(m > 0 for m in a["peak_rss_mib"])
    single, _, double = arms
    assert single["comm_per_rank"]["total"]["tensor_bytes"] == 0
    comm = double["comm_per_rank"]
    assert double["comm_same_on_every_rank"] and double["comm_same_every_step"]
    # One all-gather and one reduce-scatter per tower, and DDP reduces at least every parameter.
    assert comm["reps_all_gather"]["calls"] == 2 and comm["grads_reduce_scatter"]["calls"] == 2
    assert comm["ddp_all_reduce"]["tensor_bytes"] >= double["parameter_bytes"] > 0


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_late_interaction_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "late.json"
    args = ["--quick", "--pylate-python", "none", "--threads", "1", "--output", str(out)]
    run_bench("late_interaction.py", args, tmp_path, shared_data)
    arms = read_finite(out)["batch 8"]["arms"]
    cached, plain = arms["dualforge/cached"], arms["dualforge/plain"]
    assert cached["step_s"] > 0 and cached["peak_mib"] > cached["after_load_mib"] * 0.5
    # same model and batch, dropout off: the cached step computes the plain step's loss
    assert abs(cached["first_loss"] - plain["first_loss"]) < 1e-4 * plain["first_loss"]


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_big_model_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "big.json"
    args = ["--quick", "--threads", "1", "--output", str(out)]
    run_bench("big_model.py", args, tmp_path, shared_data)
    report = read_finite(out)
    points = report["points"]
    assert [(p["method"], p["batch"]) for p in points] == [
        (m, b) for b in (4, 8) for m in ("plain", "gradcache", "gradcache+ckpt")
    ]
    for p in points:
        assert p["steps"] == 2 and p["step_s"] > 0 and p["torch"]["torch_threads"] == 1
        assert p["peak_mib"] >= p["vm_hwm_after_load_mib"] > 0
        assert p["checkpointing"] == (p["method"] == "gradcache+ckpt")
    # LoRA dropout off: the cached steps compute the plain step's loss and gradient, and after
    # one AdamW step on those gradients, the same second loss.
    agreement = report["agreement_vs_plain"]
    assert len(agreement) == 4 and all(v < 1e-4 for a in agreement.values() for v in a.values())
    assert report["memory_goal"]["ratio"] > 0 and len(report["table"]) == 3
    assert all(f["extrapolated"] for f in report["fits_16gib"].values())


@pytest.mark.slow  # 30-80 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_loss_scale_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "loss_scale.json"
    run_bench("loss_scale.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    report = read_finite(out)
    assert all(m["same_mask"] for m in report["mask"])  # codes == the old double loop
    rows = {(r["arm"], r["batch"], len(r["dims"])): r for r in report["loss"]}
    for dims in (5, 1):  # tiled == dense where both ran: the same loss and gradient
        tiled, dense = rows[("tiled", 256, dims)], rows[("dense", 256, dims)]
        assert abs(tiled["loss"] - dense["loss"]) <= 1e-4 * abs(dense["loss"])
        assert abs(tiled["grad_norm_q"] - dense["grad_norm_q"]) <= 1e-3 * dense["grad_norm_q"]
    assert [r["arm"] for r in report["e2e"]] == ["dualforge", "st-cached-mnrl"]
    assert all(r["step_s"] > 0 and r["peak_rss_mib"] > 0 for r in report["e2e"])


@pytest.mark.slow  # 50-100 s; `pytest -m slow` runs it (the default run stays under 12 min)
def test_distill_quick(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "distill.json"
    run_bench("distill.py", ["--quick", "--output", str(out)], tmp_path, shared_data)
    report = read_finite(out)
    arms = report["step"]["arms"]
    assert list(arms) == ["info_nce", "kl", "margin_mse", "kl+nce"]
    assert all(a["median_step_s"] > 0 and min(a["peak_rss_mib"]) > 0 for a in arms.values())
    assert arms["info_nce"]["ratio_vs_info_nce"] == 1.0
    assert (
        set(report["loss_phase"]["arms"])
        == set(report["loss_phase_step_shape"]["arms"])
        == set(arms)
    )
    (run,) = report["teach"]["runs"]
    assert run["loss"] == "kl" and run["steps"] == 4
    for side in (run["before"], run["after"]):
        assert len(side["spearman"]) == 10 and -1 <= side["spearman_mean"] <= 1
    # 4 KL steps already move the student's order toward the teacher's (0.26 -> 0.42).
    assert run["after"]["spearman_mean"] > run["before"]["spearman_mean"] + 0.05
