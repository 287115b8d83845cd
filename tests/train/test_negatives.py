"""Negative-mining strategies in the training loop, on the tiny random BERT and tiny BEIR data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dualforge.train.loop as loop
from dualforge.config import ConfigError, MiningConfig, load_config
from dualforge.data import EpochBatchSampler
from dualforge.modeling import load_model
from dualforge.train.checkpoint import component_files, latest_checkpoint, read_component
from dualforge.train.faults import InterruptedRunError
from dualforge.train.metrics_log import read_metrics_log
from dualforge.train.negatives import Encode, NegativeMiner, build_miner
from dualforge.train.run_data import load_run_data
from tests.train.helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY = {
    "mining_seconds", "training_seconds", "staleness_mean", "staleness_max",
    "steps_since_refresh", "mined_positive_fraction", "index_bytes",
}  # fmt: skip
SMALL_TREE = ["mining.branching=4", "mining.leaf_size=4"]


def _overrides(model: Path, data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        *tiny_overrides(model, data, out, name),
        "eval.before=false",
        "optim.max_steps=5",
        *SMALL_TREE,
        *extra,
    ]


def _records(run_dir: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in read_metrics_log(run_dir / "metrics.jsonl") if r["event"] == event]


# ---- config -----------------------------------------------------------------------------------


def test_config_defaults_validation_and_yaml() -> None:
    assert load_config(None).mining == MiningConfig() and not MiningConfig().active
    cfg = load_config(ROOT / "configs" / "scifact-minilm-dynamic.yaml", ["mining.landmarks=40"])
    assert cfg.mining.strategy == "dynamic" and cfg.mining.landmarks == 40.0
    bad = {
        "mining.strategy=ance": "mining.strategy='ance': must be one of",
        "mining.mode=greedy": "mining.mode='greedy'",
        "mining.num_negatives=0": "mining.num_negatives=0: must be >= 1",
        "mining.temperature=0": "mining.temperature=0.0: must be > 0",
        "mining.eta=1.5": "mining.eta=1.5: must be in",
        "mining.correction=none": "mining.correction='none'",
        "mining.looseness=1": "mining.looseness=1.0",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ConfigError, match=r"set data\.num_negatives=0"):
        load_config(None, ["mining.strategy=static", "data.num_negatives=2"])
    with pytest.raises(
        ConfigError, match=r"needs a corpus to mine from: data\.format='beir', or data\.corpus"
    ):
        load_config(None, ["mining.strategy=dynamic", "data.format=jsonl"])


# ---- the miner on its own --------------------------------------------------------------------


def _miner(
    model_dir: Path, data_dir: Path, encode: Encode | None = None, **cfg: Any
) -> tuple[NegativeMiner, Any]:
    """A miner over the tiny corpus; ``encode`` wraps the model's encoder when given."""
    config = load_config(None, [f"data.path={data_dir}", "data.dev_fraction=0", "model.query_max_length=16", "mining.doc_max_length=32"])  # fmt: skip
    data = load_run_data(config.data, 0)
    model = load_model(str(model_dir))
    mining = MiningConfig(branching=4, leaf_size=4, doc_max_length=32, **cfg)
    plain = loop.mining_encoder(model, replace(config, mining=mining))
    assert data.corpus is not None
    miner = build_miner(mining, encode or plain, data.corpus, data.known_positives, 0, True)
    assert miner is not None
    return miner, data


def test_known_positives_are_never_mined(tiny_model_dir: Path, tiny_beir: Path) -> None:
    miner, data = _miner(tiny_model_dir, tiny_beir, strategy="static", mode="topk")
    sampler = EpochBatchSampler(data.examples, 8, seed=0)
    # make each query's 6 best targets under the current model "known positives": top-k
    # mining would return them if exclusion did not work
    vectors = miner.encode(miner.corpus.texts, "document").numpy()
    for batch in sampler:
        q = miner.encode(list(batch.queries), "query").numpy()
        best = np.argsort(-(q @ vectors.T), axis=1)[:, :6]
        for qid, rows in zip(batch.query_ids, best):
            assert qid is not None
            miner.known[qid] = set(rows.tolist()) | miner.known.get(qid, set())
        mined, _ = miner.prepare(batch, 1)
        for qid, ids in zip(mined.query_ids, mined.negative_ids):
            assert qid is not None and len(ids) == 4
            assert not {miner.corpus.row[i] for i in ids if i is not None} & miner.known[qid]
        assert miner.telemetry(1)["mined_positive_fraction"] == 0.0
    assert miner.counts["mined"] == 24 * 4 and miner.counts["positive_hits"] == 0


def test_refresh_schedules(tiny_model_dir: Path, tiny_beir: Path) -> None:
    """Which targets each policy re-encodes at which step, seen through the injected encoder."""
    calls: list[tuple[str, str, int, int]] = []
    reports: dict[str, list[Any]] = {}
    plain = loop.mining_encoder(
        load_model(str(tiny_model_dir)),
        load_config(None, ["mining.doc_max_length=32", "model.query_max_length=16"]),
    )
    for strategy in ("static", "refresh", "oracle", "dynamic"):
        now = {"step": 0}

        def encode(texts: list[str], side: Any, strategy: str = strategy, now: dict[str, int] = now) -> torch.Tensor:  # fmt: skip
            calls.append((strategy, side, len(texts), now["step"]))
            return plain(texts, side)

        miner, data = _miner(
            tiny_model_dir, tiny_beir, encode, strategy=strategy, refresh_every=2, landmarks=0.25,
            holdout=5, recent=3,
        )  # fmt: skip
        batches = iter(EpochBatchSampler(data.examples, 8, seed=0))
        for step in range(1, 4):
            now["step"] = step
            _, report = miner.prepare(next(batches), step)
            reports.setdefault(strategy, []).append(report)
    docs = [(name, n, st) for name, side, n, st in calls if side == "document"]
    full = {s: [st for name, n, st in docs if name == s and n == 40] for s in ("static", "refresh", "oracle", "dynamic")}  # fmt: skip
    assert full == {"static": [1], "refresh": [1, 3], "oracle": [1, 2, 3], "dynamic": [1]}
    partial = [(n, st) for name, n, st in docs if name == "dynamic" and n != 40]
    assert partial == [(10 + 5 + 3, 3)]  # 25% landmarks + held-out + recent, at step 3
    assert [r and r.kind for r in reports["dynamic"]] == ["build", None, "nystrom"]
    assert reports["dynamic"][2].fields["landmarks"] == 10
    assert reports["oracle"] == [None, None, None]  # refreshed every step, not reported
    assert [r and r.kind for r in reports["refresh"]] == ["build", None, "rebuild"]
    queries = [st for name, side, _, st in calls if name == "static" and side == "query"]
    assert queries == [1, 2, 3]


def test_oracle_refuses_a_large_corpus(tiny_model_dir: Path, tiny_beir: Path) -> None:
    with pytest.raises(ValueError, match=r"all 40 targets every step.*oracle_max_targets=39"):
        _miner(tiny_model_dir, tiny_beir, strategy="oracle", oracle_max_targets=39)


def test_in_batch_builds_no_miner() -> None:
    def never(texts: list[str], side: Any) -> torch.Tensor:
        raise AssertionError("in_batch must not encode")

    assert build_miner(MiningConfig(), never, None, {}, 0, True) is None


# ---- the training loop -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "extra", "events"),
    [
        ("static", ["mining.mode=topk", "mining.skip_first=1"], ["build"]),
        ("refresh", ["mining.refresh_every=2"], ["build", "rebuild", "rebuild"]),
        ("oracle", [], []),
        ("dynamic", ["mining.refresh_every=2", "mining.landmarks=8", "mining.kernel=rbf"], ["build", "nystrom", "nystrom"]),
    ],
)  # fmt: skip
def test_strategies_train_and_log_telemetry(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path, strategy: str, extra: list[str],
    events: list[str],
) -> None:  # fmt: skip
    overrides = _overrides(tiny_model_dir, tiny_beir, tmp_path, strategy, f"mining.strategy={strategy}", "mining.holdout=6", *extra)  # fmt: skip
    result = loop.train(load_config(None, overrides))
    assert result.steps == 5 and "ndcg@10" in result.after["metrics"]
    train = _records(result.run_dir, "train")
    assert len(train) == 5 and all(set(r) >= TELEMETRY for r in train)
    assert all(r["mined_positive_fraction"] == 0 and r["index_bytes"] > 0 for r in train)
    assert train[-1]["mining_seconds"] > train[0]["mining_seconds"] > 0
    mining = _records(result.run_dir, "mining")
    assert [r["kind"] for r in mining] == events
    if strategy == "dynamic":
        assert [r["landmarks"] for r in mining[1:]] == [8, 8]
        assert all(
            r["drift_error_corrected"] >= 0 and r["drift_error_stale"] > 0 for r in mining[1:]
        )
        assert [r["steps_since_refresh"] for r in train] == [0, 1, 0, 1, 0]
    if strategy == "static":
        assert [r["staleness_max"] for r in train] == [0, 1, 2, 3, 4]


def test_resume_with_dynamic_mining_is_exact(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    mining = ["mining.strategy=dynamic", "mining.refresh_every=2", "mining.landmarks=8", "run.save_every=1"]  # fmt: skip
    straight = loop.train(load_config(None, _overrides(tiny_model_dir, tiny_beir, tmp_path, "straight", *mining)))  # fmt: skip
    args = _overrides(tiny_model_dir, tiny_beir, tmp_path, "killed", *mining)

    def crash_after_3(p: loop.Parts, state: Any, info: loop.StepInfo) -> None:
        if state.step == 3:  # after step 3's checkpoint, before step 4
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError, match="at step 3; checkpoint step-0000003 kept"):
        loop.train(load_config(None, args), hooks=[crash_after_3])
    saved = latest_checkpoint(tmp_path / "killed" / "checkpoints")
    assert saved is not None and saved.name == "step-0000003"
    files = component_files(saved)
    assert set(files) == {"model", "optimizer", "scheduler", "sampler", "miner", "clock", "rng"}
    miner_state = read_component(saved / files["miner"])
    assert (
        miner_state["targets"]["last_refresh"] == 3
        and miner_state["targets"]["store"]["name"] == "tree"
    )
    resumed = loop.train(load_config(None, [*args, "run.resume=true"]))
    a = load_file(str(straight.run_dir / "final" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    mined = [r for r in _records(resumed.run_dir, "mining") if r["step"] == 5]
    assert len(mined) == 1  # the first attempt stopped after step 3
    assert mined[0]["drift_error_corrected"] == pytest.approx(
        _records(straight.run_dir, "mining")[-1]["drift_error_corrected"]
    )
    straight_losses = [r["loss"] for r in _records(straight.run_dir, "train")]
    resumed_losses = [r["loss"] for r in _records(resumed.run_dir, "train")]
    assert resumed_losses[-2:] == straight_losses[-2:]


def test_in_batch_run_is_unchanged_by_mining_settings(
    tiny_model_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    base = _overrides(tiny_model_dir, tiny_beir, tmp_path, "a", "run.save_every=5")
    a = loop.train(load_config(None, base))
    b = loop.train(load_config(None, [*base, "run.name=b", "mining.mode=topk", "mining.num_negatives=7"]))  # fmt: skip
    for run in (a, b):
        assert not _records(run.run_dir, "mining")
        assert not TELEMETRY & set(_records(run.run_dir, "train")[0])
        files = component_files(run.run_dir / "checkpoints" / "step-0000005")
        assert "miner" not in files and "clock" not in files
    wa = load_file(str(a.run_dir / "final" / "model.safetensors"))
    wb = load_file(str(b.run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
