"""A tiny decoder trained with LoRA through ``train()``: it learns, checkpoints hold the adapters
alone, it resumes, and its exported folder loads in sentence-transformers with the stored
instruction prompt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dualforge.config import ConfigError, load_config
from dualforge.modeling import load_model
from dualforge.train.checkpoint import WEIGHTS, latest_checkpoint
from dualforge.train.loop import resume_or_start, train, train_steps
from dualforge.train.metrics_log import read_metrics_log
from dualforge.train.parts import build_parts
from tests.train.helpers import tiny_overrides

TASK = "search"  # a short instruction: a long one swamps a tiny random model's last token
LORA = [
    "model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16", "model.lora.dropout=0.1",
    "model.normalize=true", 'model.query_prefix="{task}: "',
    f"model.task={TASK}", "model.padding_side=left", "gradcache.checkpointing=true",
    "gradcache.precision=fp32", "optim.lr=5e-3", "loss.temperature=0.1", "optim.epochs=8",
]  # fmt: skip
PROMPT = f"{TASK}: "


def test_a_lora_decoder_run_exports_what_sentence_transformers_reads(
    tiny_decoder_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    overrides = [*tiny_overrides(tiny_decoder_dir, tiny_beir, tmp_path), *LORA, "run.save_every=6"]
    result = train(load_config(None, overrides))
    losses = [
        r["loss"]
        for r in read_metrics_log(result.run_dir / "metrics.jsonl")
        if r["event"] == "train"
    ]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])  # it learned (24 training queries:
    # the test split is too small to show it)
    ckpt = latest_checkpoint(result.run_dir / "checkpoints")
    assert ckpt is not None
    saved = torch.load(ckpt / WEIGHTS, weights_only=True)
    assert saved and all("lora_" in name for name in saved)
    final = result.run_dir / "final"
    card = (final / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "LoRA" in card
    assert "nDCG@10" in card  # the before/after table
    assert json.loads((final / "config_sentence_transformers.json").read_text())["prompts"][
        "query"
    ] == (PROMPT)
    queries = ["alpha beta gamma", "protein cell"]
    ours = load_model(str(final)).encode(queries, "query")
    st = SentenceTransformer(str(final), device="cpu")
    theirs = st.encode(queries, prompt_name="query", convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    without_prompt = st.encode(queries, convert_to_numpy=True)
    assert np.abs(without_prompt - ours).max() > 1e-4  # the prompt matters


def test_a_lora_run_resumes_exactly(
    tiny_decoder_dir: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    base = [
        *tiny_overrides(tiny_decoder_dir, tiny_beir, tmp_path), *LORA, "optim.epochs=1",
        "eval.before=false", "run.save_every=100",
    ]  # fmt: skip
    straight = train(load_config(None, [*base, "run.name=straight"]))
    split = [*base, "run.name=split"]
    p = build_parts(load_config(None, split))
    train_steps(p, resume_or_start(p), stop=lambda s: s.step >= 1)  # checkpoints step 1, stops
    p.log.close()
    resumed = train(load_config(None, [*split, "run.resume=true"]))
    records = read_metrics_log(resumed.run_dir / "metrics.jsonl")
    assert "resume" in [r["event"] for r in records]
    steps = [r["step"] for r in records if r["event"] == "train"]
    assert steps.count(1) == 1 and steps[-1] == p.steps  # step 1 was not trained twice
    a = load_file(str(straight.run_dir / "final" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_adapter_export(tiny_decoder_dir: Path, tiny_beir: Path, tmp_path: Path) -> None:
    overrides = [
        *tiny_overrides(tiny_decoder_dir, tiny_beir, tmp_path), *LORA,
        "model.lora.export=adapter", "optim.max_steps=2", "eval.before=false",
    ]  # fmt: skip
    result = train(load_config(None, overrides))
    final = result.run_dir / "final"
    assert (final / "adapter_config.json").is_file()
    assert not (final / "model.safetensors").is_file()
    assert load_model(str(final)).query_prefix == PROMPT


def test_lora_and_prompt_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"model\.lora\.r"):
        load_config(None, ["model.lora.enabled=true", "model.lora.r=0"])
    with pytest.raises(ConfigError, match=r"set model\.task"):
        load_config(None, ['model.query_prefix="Instruct: {task}\\nQuery: "'])
    with pytest.raises(ConfigError, match=r"model\.task"):
        load_config(None, ["model.task=x"])
    with pytest.raises(ConfigError, match="merged"):
        load_config(
            None,
            ["model.kind=late_interaction", "model.lora.enabled=true", "model.lora.export=adapter"],
        )
