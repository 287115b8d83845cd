"""Helpers for training tests."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(model_dir: Path, data_dir: Path, out: Path, name: str = "run") -> list[str]:
    """Overrides that make a full run take seconds."""
    return [
        f"model.name={model_dir}",
        "model.query_max_length=16",
        "model.doc_max_length=32",
        f"data.path={data_dir}",
        "data.dev_fraction=0.0",
        "optim.batch_size=8",
        "optim.lr=1e-3",
        "optim.epochs=4",
        "gradcache.chunk_size=3",
        "eval.batch_size=16",
        f"run.output_dir={out}",
        f"run.name={name}",
        "run.progress=false",
        "run.threads=1",
    ]
