"""Shared builders for Gradient Cache tests: tiny encoders and variable-length text batches."""

from __future__ import annotations

import random

import torch

from dualforge.modeling import Encoder

WORDS = [
    "protein",
    "cell",
    "gene",
    "cancer",
    "therapy",
    "brain",
    "immune",
    "risk",
    "patients",
    "virus",
    "dose",
    "trial",
    "mouse",
    "signal",
    "growth",
    "tumour",
    "blood",
    "heart",
    "receptor",
    "memory",
    "sleep",
    "diet",
    "vitamin",
    "drug",
    "infection",
]


def texts(n: int, seed: int, min_words: int = 2, max_words: int = 30) -> list[str]:
    """``n`` pseudo sentences with lengths spread between min_words and max_words."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(n)]


def tokenize(tokenizer, items: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Right-padded tokenizer batch."""
    return dict(tokenizer(items, padding=True, truncation=True, max_length=64, return_tensors="pt"))


def encoder(model, normalize: bool = True) -> Encoder:  # type: ignore[no-untyped-def]
    """Mean-pooling encoder over a tiny BERT."""
    return Encoder(model, pooling="mean", normalize=normalize)
